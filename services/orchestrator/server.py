"""The gRPC server: `glmvoice.v1.VoiceChat` (thin handlers over converse.ConverseSession), health, reflection.

Handlers only authenticate, convert protobuf to the dataclasses of `events`, and delegate; every error
leaves through errors.ErrorInterceptor. Converse requests arrive as raw bytes and are parsed here, so a
malformed message is INVALID_ARGUMENT (gRPC's own deserializer would report INTERNAL).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from glmvoice import audio as codecs
from glmvoice.audio import OUTPUT_RATES
from glmvoice.models.text_tokenizer import TextTokenizer
from glmvoice.sampling import OFFICIAL_SAMPLING, SamplingParams
from glmvoice.telemetry import Metrics, extract_trace
from glmvoice.v1 import common_pb2
from glmvoice.v1 import voice_chat_pb2 as pb
from services.orchestrator import events as ev
from services.orchestrator.auth import ANONYMOUS, ApiKeys
from services.orchestrator.backends import CALLER_DEADLINE
from services.orchestrator.converse import ConverseSession
from services.orchestrator.discovery import HEALTH, enable_health_list, enable_reflection
from services.orchestrator.errors import BackendUnavailable, DeadlineExceeded, ErrorInterceptor, Exhausted, InvalidInput
from services.orchestrator.quotas import QuotaLimits, Quotas
from services.orchestrator.session_store import SessionRecord, SessionStore, connect, new_session_id
from services.orchestrator.settings import Settings
from services.orchestrator.vad import VadModel

log = logging.getLogger("glmvoice.orchestrator")
SERVICE = "glmvoice.v1.VoiceChat"
_DONE = object()
_RELEASES: set[asyncio.Task] = set()  # quota releases in flight (a task needs a reference until it ends)
TURN_END_REASONS = {
    "completed": pb.TURN_END_REASON_COMPLETED,
    "length": pb.TURN_END_REASON_LENGTH,
    "cancelled": pb.TURN_END_REASON_CANCELLED,
}


# ---- protobuf -> dataclasses ----------------------------------------------------------------------
def audio_spec(fmt: common_pb2.AudioFormat, direction: str, rates) -> ev.AudioSpec:
    try:
        name = common_pb2.AudioEncoding.Name(fmt.encoding).removeprefix("AUDIO_ENCODING_")
    except ValueError:
        name = str(fmt.encoding)
    if name not in codecs.ENCODERS:
        raise InvalidInput(f"{direction}.encoding {name!r} is not supported; use one of {sorted(codecs.ENCODERS)}")
    if fmt.sample_rate_hz not in rates:
        raise InvalidInput(f"{direction}.sample_rate_hz {fmt.sample_rate_hz} is not supported; use one of {sorted(rates)}")
    return ev.AudioSpec(name, fmt.sample_rate_hz)


def stream_config(request: pb.ConverseRequest, settings: Settings) -> ev.StreamConfig:
    if request.WhichOneof("event") != "config":
        raise InvalidInput("the first message of a Converse stream must be `config`")
    config = request.config
    s = config.sampling
    values = {**OFFICIAL_SAMPLING}
    for name in ("temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty", "seed"):
        if s.HasField(name):
            values[name] = getattr(s, name)
    try:
        sampling = SamplingParams(**values)
    except ValueError as exc:
        raise InvalidInput(f"sampling: {exc}") from exc
    max_new = s.max_new_tokens if s.HasField("max_new_tokens") else settings.max_new_tokens
    if max_new < 1:
        raise InvalidInput(f"sampling.max_new_tokens must be >= 1, got {max_new}")
    if len(config.style_instruction) > settings.max_text_chars:
        raise InvalidInput(f"style_instruction exceeds {settings.max_text_chars} characters")
    if config.vad_silence_ms < 0 or config.vad_silence_ms > 10_000:
        raise InvalidInput("vad_silence_ms must be within 0..10000 (0: default 500)")
    if not 0.0 <= config.vad_threshold < 1.0:
        raise InvalidInput(f"vad_threshold must be within (0, 1) (0: the server's setting), got {config.vad_threshold}")
    return ev.StreamConfig(
        input_audio=audio_spec(config.input_audio, "input_audio", codecs.SUPPORTED_RATES),
        output_audio=audio_spec(config.output_audio, "output_audio", OUTPUT_RATES),
        sampling=sampling,
        max_new_tokens=max_new,
        server_vad=config.turn_detection != pb.TURN_DETECTION_CLIENT,
        vad_silence_ms=config.vad_silence_ms or 500,
        style_instruction=config.style_instruction,
        session_id=config.session_id,
        vad_threshold=config.vad_threshold,
    )


def parse_request(raw: bytes) -> pb.ConverseRequest:
    try:
        return pb.ConverseRequest.FromString(raw)
    except DecodeError as exc:
        raise InvalidInput(f"malformed ConverseRequest: {exc}") from exc


# ---- dataclasses -> protobuf ----------------------------------------------------------------------
def _latency(latency: ev.Latency) -> pb.TurnLatency:
    return pb.TurnLatency(**latency.__dict__)


RESPONSES = {
    ev.SessionStarted: lambda e: pb.ConverseResponse(session_started=pb.SessionStarted(session_id=e.session_id, turns=e.turns)),
    ev.SpeechStarted: lambda e: pb.ConverseResponse(speech_started=pb.SpeechStarted(audio_ms=e.audio_ms)),
    ev.SpeechStopped: lambda e: pb.ConverseResponse(speech_stopped=pb.SpeechStopped(audio_ms=e.audio_ms)),
    ev.TextDelta: lambda e: pb.ConverseResponse(text_delta=pb.TextDelta(text=e.text)),
    ev.AudioOut: lambda e: pb.ConverseResponse(audio=pb.AudioOut(data=e.data)),
    ev.TurnEnded: lambda e: pb.ConverseResponse(
        turn_ended=pb.TurnEnded(
            reason=TURN_END_REASONS[e.reason], text=e.text, audio_seconds=e.audio_seconds, latency=_latency(e.latency),
            usage=pb.TurnUsage(**e.usage.__dict__),
        )
    ),
    ev.ReplyTruncated: lambda e: pb.ConverseResponse(
        truncated=pb.ReplyTruncated(text=e.text, speech_tokens=e.speech_tokens, audio_seconds=e.audio_seconds)
    ),
}


def _metadata(context) -> dict[str, str]:
    return {key.lower(): value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}


class VoiceChat:
    def __init__(self, settings: Settings, backend, store: SessionStore, keys: ApiKeys, metrics: Metrics,
                 quotas: Quotas, tracer=None):
        self.settings, self.backend, self.store, self.keys, self.metrics = settings, backend, store, keys, metrics
        self.quotas, self.tracer = quotas, tracer
        self.vad_model: VadModel | None = None
        self.ready = False
        self.active = 0

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            # No request deserializer: Converse parses its own messages (see parse_request).
            "Converse": grpc.stream_stream_rpc_method_handler(
                self.Converse, response_serializer=pb.ConverseResponse.SerializeToString
            ),
            "GetSession": grpc.unary_unary_rpc_method_handler(
                self.GetSession, pb.GetSessionRequest.FromString, pb.Session.SerializeToString
            ),
            "DeleteSession": grpc.unary_unary_rpc_method_handler(
                self.DeleteSession, pb.DeleteSessionRequest.FromString, pb.DeleteSessionResponse.SerializeToString
            ),
        })

    async def Converse(self, request_iterator, context):
        # The first message is read before any refusal, so a client that writes its config and then
        # reads gets the refusal's status rather than racing it with its own write.
        requests = request_iterator.__aiter__()
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            return
        identity = self.keys.identity(_metadata(context))
        if not self.ready:
            raise BackendUnavailable("not serving: warming up, or a dependency (Redis, the models) is not answering")
        if self.active >= self.settings.max_streams:
            self.metrics.rejected_streams.inc()
            raise Exhausted(f"this replica serves {self.settings.max_streams} live streams; retry later or elsewhere")
        stream_id = new_session_id()
        remaining = context.time_remaining()
        if remaining is not None:  # tasks this stream starts copy the context, so they see it too
            CALLER_DEADLINE.set(asyncio.get_running_loop().time() + remaining)
        # Quotas are per API key: without keys every caller is the same anonymous tenant.
        quotas = self.quotas if identity != ANONYMOUS else None
        if quotas is not None:
            await quotas.acquire_stream(identity, stream_id)
        self.active += 1
        self.metrics.active_streams.inc()
        lease = asyncio.create_task(self._renew(quotas, identity, stream_id)) if quotas is not None else None
        try:
            trace_context = extract_trace(_metadata(context)) if self.tracer is not None else None
            async for response in self._converse(parse_request(first), requests, identity, quotas, trace_context):
                yield response
        finally:
            self.active -= 1
            self.metrics.active_streams.dec()
            if lease is not None:
                # No await here: a stream the client cancelled may be cancelled again while it cleans up, and
                # the lease must go all the same (else the key's slot stays taken until the lease expires).
                lease.cancel()
                release = asyncio.get_running_loop().create_task(self._release(quotas, identity, stream_id))
                _RELEASES.add(release)
                release.add_done_callback(_RELEASES.discard)

    @staticmethod
    async def _release(quotas: Quotas, identity: str, stream_id: str) -> None:
        try:
            await quotas.release_stream(identity, stream_id)
        except BackendUnavailable as exc:  # Redis is down: the lease lapses by itself
            log.warning("stream lease not released: %s", exc)

    async def _renew(self, quotas: Quotas, identity: str, stream_id: str) -> None:
        while True:
            await asyncio.sleep(quotas.limits.lease_s / 3)
            await asyncio.gather(quotas.acquire_stream(identity, stream_id), return_exceptions=True)

    async def _converse(self, first: pb.ConverseRequest, requests, identity: str, quotas: Quotas | None, trace_context):
        config = stream_config(first, self.settings)
        record = await self._open_record(config.session_id, identity, quotas)
        meter = (lambda seconds: quotas.count_audio(identity, seconds)) if quotas is not None else None
        session = ConverseSession(
            self.backend, self.store, self.vad_model, self.settings, config, record, self.metrics, self.tracer,
            trace_context, meter,
        )
        yield RESPONSES[ev.SessionStarted](ev.SessionStarted(record.session_id, len(record.turns) // 2))
        reader = asyncio.create_task(self._read(session, requests))
        try:
            while True:
                item = await session.out.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield RESPONSES[type(item)](item)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await session.abort()

    async def _read(self, session: ConverseSession, requests) -> None:
        dispatch = {
            "audio": lambda m: session.on_audio(m.audio.data),
            "text": lambda m: session.on_text(m.text.text, m.text.instruction),
            "end_of_turn": lambda m: session.end_turn(m.end_of_turn.instruction),
            "cancel": lambda m: session.on_cancel(),
            "truncate": lambda m: session.on_truncate(m.truncate.audio_end_ms),
        }
        idle_s = self.settings.stream_idle_s
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(requests.__anext__(), idle_s)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if session.replying:  # a listening client sends nothing while the reply plays
                        continue
                    raise DeadlineExceeded(f"no message from the client for {idle_s:g} s (STREAM_IDLE_S)") from None
                message = parse_request(raw)
                kind = message.WhichOneof("event")
                if kind not in dispatch:
                    raise InvalidInput("`config` may only come first" if kind == "config" else "empty ConverseRequest")
                await dispatch[kind](message)
            await session.close()
            session.out.put_nowait(_DONE)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the response loop, which raises it as a status
            session.out.put_nowait(exc)

    async def _open_record(self, session_id: str, identity: str, quotas: Quotas | None) -> SessionRecord:
        if session_id:
            return await self.store.load(session_id, identity)
        if quotas is not None:
            await quotas.count_session(identity)
        record = SessionRecord(new_session_id(), identity)
        await self.store.save(record)
        return record

    async def GetSession(self, request: pb.GetSessionRequest, context) -> pb.Session:
        identity = self.keys.identity(_metadata(context))
        record = await self.store.load(request.session_id, identity)
        turns = [pb.SessionTurn(role=t.role, text=t.text, speech_tokens=t.speech_tokens) for t in record.turns]
        return pb.Session(session_id=record.session_id, turns=turns, ttl_seconds=await self.store.ttl(record.session_id))

    async def DeleteSession(self, request: pb.DeleteSessionRequest, context) -> pb.DeleteSessionResponse:
        identity = self.keys.identity(_metadata(context))
        return pb.DeleteSessionResponse(deleted=await self.store.delete(request.session_id, identity))


def build_backend(settings: Settings, metrics: Metrics | None = None):
    if settings.backend == "baseline":
        from services.orchestrator.backends.baseline import BaselineBackend

        return BaselineBackend(settings.checkpoint("tokenizer"), settings.checkpoint("llm"), settings.checkpoint("decoder"))
    if settings.backend == "inprocess":
        from services.orchestrator.backends.inprocess import InProcessBackend

        return InProcessBackend(settings.checkpoint("tokenizer"), settings.checkpoint("llm"), settings.checkpoint("decoder"))
    from services.orchestrator.backends.triton import TritonBackend

    addrs = {
        "speech_tokenizer": settings.triton_speech_tokenizer_addr,
        "llm": settings.triton_llm_addr,
        "speech_decoder": settings.triton_speech_decoder_addr,
    }
    registry = metrics.registry if metrics is not None else None
    return TritonBackend(addrs, TextTokenizer.from_directory(settings.llm_dir), settings.decoder_block_codes, registry,
                         tls=settings.tls if settings.triton_tls else None,
                         tls_server_name=settings.triton_tls_server_name)


class Orchestrator:
    """The server and its dependencies; `start()` listens at once (health NOT_SERVING), then warms up."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None, tracer=None):
        self.settings = settings.check()
        self.metrics = metrics or Metrics()
        self.backend = build_backend(settings, self.metrics)
        # With REDIS_TLS the pod's certificate (TLS_CERT_FILE/TLS_KEY_FILE), if any, is its Redis client identity too.
        self.redis = connect(settings.redis_addr, settings.redis_timeout_s, settings.redis_password, settings.redis_tls,
                             settings.redis_ca_file, settings.tls_cert_file, settings.tls_key_file)
        self.store = SessionStore(self.redis, settings.redis_addr, settings.session_ttl_s)
        self.keys = ApiKeys.from_file(settings.api_keys_file)
        limits = QuotaLimits(settings.quota_streams, settings.quota_sessions_per_minute, settings.quota_audio_s_per_minute)
        self.service = VoiceChat(settings, self.backend, self.store, self.keys, self.metrics, Quotas(self.redis, limits),
                                 tracer)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.watcher: asyncio.Task | None = None
        self.port = 0

    async def start(self) -> int:
        idle_ms = int(self.settings.connection_idle_s * 1000)
        self.server = grpc.aio.server(interceptors=[ErrorInterceptor()], options=[
            # Connections without streams are closed; silent peers are found by keepalive pings.
            ("grpc.max_connection_idle_ms", idle_ms),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            # One message is one audio chunk (<= max_chunk_ms): 1 MiB bounds what one read can buffer.
            ("grpc.max_receive_message_length", 1 << 20),
        ])
        self.server.add_generic_rpc_handlers((self.service.handlers(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_health_list(self.server, self.health)
        enable_reflection(self.server, (SERVICE, HEALTH))
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{self.settings.bind_address}:{self.settings.grpc_port}"
        credentials = self.settings.tls.server_credentials(self.settings.tls_client_auth)
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        await self.server.start()
        await self.warm_up()
        return self.port

    async def warm_up(self) -> None:
        await self.store.ping()
        await self.backend.start()
        self.service.vad_model = await asyncio.get_running_loop().run_in_executor(None, VadModel)
        await self._set_serving(True)
        self.watcher = asyncio.create_task(self._watch_dependencies())
        log.info("serving on port %d with the %s backend", self.port, self.settings.backend)

    async def _set_serving(self, serving: bool) -> None:
        self.service.ready = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def _watch_dependencies(self) -> None:
        """Health follows Redis and the models: NOT_SERVING (and new streams UNAVAILABLE) while one is down or
        does not answer within redis_timeout_s (so within interval + timeout of a freeze)."""
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            try:
                await self.store.ping()
                serving = await asyncio.wait_for(self.backend.ready(), self.settings.redis_timeout_s)
            except (BackendUnavailable, TimeoutError):
                serving = False
            if serving != self.service.ready:
                log.warning("dependencies %s", "back: serving" if serving else "down: not serving")
                await self._set_serving(serving)

    async def stop(self, grace_s: float = 2.0) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(grace_s)
        await self.backend.close()
        await self.store.close()


@dataclass
class OrchestratorThread:
    """An Orchestrator on its own event loop in a background thread (tests, the demo)."""

    orchestrator: Orchestrator
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @classmethod
    def start(cls, settings: Settings, timeout_s: float = 180.0, metrics: Metrics | None = None, tracer=None) -> OrchestratorThread:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="orchestrator", daemon=True)
        thread.start()

        async def create():
            orchestrator = Orchestrator(settings, metrics, tracer)
            await orchestrator.start()
            return orchestrator

        orchestrator = asyncio.run_coroutine_threadsafe(create(), loop).result(timeout_s)
        return cls(orchestrator, loop, thread)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.orchestrator.port}"

    def stop(self) -> None:
        async def shutdown():
            await self.orchestrator.stop()
            # Streams the server cancelled may leave tasks behind; end them before the loop goes.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
