"""HTTP/1.1 for one shard: one connection protocol, several request-parser back-ends."""
