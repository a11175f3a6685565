"""Construct declarations of the on-disk structures (parse and build are symmetric)."""
