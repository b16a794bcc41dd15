"""Packaged speech parts of the embedded default: recognition, synthesis, scoring."""
