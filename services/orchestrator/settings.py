"""The orchestrator's one settings object, built in main() from flags and the environment.

Nothing here runs at import: `Settings.from_args(argv, environ)` reads both explicitly, and
`Settings.check()` fails at start with a message that names the missing dependency.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("triton", "inprocess")
CHECKPOINT_DIRS = {"tokenizer": "glm-4-voice-tokenizer", "llm": "glm-4-voice-9b", "decoder": "glm-4-voice-decoder"}


class SettingsError(ValueError):
    """A setting is missing or wrong; the message says which and how to set it."""


@dataclass(frozen=True)
class Settings:
    backend: str = "triton"
    # Dependencies (`*_ADDR`: host:port of each Triton deployment's gRPC endpoint).
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
    health_interval_s: float = 5.0  # how often Redis and the models are checked for the health status
    bind_address: str = "[::]"

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
                    values[name] = kind(raw)
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
    "bind_address": "BIND_ADDRESS",
}
PATHS = frozenset({"checkpoints", "tokenizer_dir", "api_keys_file"})
