"""Benchmarks: speed measured as ratios against a peer run in the same session."""
