"""The runner process: one model, served on loopback HTTP (DESIGN.md, "The runner protocol").

Only this package imports llama.cpp (``engine``, ``model``, ``slots``, ``step``,
``sampling``, ``embedding``, ``llama``, ``probe``, ``engine_info``, ``quantize``; ``state``,
``thinking`` and ``text`` are plain Python); the wire types it shares with the server
are ``pollama.protocol``.
"""
