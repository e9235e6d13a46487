"""The HTTP/WebSocket gateway: a FastAPI front door that speaks gRPC VoiceChat to the orchestrator."""
