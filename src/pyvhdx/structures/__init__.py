"""Construct declarations of the on-disk structures (one module per format)."""
