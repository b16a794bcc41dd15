"""The Thinker's encoders and their inputs: the audio front end (PCM -> log-mel), the block-wise audio encoder,
vision preprocessing (frames -> patches) and the vision encoder, their configs and weight loading."""
