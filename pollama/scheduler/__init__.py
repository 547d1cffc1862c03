"""Which runner serves a request: loads, keep-alive, eviction, the bounded queue."""
