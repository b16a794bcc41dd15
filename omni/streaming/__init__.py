"""The per-session asyncio runtime: frames, queues, turn-taking, engines, the device worker."""
