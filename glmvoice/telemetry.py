"""Telemetry shared by the services: Prometheus metrics, JSON logs with the session id, and
OpenTelemetry tracing (off unless an OTLP endpoint is configured).

Each server builds its own `Metrics` on its own registry, so several servers in one process (tests)
do not collide; nothing here runs at import.
"""

from __future__ import annotations

import json
import logging
import re
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Milliseconds: first audio on a GPU is ~100s of ms; tiny CPU models and long prefills reach seconds.
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 200, 400, 800, 1600, 3200, 6400, 12800)
STAGES = ("tokenize", "prefill", "decode_to_first_speech", "speech_decode", "first_audio")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.active_streams = Gauge("glmvoice_active_streams", "Live Converse streams on this replica", registry=self.registry)
        self.rejected_streams = Counter(
            "glmvoice_rejected_streams", "Streams refused by admission control", registry=self.registry
        )
        self.stage_ms = Histogram(
            "glmvoice_stage_latency_ms", "Latency of each stage of a turn (ms)", ["stage"],
            buckets=LATENCY_BUCKETS_MS, registry=self.registry,
        )
        self.real_time_factor = Histogram(
            "glmvoice_real_time_factor", "Reply audio seconds per wall-clock second",
            buckets=(0.25, 0.5, 1, 2, 4, 8, 16, 32), registry=self.registry,
        )
        self.turns = Counter("glmvoice_turns", "Assistant turns by how they ended", ["reason"], registry=self.registry)

    def observe_turn(self, latency, reason: str) -> None:
        """latency: an object with `<stage>_ms` attributes and `real_time_factor`."""
        self.turns.labels(reason=reason).inc()
        for stage in STAGES:
            value = getattr(latency, f"{stage}_ms")
            if value > 0:
                self.stage_ms.labels(stage=stage).observe(value)
        if latency.real_time_factor > 0:
            self.real_time_factor.observe(latency.real_time_factor)

    def serve(self, port: int, addr: str):
        """Starts the /metrics HTTP endpoint on `addr` (the service's bind address); returns (server, thread)."""
        return start_http_server(port, addr=addr.strip("[]"), registry=self.registry)


def scrape(url: str, name: str, labels: dict[str, str] | None = None, timeout_s: float = 5.0) -> float | None:
    """Sum of the samples named `name` that carry `labels` at a Prometheus endpoint (prometheus_client's own
    text-format parser); None when there is no such sample."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    # The parser names a counter's samples `<family>_total` even where the server wrote the bare name
    # (Triton's nv_* counters), so a counter is found by either name.
    values = [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
              if (sample.name == name or (family.type == "counter" and sample.name == f"{name}_total"))
              and all(sample.labels.get(k) == v for k, v in (labels or {}).items())]
    return sum(values) if values else None


# Credentials as they appear in access logs and error messages: query parameters, bearer tokens, key headers.
_SECRETS = (
    re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access_token|password)=)[^&\s\"']+"),
    re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
    re.compile(r"(?i)((?:x-api-key|authorization|password)[\"']?\s*[:=]\s*[\"']?)(?!bearer\s)[^\s\"',}]+"),
)
REDACTED = "[REDACTED]"


def redact(text: str) -> str:
    for pattern in _SECRETS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites every record's message with credentials replaced, whichever library logged it (uvicorn's
    access log prints `?api_key=` query strings): keys never reach the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra={"session_id": ...}` lands as a field."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("session_id", "turn", "stage"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own log config (any uvicorn.run without log_config=None in the process) gives its loggers
    # handlers of their own that do not propagate: they would print access lines, keys in query strings
    # included, past the redacting handler. Every line goes through root's.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
        library.disabled = False


def configure_tracing(endpoint: str, service_name: str):
    """An OTLP/gRPC tracer when `endpoint` is set; otherwise None (and no OpenTelemetry import)."""
    if not endpoint:
        return None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    return trace.get_tracer("glmvoice")


def inject_trace(metadata: list[tuple[str, str]], span) -> list[tuple[str, str]]:
    """metadata + W3C `traceparent` of `span` (None: unchanged), for the next hop's spans to join the trace."""
    if span is None:
        return metadata
    from opentelemetry import propagate, trace

    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return metadata + list(carrier.items())


def trace_headers(context) -> dict[str, str]:
    """W3C trace headers of a context (None: none), for calls that take headers (tritonclient)."""
    if context is None:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def extract_trace(metadata: dict[str, str]):
    """The caller's trace context from its metadata (None when it sent none)."""
    if "traceparent" not in metadata:
        return None
    from opentelemetry import propagate

    return propagate.extract(metadata)


def record_spans(
    tracer, name: str, spans: dict[str, tuple[float, float]], attributes: dict, parent_context=None,
) -> None:
    """One parent span `name` with a child span per stage, from perf_counter() (start, end) pairs.

    Stages are timed where they happen (often on other tasks), so spans are recorded afterwards with
    explicit times rather than opened around the code."""
    if tracer is None or not spans:
        return
    from opentelemetry import trace

    offset_ns = time.time_ns() - time.perf_counter_ns()

    def ns(t: float) -> int:
        return offset_ns + int(t * 1e9)

    start = min(s for s, _ in spans.values())
    end = max(e for _, e in spans.values())
    parent = tracer.start_span(name, context=parent_context, start_time=ns(start), attributes=attributes)
    context = trace.set_span_in_context(parent)
    for stage, (s, e) in spans.items():
        tracer.start_span(stage, context=context, start_time=ns(s)).end(end_time=ns(e))
    parent.end(end_time=ns(end))
