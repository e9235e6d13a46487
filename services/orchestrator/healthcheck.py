"""`python -m services.orchestrator.healthcheck`: exit 0 when this pod's orchestrator answers SERVING.

The kubelet's gRPC probe cannot speak TLS; with TLS on, the chart probes with this instead. It dials
localhost:GRPC_PORT with the pod's own files (so it passes mTLS too); the certificate must name `localhost`.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.orchestrator.settings import Settings


def main() -> int:
    settings = Settings.from_args([], dict(os.environ))
    addr = f"localhost:{settings.grpc_port}"
    if settings.tls.cert_file is None:
        channel = grpc.insecure_channel(addr)
    else:
        channel = grpc.secure_channel(addr, settings.tls.channel_credentials())
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as exc:
            print(f"orchestrator health: {exc.code().name}", file=sys.stderr)
            return 1
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
