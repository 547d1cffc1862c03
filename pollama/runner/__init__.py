"""The runner process: one model, served on loopback HTTP (DESIGN.md, "The runner protocol").

Only this package imports llama.cpp (``engine``, ``llama``, ``probe``, ``engine_info``);
the wire types it shares with the server are ``pollama.protocol``.
"""
