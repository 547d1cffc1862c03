"""Ollama's native API (``/``, ``/api/*``): its wire types and routes."""
