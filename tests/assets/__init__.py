"""Test assets built from the demo model at test time (no downloads), one module each."""
