"""`python -m services.gateway`: the HTTP/WebSocket gateway (uvicorn), settings read once in main()."""

from __future__ import annotations

import os
import sys

from glmvoice.telemetry import configure_logging, configure_tracing
from services.gateway.settings import GatewaySettings


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from services.gateway.app import create_app

    try:
        settings = GatewaySettings.from_args(argv, dict(os.environ)).check()
    except ValueError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    tracer = configure_tracing(settings.otel_endpoint, "glmvoice-gateway")
    uvicorn.run(create_app(settings, tracer), host=settings.bind_address, port=settings.http_port, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
