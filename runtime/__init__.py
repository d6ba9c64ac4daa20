"""Runs a built package: sessions, generation and metrics (no build code needed)."""
