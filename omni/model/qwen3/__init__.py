"""Qwen3-Omni (MoE): config, chat prompt and special ids; the parts it shares with Qwen2.5-Omni live in omni/model/."""
