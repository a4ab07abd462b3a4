"""Everything that runs inside one shard: its event loop, listeners and ASGI pipeline."""
