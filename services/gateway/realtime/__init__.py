"""`WebSocket /v1/realtime`: the OpenAI Realtime protocol (GA; beta names for beta clients) over VoiceChat.

Modules: `server_events` (server event names, ids, errors), `session_config` (session.update and the session
object), `responses` (one response's lifecycle events), `conversation` (client events and items),
`upstream_stream` (the Converse stream), `connection` (the socket loop and authentication).
"""

from services.gateway.realtime.connection import realtime_session

__all__ = ["realtime_session"]
