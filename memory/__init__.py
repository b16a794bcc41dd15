"""Hierarchical memory of the live streams."""
