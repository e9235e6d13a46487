"""The three networks (speech tokenizer, LM, speech decoder), their presets and checkpoint loaders."""
