"""The Thinker-Talker model: decoder LM, encoders, Talker, token2wav, checkpoint loaders."""
