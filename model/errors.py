"""Errors raised while loading a checkpoint; each names the file or tensor that was wrong."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded: missing, corrupt, unsupported, or of the wrong shape."""
