"""The HTTP edge: Ollama's native API (/api/*) and the OpenAI-compatible one (/v1/*)."""
