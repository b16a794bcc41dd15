"""The embedded default's packaged parts: where the packaged LM lives, speech recognition (Whisper; the old
pocketsphinx recogniser and its conversation LM for comparison), speech synthesis (Piper, espeak-ng) and the
fixed voice list, phrase splitting, and word-error scoring."""
