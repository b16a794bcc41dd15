"""Engines behind the runtime's engine interface (`omni.streaming.engine`)."""
