"""One Converse stream: user audio in, turns detected, replies streamed out, history kept in Redis.

Input side (`on_audio`): decode the client's codec, resample to the tokenizer's 16 kHz with a streaming
resampler (equal to resampling the whole call), run server VAD, and feed the open user turn. A turn
tokenizes its audio block by block while the user speaks and prefills the LM with what it has so far
(prefill-only requests under the session id), so at end of speech only the last block is tokenized and
only the last few ids are prefilled.

Output side (`Reply`): LM ids are routed by id (glmvoice.chat_template.OutputRouter): text deltas to the client,
speech codes to a decoder stream whose audio leaves, encoded as the client asked, as each block decodes.
Barge-in (speech, a new turn, or Cancel while a reply runs) cancels the LM and decoder streams and keeps
in the history only what the client was sent.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

import numpy as np

from glmvoice import audio as codecs
from glmvoice.audio import StreamResampler
from glmvoice.chat_template import Conversation, OutputRouter
from glmvoice.models.text_tokenizer import AUDIO_END
from glmvoice.telemetry import record_spans, trace_headers
from services.orchestrator import events as ev
from services.orchestrator.backends import Backend, DecoderSession, LMRequest
from services.orchestrator.errors import BackendUnavailable, InvalidInput, OrchestratorError
from services.orchestrator.session_store import SessionRecord, SessionStore, TurnRecord
from services.orchestrator.settings import Settings
from services.orchestrator.turns import LastReply, Reply, UserTurn, ms
from services.orchestrator.vad import VadModel, VadStream

log = logging.getLogger("glmvoice.orchestrator")


class SpeechOut:
    """The reply's speech: a decoder stream opened at the first speech code, and a pump that sends its audio
    to the client (encoded as asked) as each block decodes, recording what was sent in `state`."""

    def __init__(self, backend: Backend, seed: int, spec: ev.AudioSpec, headers: dict[str, str], state: Reply,
                 out: asyncio.Queue):
        self.backend, self.seed, self.spec, self.headers, self.state, self.out = backend, seed, spec, headers, state, out
        self.decoder: DecoderSession | None = None
        self.pump: asyncio.Task | None = None

    async def send(self, code: int, now: float) -> None:
        if self.decoder is None:
            self.decoder = self.backend.open_decoder(self.seed, self.spec.sample_rate, self.headers)
            self.pump = asyncio.create_task(self._pump(self.decoder))
        self.state.codes_sent += 1
        self.state.code_times.append(now)
        await self.decoder.send([code])

    async def finish(self) -> None:
        if self.decoder is not None:
            await self.decoder.send([], end=True)
            await self.pump

    async def cancel(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
        if self.decoder is not None:
            await self.decoder.cancel()

    async def _pump(self, decoder: DecoderSession) -> None:
        state = self.state
        async for chunk in decoder:
            now = time.perf_counter()
            if state.first_audio is None:
                since = state.code_times[min(self.backend.decoder_block, len(state.code_times)) - 1]
                state.speech_decode_ms = ms(now - since)
                state.first_audio = now
            self.out.put_nowait(ev.AudioOut(codecs.encode(chunk, self.spec.encoding)))
            state.chunks_sent += 1
            state.samples_sent += len(chunk)


class ConverseSession:
    def __init__(
        self, backend: Backend, store: SessionStore, vad_model: VadModel | None, settings: Settings,
        config: ev.StreamConfig, record: SessionRecord, metrics=None, tracer=None, trace_context=None,
        meter: Callable[[float], Awaitable[None]] | None = None,
    ):
        # meter(seconds) counts user audio against the caller's quota (raises Exhausted past it).
        self.backend, self.store, self.settings, self.config = backend, store, settings, config
        self.record = record
        self.metrics, self.tracer, self.trace_context = metrics, tracer, trace_context
        self.trace_headers = trace_headers(trace_context)
        self.tokenizer = backend.text_tokenizer
        self.conversation = Conversation(self.tokenizer, ids=list(record.ids))
        self.out: asyncio.Queue = asyncio.Queue()
        self.resampler = StreamResampler(config.input_audio.sample_rate, backend.input_rate)
        self.vad = None
        if config.server_vad:
            self.vad = VadStream(
                vad_model, config.vad_threshold or settings.vad_threshold, settings.vad_min_speech_ms, config.vad_silence_ms,
            )
        self.pre_roll = np.zeros(0, np.float32)
        self.received = 0  # 16 kHz samples received in this stream
        self.turn: UserTurn | None = None
        self.meter, self.unmetered = meter, 0  # 16 kHz samples received and not yet counted
        self.max_turn_samples = int(settings.max_turn_s * backend.input_rate)
        self.reply: asyncio.Task | None = None
        self.last_reply: LastReply | None = None  # what Truncate cuts
        self.max_chunk_bytes = (
            config.input_audio.sample_rate * settings.max_chunk_ms // 1000 * config.input_audio.bytes_per_sample
        )

    @property
    def replying(self) -> bool:
        return self.reply is not None and not self.reply.done()

    # ---- input ------------------------------------------------------------------------------
    async def on_audio(self, data: bytes) -> None:
        spec = self.config.input_audio
        if len(data) > self.max_chunk_bytes:
            raise InvalidInput(
                f"audio chunk of {len(data)} bytes exceeds {self.settings.max_chunk_ms} ms "
                f"({self.max_chunk_bytes} bytes of {spec.encoding} at {spec.sample_rate} Hz)"
            )
        if data[:4] == b"RIFF":
            raise InvalidInput("audio chunks carry raw samples in the configured encoding, not a WAV file")
        samples = codecs.decode(data, spec.encoding)
        audio = self.resampler.push(samples)
        start = self.received
        self.received += len(audio)
        await self._count(len(audio))
        if self.vad is None:
            await self._user_audio(audio)
            return
        # Split the chunk where VAD decided something, so each part goes where it belongs.
        cut = 0
        for event in self.vad.push(audio):
            at = min(max(event.sample - start, cut), len(audio))
            await self._user_audio(audio[cut:at])
            cut = at
            if event.kind == "start":
                await self._speech_started(event.sample)
            else:
                await self._speech_stopped(event.sample)
        await self._user_audio(audio[cut:])

    async def _count(self, samples: int) -> None:
        """Counts audio against the quota about once a second (one Redis call, not one per 20 ms frame)."""
        self.unmetered += samples
        if self.meter is not None and self.unmetered >= self.backend.input_rate:
            seconds, self.unmetered = self.unmetered / self.backend.input_rate, 0
            await self.meter(seconds)

    async def _user_audio(self, audio: np.ndarray) -> None:
        if not len(audio):
            return
        if self.turn is not None and self.turn.samples + len(audio) > self.max_turn_samples:
            raise InvalidInput(f"a turn may hold at most {self.settings.max_turn_s:g} s of audio (MAX_TURN_S): "
                               "end the turn sooner (EndOfTurn, or silence with server VAD)")
        if self.turn is not None:
            self.turn.feed(audio)
        elif self.vad is None:
            await self._open_turn()
            self.turn.feed(audio)
        else:
            keep = self.backend.input_rate * self.settings.pre_roll_ms // 1000
            self.pre_roll = np.concatenate([self.pre_roll, audio])[-keep:]

    async def _speech_started(self, sample: int) -> None:
        self.out.put_nowait(ev.SpeechStarted(audio_ms=sample * 1000 // self.backend.input_rate))
        await self._open_turn()
        self.turn.feed(self.pre_roll)
        self.pre_roll = np.zeros(0, np.float32)

    async def _speech_stopped(self, sample: int) -> None:
        self.out.put_nowait(ev.SpeechStopped(audio_ms=sample * 1000 // self.backend.input_rate))
        await self.end_turn()

    async def _open_turn(self) -> None:
        await self.cancel_reply()  # barge-in: the user speaks over the reply
        block = self.backend.input_rate * self.settings.tokenize_block_ms // 1000
        # While a reply runs, the LM's KV under this session id belongs to it: prefill after it ends.
        self.turn = UserTurn(self.backend.open_tokenizer(self.trace_headers), block, self.prefill,
                             lambda: not self.replying)

    async def end_turn(self, instruction: str = "") -> None:
        """End of the user's speech (VAD stop, EndOfTurn, or the client half-closing): answer it.
        `instruction`: this reply's style instruction, in place of the session's."""
        turn, self.turn = self.turn, None
        if turn is None:
            return
        speech_end = time.perf_counter()
        try:
            codes, tokenize_ms = await turn.finish()
        except asyncio.CancelledError:  # the stream is going away mid-turn: free the tokenizer stream now
            await turn.abort()
            raise
        if not codes:
            log.info("turn with no speech tokens ignored", extra={"session_id": self.record.session_id})
            return
        # A spoken turn's readable text is the style instruction it carries (the first turn's), if any.
        instruction = instruction.strip() or self._instruction()
        user = TurnRecord(role="user", text=instruction, speech_tokens=len(codes))
        prompt = self.conversation.add_speech(codes, instruction)
        self._start_reply(prompt, user, speech_end, tokenize_ms)

    async def on_text(self, text: str, instruction: str = "") -> None:
        if not text.strip():
            raise InvalidInput("text turn is empty")
        if len(text) > self.settings.max_text_chars:
            raise InvalidInput(f"text turn of {len(text)} characters exceeds {self.settings.max_text_chars}")
        await self.cancel_reply()
        if self.turn is not None:
            await self.turn.abort()
            self.turn = None
        instruction = instruction.strip() or self._instruction()
        prompt = self.conversation.add_text(f"{instruction}\n{text}" if instruction else text)
        self._start_reply(prompt, TurnRecord(role="user", text=text), time.perf_counter(), 0.0)

    async def on_cancel(self) -> None:
        await self.cancel_reply()

    async def on_truncate(self, audio_end_ms: int) -> None:
        """Barge-in as the client heard it: the last reply keeps the speech tokens of `audio_end_ms`."""
        await self.cancel_reply()
        last = self.last_reply
        if last is None:
            raise InvalidInput("truncate: this stream has no reply to truncate")
        if audio_end_ms < 0 or audio_end_ms > round(last.audio_seconds * 1000):
            raise InvalidInput(f"truncate: audio_end_ms {audio_end_ms} is outside the reply's {last.audio_seconds * 1000:.0f} ms of audio")
        # Audio per speech token is measured on this reply (the decoder's output length is proportional to tokens).
        heard = int(audio_end_ms / 1000 / last.audio_seconds * last.speech_tokens) if last.audio_seconds else 0
        kept = last.ids[: self._cut(last.ids, heard)]
        self.conversation.ids = self.conversation.ids[: last.start] + kept
        text = self.tokenizer.decode([t for t in kept if self.tokenizer.is_text(t)])
        speech = sum(1 for t in kept if self.tokenizer.is_audio(t))
        self.record.ids = list(self.conversation.ids)
        self.record.turns[-1] = TurnRecord(role="assistant", text=text, speech_tokens=speech)
        await self.store.save(self.record)
        seconds = last.audio_seconds * speech / last.speech_tokens if last.speech_tokens else 0.0
        self.last_reply = LastReply(last.start, kept, speech, seconds)
        self.out.put_nowait(ev.ReplyTruncated(text, speech, seconds))

    async def close(self) -> None:
        """The client half-closed: answer an open turn, let the reply finish, then end the stream."""
        if self.turn is not None and (self.vad is None or self.turn.samples):
            await self.end_turn()
        if self.reply is not None:
            await asyncio.gather(self.reply, return_exceptions=True)

    async def abort(self) -> None:
        """The stream failed or the client went away: stop everything without touching the history."""
        if self.reply is not None:
            self.reply.cancel()
            await asyncio.gather(self.reply, return_exceptions=True)
        if self.turn is not None:
            await self.turn.abort()

    # ---- prompts ----------------------------------------------------------------------------
    def _instruction(self) -> str:
        # The style instruction is said once, with the first user turn, in the user's words.
        return self.config.style_instruction.strip() if not self.conversation.ids else ""

    async def prefill(self, codes: list[int]) -> None:
        """Prefills history + the user's speech so far (up to, not including, `<|end_of_audio|>`)."""
        probe = Conversation(self.tokenizer, ids=list(self.conversation.ids))
        prompt = probe.add_speech(codes, self._instruction())
        end = len(prompt) - 1 - prompt[::-1].index(self.tokenizer.token_id(AUDIO_END))
        if end >= self.backend.max_seq_len - 1:
            return
        request = LMRequest(prompt[:end], self.config.sampling, 0, self.record.session_id)
        try:
            async for _ in self.backend.generate(request, self.trace_headers):
                pass
        except OrchestratorError as exc:  # prefill is an optimisation; the turn's own request reports errors
            log.warning("prefill failed: %s", exc, extra={"session_id": self.record.session_id})

    # ---- replies ----------------------------------------------------------------------------
    def _start_reply(self, prompt: list[int], user: TurnRecord, speech_end: float, tokenize_ms: float) -> None:
        if len(prompt) >= self.backend.max_seq_len:
            raise InvalidInput(
                f"the session's history is {len(prompt)} ids, the LM holds {self.backend.max_seq_len}: start a new session"
            )
        self.reply = asyncio.create_task(self._reply(prompt, user, speech_end, tokenize_ms))
        self.reply.add_done_callback(self._reply_done)

    def _reply_done(self, task: asyncio.Task) -> None:
        # A failed reply fails the stream: the response loop raises what it finds on the queue.
        if not task.cancelled() and task.exception() is not None:
            self.out.put_nowait(task.exception())

    async def cancel_reply(self) -> None:
        reply, self.reply = self.reply, None
        if reply is not None and not reply.done():
            reply.cancel()
        if reply is not None:
            await asyncio.gather(reply, return_exceptions=True)

    async def _reply(self, prompt: list[int], user: TurnRecord, speech_end: float, tokenize_ms: float) -> None:
        budget = min(self.config.max_new_tokens, self.backend.max_seq_len - len(prompt))
        sampling = self.config.sampling
        seed = sampling.seed if sampling.seed is not None else random.getrandbits(32)
        state = Reply()
        speech = SpeechOut(self.backend, seed, self.config.output_audio, self.trace_headers, state, self.out)
        started = time.perf_counter()
        lm = self.backend.generate(LMRequest(prompt, sampling, budget, self.record.session_id), self.trace_headers)
        try:
            stopped = await self._route(lm, state, speech)
            # The stop id itself says the model ended the reply: the stream's finish_reason arrives on its final
            # response, after the id, and the router stops reading at the id (Triton's stream is then unread).
            reason = "completed" if stopped or lm.finish_reason == "stop" else "length"
        except asyncio.CancelledError:  # barge-in or Cancel: keep what the client was sent
            await lm.cancel()
            await speech.cancel()
            reason = "cancelled"
        except BaseException:
            await lm.cancel()
            await speech.cancel()
            raise
        await self._commit(prompt, user, state, reason, speech_end, tokenize_ms, started)

    async def _route(self, lm, state: Reply, speech: SpeechOut) -> bool:
        """LM ids -> text deltas to the client, speech codes to the decoder, until the stop id (-> True) or the
        budget (-> False)."""
        router = OutputRouter(self.tokenizer)
        async for token in lm:
            now = time.perf_counter()
            state.first_token = state.first_token or now
            routed = router.push(token)
            if routed.text:
                self.out.put_nowait(ev.TextDelta(routed.text))
            if routed.stop:
                break
            state.ids.append(token)
            if routed.speech_code is not None:
                state.first_speech = state.first_speech or now
                await speech.send(routed.speech_code, now)
        tail = router.finish() if not router.stopped else ""
        if tail:
            self.out.put_nowait(ev.TextDelta(tail))
        await speech.finish()
        state.final_chunk_sent = True
        return router.stopped

    def _kept_ids(self, state: Reply) -> list[int]:
        """Generated ids up to the first speech code whose audio the client was not sent."""
        if state.final_chunk_sent:
            return state.ids
        heard = min(state.codes_sent, state.chunks_sent * self.backend.decoder_block)
        return state.ids[: self._cut(state.ids, heard)]

    def _cut(self, ids: list[int], speech_tokens: int) -> int:
        """The length of `ids` up to (not including) the speech token after the first `speech_tokens`."""
        codes = 0
        for index, token in enumerate(ids):
            if self.tokenizer.is_audio(token):
                if codes == speech_tokens:
                    return index
                codes += 1
        return len(ids)

    async def _commit(self, prompt, user: TurnRecord, state: Reply, reason: str, speech_end, tokenize_ms, started) -> None:
        kept = self._kept_ids(state)
        self.conversation.ids = list(prompt)
        self.conversation.add_completion(kept)
        text = self.tokenizer.decode([t for t in kept if self.tokenizer.is_text(t)])
        speech = sum(1 for t in kept if self.tokenizer.is_audio(t))
        self.record.ids = list(self.conversation.ids)
        self.record.turns += [user, TurnRecord(role="assistant", text=text, speech_tokens=speech)]
        try:
            await self.store.save(self.record)
        except BackendUnavailable as exc:  # the caller heard a reply the history does not hold: say so
            raise BackendUnavailable(f"this turn was not saved to session {self.record.session_id}: {exc}") from exc
        ended = time.perf_counter()
        seconds = state.samples_sent / self.config.output_audio.sample_rate
        self.last_reply = LastReply(len(prompt), self.conversation.ids[len(prompt):], speech, seconds)
        prompt_audio = sum(1 for t in prompt if self.tokenizer.is_audio(t))
        generated_audio = sum(1 for t in state.ids if self.tokenizer.is_audio(t))
        usage = ev.Usage(len(prompt) - prompt_audio, prompt_audio, len(state.ids) - generated_audio, generated_audio)
        latency = ev.Latency(
            tokenize_ms=tokenize_ms,
            prefill_ms=ms(state.first_token - started) if state.first_token else 0.0,
            decode_to_first_speech_ms=ms(state.first_speech - state.first_token) if state.first_speech else 0.0,
            speech_decode_ms=state.speech_decode_ms,
            first_audio_ms=ms(state.first_audio - speech_end) if state.first_audio else 0.0,
            real_time_factor=seconds / max(ended - started, 1e-9),
        )
        if self.metrics is not None:
            self.metrics.observe_turn(latency, reason)
        stages = {
            "tokenize": (speech_end, speech_end + tokenize_ms / 1000),
            "prefill": (started, state.first_token),
            "decode_to_first_speech": (state.first_token, state.first_speech),
            "speech_decode": (state.first_audio and state.first_audio - state.speech_decode_ms / 1000, state.first_audio),
        }
        record_spans(
            self.tracer, "glmvoice.turn", {k: v for k, v in stages.items() if None not in v} | {"reply": (started, ended)},
            {"session_id": self.record.session_id, "reason": reason, **{f"latency.{k}": v for k, v in latency.__dict__.items()}},
            self.trace_context,
        )
        self.out.put_nowait(ev.TurnEnded(reason, text, seconds, latency, usage))
