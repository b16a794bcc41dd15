"""Errors raised while reading a config or loading a checkpoint; each names what was wrong."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded: missing, corrupt, unsupported, or of the wrong shape."""


class ConfigError(ValueError):
    """A config.json (or GGUF metadata) that this runtime cannot serve, with the reason."""
