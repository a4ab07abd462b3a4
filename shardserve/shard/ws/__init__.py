"""WebSockets in a shard: the ASGI websocket protocol over websockets' sans-I/O core."""
