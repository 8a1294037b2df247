"""The worker: an agent owning the socket and heartbeats, children running shards."""
