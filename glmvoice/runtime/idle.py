"""Stream expiry shared by the serving services: a stream unused for `timeout_s` is closed.

Triton's sequence batcher forgets an idle sequence (max_sequence_idle_microseconds) without telling the
model, so the model must free that stream's state on its own clock.
"""

from __future__ import annotations

import time


class UnknownStreamError(ValueError):
    """A request for a stream that was never started, or was closed (ended, or idle too long)."""


class IdleClock:
    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.last_used: dict[str, float] = {}

    def touch(self, stream_id: str) -> None:
        self.last_used[stream_id] = time.monotonic()

    def forget(self, stream_id: str) -> None:
        self.last_used.pop(stream_id, None)

    def expired(self) -> list[str]:
        now = time.monotonic()
        return [s for s, t in self.last_used.items() if now - t > self.timeout_s]


class ExpiringStreams:
    """Base of the serving services: a stream is freed when it ends, on request, or once idle too long."""

    def __init__(self, idle_timeout_s: float):
        self.clock = IdleClock(idle_timeout_s)

    def _free(self, stream_id: str) -> None:
        raise NotImplementedError

    def close(self, stream_id: str) -> None:
        """Frees a stream now (e.g. a reply cut off by barge-in) instead of at its idle timeout."""
        self._free(stream_id)
        self.clock.forget(stream_id)

    def _drop_idle(self) -> None:
        for stream_id in self.clock.expired():
            self.close(stream_id)
