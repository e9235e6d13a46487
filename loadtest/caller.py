"""A simulated caller: speaks each turn as 20 ms frames at the pace of speech, ends it (client turn
detection), and stamps every reply event as it arrives. The API it speaks is a `Transport` (grpc_driver:
VoiceChat.Converse; ws_driver: the gateway's WebSocket), so both doors are measured by the same code.

Replies come in the order the turns were ended, and a barged-in reply ends (TurnEnded, cancelled) before the
next reply begins, so the reader files each event under the oldest turn whose reply has not ended.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from glmvoice.audio import resample
from glmvoice.client import FRAME_MS, frames
from loadtest.metrics import playback
from loadtest.plan import SessionPlan
from loadtest.records import TurnRecord
from loadtest.speech import FORMATS, RATE

BYTES_PER_SAMPLE = {"LINEAR16": 2, "MULAW": 1, "ALAW": 1}


class CallFailed(Exception):
    """The server ended the call with a status (gRPC code name, or the WebSocket error's code)."""

    def __init__(self, status: str, message: str = ""):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class Transport(Protocol):
    """Events read: ("started", session_id), ("audio", bytes), ("text", str), ("ended", {reason, text,
    server}), or None at the end of the stream. Failures raise CallFailed."""

    async def open(self, encoding: str, rate: int, sampling: dict) -> None: ...

    async def audio(self, frame: bytes) -> None: ...

    async def end_of_turn(self) -> None: ...

    async def done_writing(self) -> None: ...

    async def read(self) -> tuple[str, object] | None: ...

    async def close(self) -> None: ...


@dataclass
class _Reply:
    record: TurnRecord
    end_of_speech: float = 0.0
    arrivals: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    barge_in_at: float | None = None
    first_audio: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Caller:
    def __init__(self, transport: Transport, plan: SessionPlan, t0: float):
        self.transport, self.plan, self.t0 = transport, plan, t0
        self.encoding, self.rate = FORMATS[plan.fmt]
        self.pending: deque[_Reply] = deque()  # turns ended whose replies have not, in order
        self.replies: list[_Reply] = []
        self.session_id = ""
        self.started = asyncio.Event()

    async def run(self) -> list[TurnRecord]:
        reader: asyncio.Task | None = None
        try:
            await self.transport.open(self.encoding, self.rate, self.plan.sampling)
            reader = asyncio.create_task(self._read())
            await self._wait((self.started,), reader, 60.0)
            for index, turn in enumerate(self.plan.turns):
                reply = await self._speak(index, turn.utterance)
                if turn.barge_in and index + 1 < len(self.plan.turns):
                    await self._wait((reply.done, reply.first_audio), reader, self.plan.turn_timeout_s)
                    await asyncio.sleep(self.plan.barge_in_after_s)
                    reply.barge_in_at = time.perf_counter()  # the next turn's first frame leaves now
                    reply.record.barge_in = not reply.done.is_set()
                    continue
                await self._wait((reply.done,), reader, self.plan.turn_timeout_s)
                if index + 1 < len(self.plan.turns):
                    await asyncio.sleep(self.plan.think_s)
            await self.transport.done_writing()
            await asyncio.wait_for(reader, self.plan.turn_timeout_s)
        except CallFailed as exc:
            self._fail(exc.status, exc.message)
        except TimeoutError:
            self._fail("DEADLINE_EXCEEDED", "no reply within the turn timeout (client side)")
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            await self.transport.close()
        return [self._finish(reply) for reply in self.replies]

    def _record(self, turn: int) -> TurnRecord:
        p = self.plan
        return TurnRecord(target=p.target, level=p.level, session=p.index, turn=turn, fmt=p.fmt)

    async def _wait(self, events, reader: asyncio.Task, timeout: float) -> None:
        """Waits for any of `events`; a stream that ended meanwhile (the reader returned) raises its failure."""
        waiters = [asyncio.create_task(e.wait()) for e in events]
        try:
            done, _ = await asyncio.wait([*waiters, reader], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if any(e.is_set() for e in events):
            return
        if not done:
            raise TimeoutError
        reader.result()  # raises CallFailed if the stream failed
        raise CallFailed("UNKNOWN", "the server ended the stream before replying")

    async def _speak(self, index: int, utterance) -> _Reply:
        reply = _Reply(self._record(index))
        reply.record.utterance, reply.record.speech_s = utterance.name, round(utterance.seconds, 3)
        self.replies.append(reply)
        wire = frames(resample(utterance.audio, RATE, self.rate), self.rate, self.encoding)
        start = time.perf_counter()
        reply.record.started_s = round(start - self.t0, 3)
        lag = 0.0
        for i, frame in enumerate(wire):
            due = start + (i + 1) * FRAME_MS / 1000  # a frame leaves once its 20 ms have been spoken
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            lag = max(lag, time.perf_counter() - due)
            await self.transport.audio(frame)
        reply.end_of_speech = time.perf_counter()
        reply.record.send_lag_ms = round(lag * 1000, 1)
        self.pending.append(reply)
        await self.transport.end_of_turn()
        return reply

    async def _read(self) -> None:
        while (event := await self.transport.read()) is not None:
            now = time.perf_counter()
            kind, value = event
            if kind == "started":
                self.session_id = str(value)
                self.started.set()
            elif not self.pending:
                continue  # nothing of ours is being answered
            elif kind == "audio":
                reply = self.pending[0]
                reply.arrivals.append(now)
                reply.durations.append(len(value) / BYTES_PER_SAMPLE[self.encoding] / self.rate)
                if self.plan.keep_audio:
                    reply.audio.append(value)
                reply.first_audio.set()
            elif kind == "text":
                self.pending[0].text.append(value)
            elif kind == "ended":
                self._ended(self.pending.popleft(), value, now)

    def _ended(self, reply: _Reply, ended: dict, now: float) -> None:
        record = reply.record
        record.reason, record.reply_text, record.server = ended["reason"], ended["text"], ended["server"]
        if reply.barge_in_at is not None and record.reason == "cancelled":
            record.barge_in_stop_ms = round((now - reply.barge_in_at) * 1000, 1)
        reply.done.set()

    def _fail(self, status: str, message: str) -> None:
        if not self.replies:  # the call failed before its first turn: refused unless the session had started
            self.replies.append(_Reply(self._record(0)))
            self.replies[0].record.admitted = self.started.is_set()
        for reply in self.replies:
            if not reply.done.is_set():
                reply.record.status, reply.record.error = status, message

    def _finish(self, reply: _Reply) -> TurnRecord:
        record = reply.record
        if record.status == "OK" and not reply.done.is_set():
            record.status, record.error = "DEADLINE_EXCEEDED", "the reply did not end"
        if reply.arrivals:
            record.ttfa_ms = round((reply.arrivals[0] - reply.end_of_speech) * 1000, 1)
            heard = playback(reply.arrivals, reply.durations)
            record.underrun_ms, record.max_stall_ms = round(heard.underrun_ms, 1), round(heard.max_stall_ms, 1)
            record.stalls, record.continuous = heard.stalls, heard.continuous
            record.reply_audio_s = round(sum(reply.durations), 3)
            record.chunks = len(reply.arrivals)
            span = reply.arrivals[-1] - reply.arrivals[0]
            record.client_rtf = round(record.reply_audio_s / span, 2) if span > 0 else None
        record.reply_text = record.reply_text or "".join(reply.text)
        record.audio = b"".join(reply.audio)
        return record
