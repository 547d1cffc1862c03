"""Test assets built from nothing but the gguf writer (and the demo model): no downloads."""
