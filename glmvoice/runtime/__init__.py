"""Streaming inference over the networks: LM engine, decoder streams, tokenizer streams."""
