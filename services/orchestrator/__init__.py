"""The orchestrator: the `glmvoice.v1.VoiceChat` gRPC server that chains tokenizer, LM and decoder per turn."""
