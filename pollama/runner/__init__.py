"""The runner process: one model, served on loopback HTTP (DESIGN.md, "The runner protocol").

Only ``pollama.runner.engine`` imports llama.cpp; ``protocol`` is shared with the server.
"""
