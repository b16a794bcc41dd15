"""Processes and transports: the `omni` command and its subcommands."""
