"""The orchestrator's one settings object, built in main() from flags and the environment.

Nothing here runs at import: `Settings.from_args(argv, environ)` reads both explicitly, and
`Settings.check()` fails at start with a message that names the missing dependency.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from services.tls import CLIENT_AUTH_ENVIRONMENT, TLS_ENVIRONMENT, TRITON_ENVIRONMENT, TlsFiles, parse_bool

BACKENDS = ("triton", "inprocess", "baseline")  # baseline: the official-style runtime (backends/baseline.py)
CHECKPOINT_DIRS = {"tokenizer": "glm-4-voice-tokenizer", "llm": "glm-4-voice-9b", "decoder": "glm-4-voice-decoder"}


class SettingsError(ValueError):
    """A setting is missing or wrong; the message says which and how to set it."""


@dataclass(frozen=True)
class Settings:
    backend: str = "triton"
    # Dependencies (`*_ADDR`: host:port of each Triton deployment's gRPC endpoint). A TRITON_*_ADDR may list
    # replicas, `host:port,host:port`, or name a headless Service, `endpointslices://<namespace>/<service>[:<port
    # name>]`, whose ready endpoints are watched (services/orchestrator/routing.py).
    redis_addr: str = ""
    triton_speech_tokenizer_addr: str = ""
    triton_llm_addr: str = ""
    triton_speech_decoder_addr: str = ""
    # The LM's text tokenizer files (the glm-4-voice-9b directory); the in-process backend reads all three.
    checkpoints: Path | None = None
    tokenizer_dir: Path | None = None
    grpc_port: int = 50051
    metrics_port: int = 9464  # 0 disables the Prometheus endpoint
    max_streams: int = 32  # live Converse streams per replica; more get RESOURCE_EXHAUSTED
    api_keys_file: Path | None = None  # one key per line; unset disables authentication
    otel_endpoint: str = ""
    log_level: str = "INFO"
    session_ttl_s: int = 3600
    max_text_chars: int = 2000
    max_chunk_ms: int = 1000  # longest audio chunk a client may send at once
    tokenize_block_ms: int = 200  # user audio is sent to the tokenizer in blocks of this length
    pre_roll_ms: int = 300  # audio kept before VAD's speech start (the first syllable's onset)
    vad_threshold: float = 0.5
    vad_min_speech_ms: int = 96
    # Codes per speech decoder block (the Triton decoder's checkpoint: 10 = 0.8 s); the in-process backend
    # reads it from the checkpoint instead.
    decoder_block_codes: int = 10
    max_new_tokens: int = 2000  # default reply budget (LM ids) unless the client sets one
    health_interval_s: float = 1.0  # how often Redis and the models are checked for the health status
    bind_address: str = "[::]"
    # Redis: every operation is bounded by redis_timeout_s, once (no client retries multiplying it).
    redis_timeout_s: float = 1.0
    redis_password: str = ""  # Redis AUTH (the chart generates it into a Secret)
    redis_tls: bool = False
    redis_ca_file: Path | None = None  # CA bundle that signs Redis's certificate (with redis_tls)
    # With redis_tls, tls_cert_file / tls_key_file (below), when set, are presented to Redis (tls-auth-clients yes).
    # Bounds checked as input arrives, before the work they would cause.
    max_turn_s: float = 60.0  # seconds of audio in one user turn
    stream_idle_s: float = 60.0  # a Converse stream whose client sends nothing this long is ended
    connection_idle_s: float = 300.0  # an HTTP/2 connection with no stream this long is closed
    # Per API key, across all replicas (counted in Redis); 0 = unlimited. Without API keys there are no
    # tenants to tell apart, and only the per-replica max_streams applies.
    quota_streams: int = 8  # live Converse streams per key
    quota_sessions_per_minute: int = 60  # new sessions per key per minute
    quota_audio_s_per_minute: float = 600.0  # seconds of user audio per key per minute
    # TLS (services/tls.py): the gRPC port serves TLS when a certificate is set, and requires client certificates
    # signed by tls_ca_file with tls_client_auth (mTLS); triton_tls reaches Triton over TLS with the same files,
    # checking each replica's certificate for triton_tls_server_name when set (replicas found by pod IP).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_client_auth: bool = False
    triton_tls: bool = False
    triton_tls_server_name: str = ""

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file)

    @property
    def llm_dir(self) -> Path:
        return self.tokenizer_dir or self.checkpoint("llm")

    def checkpoint(self, network: str) -> Path:
        if self.checkpoints is None:
            raise SettingsError("CHECKPOINTS (--checkpoints) is not set")
        return self.checkpoints / CHECKPOINT_DIRS[network]

    def check(self) -> Settings:
        """Fails with a clear message when a dependency this backend needs is not configured."""
        if self.backend not in BACKENDS:
            raise SettingsError(f"BACKEND must be one of {BACKENDS}, got {self.backend!r}")
        if not self.redis_addr:
            raise SettingsError("REDIS_ADDR (--redis-addr host:port) is required: sessions live in Redis")
        if self.backend == "triton":
            for name in ("triton_speech_tokenizer_addr", "triton_llm_addr", "triton_speech_decoder_addr"):
                if not getattr(self, name):
                    raise SettingsError(f"{name.upper()} (--{name.replace('_', '-')}) is required with BACKEND=triton")
            if self.tokenizer_dir is None and self.checkpoints is None:
                raise SettingsError("BACKEND=triton needs TOKENIZER_DIR or CHECKPOINTS: the LM's text tokenizer files")
        else:
            for network in CHECKPOINT_DIRS:
                if not self.checkpoint(network).is_dir():
                    raise SettingsError(f"BACKEND=inprocess: {self.checkpoint(network)} does not exist")
        if not (self.llm_dir / "tokenizer.model").exists():
            raise SettingsError(f"no tokenizer.model in {self.llm_dir}")
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise SettingsError(f"GLMVOICE_API_KEYS_FILE {self.api_keys_file} does not exist")
        if self.max_streams < 1:
            raise SettingsError("MAX_STREAMS must be >= 1")
        if self.redis_ca_file is not None and not self.redis_ca_file.is_file():
            raise SettingsError(f"REDIS_CA_FILE {self.redis_ca_file} does not exist")
        if self.redis_ca_file is not None and not self.redis_tls:
            raise SettingsError("REDIS_CA_FILE is set but REDIS_TLS is not: Redis would be dialled in plaintext")
        try:
            self.tls.check().server_credentials(self.tls_client_auth)
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc
        if self.triton_tls_server_name and not self.triton_tls:
            raise SettingsError("TRITON_TLS_SERVER_NAME needs TRITON_TLS")
        for name in ("redis_timeout_s", "max_turn_s", "stream_idle_s", "connection_idle_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{ENVIRONMENT[name]} must be > 0")
        return self

    @classmethod
    def from_args(cls, argv: list[str] | None, environ: dict[str, str]) -> Settings:
        """Flags win over the environment, the environment over the defaults."""
        parser = argparse.ArgumentParser(prog="python -m services.orchestrator", description="glmvoice orchestrator")
        for name, env_name in ENVIRONMENT.items():
            parser.add_argument(f"--{name.replace('_', '-')}", default=None, help=f"(env {env_name})")
        args = vars(parser.parse_args(argv))
        values = {}
        for name, env_name in ENVIRONMENT.items():
            raw = args[name] if args[name] is not None else environ.get(env_name) or None
            if raw is not None:
                kind = type(getattr(cls, name)) if name not in PATHS else Path
                try:
                    values[name] = parse_bool(raw) if kind is bool else kind(raw)
                except ValueError as exc:
                    raise SettingsError(f"{env_name} (--{name.replace('_', '-')}): {exc}") from exc
        return cls(**values)


# Settings read from the environment, by field.
ENVIRONMENT = {
    "backend": "BACKEND", "redis_addr": "REDIS_ADDR",
    "triton_speech_tokenizer_addr": "TRITON_SPEECH_TOKENIZER_ADDR", "triton_llm_addr": "TRITON_LLM_ADDR",
    "triton_speech_decoder_addr": "TRITON_SPEECH_DECODER_ADDR", "checkpoints": "CHECKPOINTS",
    "tokenizer_dir": "TOKENIZER_DIR", "grpc_port": "GRPC_PORT", "metrics_port": "METRICS_PORT",
    "max_streams": "MAX_STREAMS", "api_keys_file": "GLMVOICE_API_KEYS_FILE", "otel_endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT",
    "log_level": "LOG_LEVEL", "session_ttl_s": "SESSION_TTL_S", "decoder_block_codes": "DECODER_BLOCK_CODES",
    "bind_address": "BIND_ADDRESS", "health_interval_s": "HEALTH_INTERVAL_S",
    "redis_timeout_s": "REDIS_TIMEOUT_S", "redis_password": "REDIS_PASSWORD", "redis_tls": "REDIS_TLS",
    "redis_ca_file": "REDIS_CA_FILE", "max_turn_s": "MAX_TURN_S", "stream_idle_s": "STREAM_IDLE_S",
    "connection_idle_s": "CONNECTION_IDLE_S", "quota_streams": "QUOTA_STREAMS",
    "quota_sessions_per_minute": "QUOTA_SESSIONS_PER_MINUTE", "quota_audio_s_per_minute": "QUOTA_AUDIO_S_PER_MINUTE",
    **TLS_ENVIRONMENT, "tls_client_auth": CLIENT_AUTH_ENVIRONMENT, **TRITON_ENVIRONMENT,
}
PATHS = frozenset({"checkpoints", "tokenizer_dir", "api_keys_file", "redis_ca_file", *TLS_ENVIRONMENT})

