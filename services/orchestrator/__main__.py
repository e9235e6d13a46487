"""`python -m services.orchestrator`: the orchestrator's entry point (container command, `make up`).

All configuration is read here, once, into a frozen Settings (flags win over the environment).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from glmvoice.telemetry import Metrics, configure_logging, configure_tracing
from services.orchestrator.server import Orchestrator
from services.orchestrator.settings import Settings, SettingsError


async def serve(settings: Settings, tracer) -> None:
    metrics = Metrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.bind_address)
    orchestrator = Orchestrator(settings, metrics, tracer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await orchestrator.start()
    await stop.wait()
    await orchestrator.stop(grace_s=5.0)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_args(argv, dict(os.environ)).check()
    except SettingsError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    tracer = configure_tracing(settings.otel_endpoint, "glmvoice-orchestrator")
    logging.getLogger("glmvoice.orchestrator").info("starting with the %s backend", settings.backend)
    asyncio.run(serve(settings, tracer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
