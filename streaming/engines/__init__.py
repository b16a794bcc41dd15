"""Engines behind the runtime's engine interface (`streaming.engine`)."""
