"""The gateway's one settings object, built in main() from flags and the environment."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from services.tls import TLS_ENVIRONMENT, TlsFiles


@dataclass(frozen=True)
class GatewaySettings:
    orchestrator_addr: str = ""  # host:port of the orchestrator's gRPC endpoint (ORCHESTRATOR_ADDR)
    http_port: int = 8080
    bind_address: str = "0.0.0.0"
    log_level: str = "INFO"
    otel_endpoint: str = ""
    max_body_bytes: int = 20 * 1024 * 1024  # a 10-minute 16 kHz WAV fits
    request_timeout_s: float = 300.0
    # The API keys file the orchestrator reads too: with it, a caller is authenticated before its body is read.
    api_keys_file: Path | None = None
    # TLS to the orchestrator (ORCHESTRATOR_TLS): trusts TLS_CA_FILE and presents TLS_CERT_FILE for mTLS.
    orchestrator_tls: bool = False
    tls: TlsFiles = TlsFiles()

    def check(self) -> GatewaySettings:
        if not self.orchestrator_addr:
            raise ValueError("ORCHESTRATOR_ADDR (--orchestrator-addr host:port) is required")
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(f"GLMVOICE_API_KEYS_FILE {self.api_keys_file} does not exist")
        self.tls.check()
        return self

    @classmethod
    def from_args(cls, argv: list[str] | None, environ: dict[str, str]) -> GatewaySettings:
        parser = argparse.ArgumentParser(prog="python -m services.gateway", description="glmvoice HTTP gateway")
        parser.add_argument("--orchestrator-addr", default=environ.get("ORCHESTRATOR_ADDR", ""))
        parser.add_argument("--http-port", type=int, default=int(environ.get("HTTP_PORT", "8080")))
        parser.add_argument("--bind-address", default=environ.get("BIND_ADDRESS", "0.0.0.0"))
        parser.add_argument("--log-level", default=environ.get("LOG_LEVEL", "INFO"))
        parser.add_argument("--otel-endpoint", default=environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
        parser.add_argument("--api-keys-file", default=environ.get("GLMVOICE_API_KEYS_FILE") or None)
        parser.add_argument("--orchestrator-tls", action="store_true",
                            default=environ.get("ORCHESTRATOR_TLS", "").lower() in ("1", "true", "yes", "on"))
        for name, env_name in TLS_ENVIRONMENT.items():
            parser.add_argument(f"--{name.replace('_', '-')}", default=environ.get(env_name) or None)
        args = parser.parse_args(argv)
        keys = Path(args.api_keys_file) if args.api_keys_file else None
        tls = TlsFiles(*(Path(p) if p else None for p in (args.tls_cert_file, args.tls_key_file, args.tls_ca_file)))
        return cls(args.orchestrator_addr, args.http_port, args.bind_address, args.log_level, args.otel_endpoint,
                   api_keys_file=keys, orchestrator_tls=args.orchestrator_tls, tls=tls)
