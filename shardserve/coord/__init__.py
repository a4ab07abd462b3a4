"""The coordinator: owns listeners, starts and supervises shards."""
