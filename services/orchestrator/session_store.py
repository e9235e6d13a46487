"""Sessions in Redis: a conversation's history as LM ids, its readable turns, and its owner.

One JSON value per session under `glmvoice:session:<id>`, with a TTL refreshed on every write and read.
Any orchestrator replica can load a session and serve its next turn.

Every Redis operation is bounded by one timeout and never retried by the client: a frozen Redis costs a
caller `timeout_s`, not a multiple of it, and the caller hears UNAVAILABLE.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.orchestrator.errors import BackendUnavailable, InvalidInput, NotFound
from services.tls import redis_options

KEY_PREFIX = "glmvoice:session:"


@dataclass
class TurnRecord:
    role: str  # "user" or "assistant"
    text: str = ""
    speech_tokens: int = 0


@dataclass
class SessionRecord:
    session_id: str
    owner: str
    ids: list[int] = field(default_factory=list)
    turns: list[TurnRecord] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> SessionRecord:
        data = json.loads(raw)
        return cls(data["session_id"], data["owner"], data["ids"], [TurnRecord(**t) for t in data["turns"]])


def new_session_id() -> str:
    return uuid.uuid4().hex


def _check_id(session_id: str) -> None:
    if not session_id or len(session_id) > 128 or not all(c.isalnum() or c in "-_" for c in session_id):
        raise InvalidInput("session_id must be 1-128 characters of letters, digits, '-' or '_'")


def connect(addr: str, timeout_s: float, password: str = "", tls: bool = False, ca_file: Path | str | None = None,
            cert_file: Path | str | None = None, key_file: Path | str | None = None) -> aioredis.Redis:
    """An asyncio Redis client whose every call fails within `timeout_s` (connect and each reply, no retries);
    AUTH and TLS as every Redis client here connects (services.tls.redis_options)."""
    host, _, port = addr.rpartition(":")
    return aioredis.Redis(
        host=host or "127.0.0.1", port=int(port), socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0), **redis_options(password, tls, ca_file, cert_file, key_file),
    )


class SessionStore:
    def __init__(self, redis: aioredis.Redis, addr: str, ttl_s: int):
        self.redis, self.addr, self.ttl_s = redis, addr, ttl_s

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis at {self.addr} is not reachable: {exc}") from exc

    async def load(self, session_id: str, owner: str) -> SessionRecord:
        """The caller's session; NotFound when absent or owned by someone else (indistinguishable on purpose)."""
        _check_id(session_id)
        try:
            raw = await self.redis.getex(KEY_PREFIX + session_id, ex=self.ttl_s)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis: {exc}") from exc
        if raw is None:
            raise NotFound(f"no session {session_id!r}")
        record = SessionRecord.from_json(raw)
        if record.owner != owner:
            raise NotFound(f"no session {session_id!r}")
        return record

    async def save(self, record: SessionRecord) -> None:
        try:
            await self.redis.set(KEY_PREFIX + record.session_id, record.to_json(), ex=self.ttl_s)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis: {exc}") from exc

    async def ttl(self, session_id: str) -> int:
        try:
            return max(int(await self.redis.ttl(KEY_PREFIX + session_id)), 0)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis: {exc}") from exc

    async def delete(self, session_id: str, owner: str) -> bool:
        try:
            await self.load(session_id, owner)
        except NotFound:
            return False
        try:
            return bool(await self.redis.delete(KEY_PREFIX + session_id))
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis: {exc}") from exc

    async def close(self) -> None:
        await self.redis.aclose()
