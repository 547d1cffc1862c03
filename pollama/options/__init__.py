"""Ollama's options: their types and error messages (``parameters``), and the load-time
decisions the server settles before a model is placed (``load``)."""
