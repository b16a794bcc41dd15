"""The embedded default's packaged parts: where the packaged LM lives, speech recognition with its
conversation LM, speech synthesis, phrase splitting, and word-error scoring."""
