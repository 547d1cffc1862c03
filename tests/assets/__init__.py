"""Test models built from the demo model (no downloads): one module per asset."""
