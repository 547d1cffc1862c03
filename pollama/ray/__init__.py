"""pollama on Ray Serve: replicas of ``pollama serve`` behind Ray's HTTP proxy.

    ingress.py   every HTTP request: read once, a routing hint, streamed back unchanged
    replica.py   one replica: its own ``pollama serve`` (scheduler, runners) on loopback
    affinity.py  the routing decision (pure): prefix, then model, then least loaded
    router.py    Ray Serve's request router over ``affinity``
    app.py       the application: resources from the memory model, autoscaling

Nothing here imports Ray at module level except ``router``, ``replica``, ``ingress``
and ``app``; ``pip install 'pollama[ray]'`` brings it.
"""
