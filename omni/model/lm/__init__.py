"""The decoder LM and what runs it: config, decoder, bounded KV cache, sampling, tokenizer, incremental
detokenizer, and the text chat session (`ChatSession`) that the embedded engine and `omni chat` use."""
