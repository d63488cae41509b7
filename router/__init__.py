"""The routing core (hashing, placement, shard map) and, later, the router server."""
