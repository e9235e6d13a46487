"""Per-API-key quotas, counted in Redis so that every orchestrator replica enforces the same limits.

- Live streams: a sorted set per key whose members are stream ids scored by lease expiry (Redis's own clock).
  A Lua script drops expired leases, refuses beyond the limit and adds the stream in one atomic step; a live
  stream renews its lease, so a replica that dies leaks nothing for longer than one lease.
- New sessions and seconds of user audio: a counter per key and minute (a fixed window).
A refusal is RESOURCE_EXHAUSTED naming the quota; Redis being unreachable is UNAVAILABLE (fail closed, fast).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.orchestrator.errors import BackendUnavailable, Exhausted

PREFIX = "glmvoice:quota:"
# KEYS[1]: the key's stream set; ARGV: lease ms, limit, stream id. Returns 1 if the stream holds a lease.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local lease, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
redis.call('PEXPIRE', KEYS[1], lease)
return 1
"""


@dataclass(frozen=True)
class QuotaLimits:
    streams: int = 0  # live streams per key (0: unlimited)
    sessions_per_minute: int = 0
    audio_s_per_minute: float = 0.0
    lease_s: float = 30.0  # a stream renews its lease every lease_s / 3


class Quotas:
    def __init__(self, redis: aioredis.Redis, limits: QuotaLimits):
        self.redis, self.limits = redis, limits
        self._acquire = redis.register_script(_ACQUIRE)

    async def acquire_stream(self, key: str, stream_id: str) -> None:
        """Takes (or renews) the stream's lease; Exhausted when the key already holds `streams` live streams."""
        if not self.limits.streams:
            return
        held = await self._call(self._acquire(keys=[f"{PREFIX}streams:{key}"],
                                              args=[int(self.limits.lease_s * 1000), self.limits.streams, stream_id]))
        if not held:
            raise Exhausted(f"quota: this API key already holds {self.limits.streams} live streams "
                            "(QUOTA_STREAMS); end one or retry later")

    async def release_stream(self, key: str, stream_id: str) -> None:
        if self.limits.streams:
            await self._call(self.redis.zrem(f"{PREFIX}streams:{key}", stream_id))

    async def count_session(self, key: str) -> None:
        """Counts a new session; Exhausted past `sessions_per_minute` in this minute."""
        limit = self.limits.sessions_per_minute
        if limit and await self._window("sessions", key, 1) > limit:
            raise Exhausted(f"quota: {limit} new sessions per minute per API key (QUOTA_SESSIONS_PER_MINUTE)")

    async def count_audio(self, key: str, seconds: float) -> None:
        """Counts seconds of user audio; Exhausted past `audio_s_per_minute` in this minute."""
        limit = self.limits.audio_s_per_minute
        if limit and await self._window("audio", key, seconds) > limit:
            raise Exhausted(f"quota: {limit:g} s of audio per minute per API key (QUOTA_AUDIO_S_PER_MINUTE)")

    async def _window(self, name: str, key: str, amount: float) -> float:
        window = f"{PREFIX}{name}:{key}:{int(time.time() // 60)}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incrbyfloat(window, amount)
            pipe.expire(window, 120)
            total, _ = await self._call(pipe.execute())
        return float(total)

    async def _call(self, awaitable):
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis (quotas): {exc}") from exc
