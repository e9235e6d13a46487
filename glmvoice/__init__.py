"""glmvoice: the serving platform for GLM-4-Voice (speech tokenizer, LM, speech decoder)."""

__version__ = "0.1.0"
