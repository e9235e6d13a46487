"""The Triton servers that serve one model, and the repository API calls made to each.

Replicas come from a static list of gRPC addresses, or, in Kubernetes, from the running pods that match
TRITON_LABEL_SELECTOR in POD_NAMESPACE (each pod is asked directly, not through its Service, so that
one replica at a time can be swapped). With TLS (TRITON_TLS) every client dials over TLS with the pod's
files, checking the certificate for TRITON_TLS_SERVER_NAME instead of the pod IP it dials.
"""

from __future__ import annotations

from dataclasses import dataclass

import tritonclient.grpc as grpcclient

from services.tls import TlsFiles, triton_client_options


@dataclass(frozen=True)
class Replica:
    name: str
    url: str  # host:port of the gRPC endpoint (inference and repository API)
    tls: TlsFiles | None = None  # None: plaintext
    server_name: str = ""  # with tls: the name its certificate carries, when `url` is a pod IP

    def client(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.url, **triton_client_options(self.tls, self.server_name))


def static_replicas(addresses: list[str], tls: TlsFiles | None = None, server_name: str = "") -> list[Replica]:
    return [Replica(name=address, url=address, tls=tls, server_name=server_name) for address in addresses]


def pod_replicas(core_api, namespace: str, label_selector: str, grpc_port: int, tls: TlsFiles | None = None,
                 server_name: str = "") -> list[Replica]:
    """Running pods with an IP, by name; `core_api` is a kubernetes.client.CoreV1Api."""
    pods = core_api.list_namespaced_pod(namespace, label_selector=label_selector).items
    live = [p for p in pods
            if p.status and p.status.phase == "Running" and p.status.pod_ip and not p.metadata.deletion_timestamp]
    live.sort(key=lambda p: p.metadata.name)
    return [Replica(name=p.metadata.name, url=f"{p.status.pod_ip}:{grpc_port}", tls=tls, server_name=server_name)
            for p in live]


class TritonControl:
    """Repository API calls for one model on one replica.

    The model's config keeps Triton's default version policy (the latest version), and versions only
    ever go up. A load then brings up the newest version directory and unloads the previous one once the
    new one is ready and the old one's in-flight requests are done: one new copy of the weights at a
    time. (Loading with an overriding config instead makes Triton re-create every version it keeps,
    measured here: three copies of a 19 GB LM at the peak of a swap.)
    """

    def __init__(self, replica: Replica, model: str, timeout_s: float = 900.0):
        self.replica = replica
        self.model = model
        self.timeout_s = timeout_s

    def server_live(self) -> bool:
        # Not is_server_ready: Triton's server readiness stays false for good once any version of any
        # model failed to load (the failed version keeps its UNAVAILABLE record), although the model's
        # live versions serve. Model readiness is what counts; see is_ready.
        with self.replica.client() as client:
            return client.is_server_live()

    def ready_versions(self) -> list[int]:
        with self.replica.client() as client:
            index = client.get_model_repository_index(as_json=True).get("models", [])
        return sorted(int(m["version"]) for m in index if m.get("name") == self.model and m.get("state") == "READY"
                      and m.get("version"))

    def load(self) -> None:
        """Returns once the newest version in the repository is loaded (raises if it failed)."""
        with self.replica.client() as client:
            client.load_model(self.model, client_timeout=self.timeout_s)

    def unload(self) -> None:
        with self.replica.client() as client:
            client.unload_model(self.model, client_timeout=self.timeout_s)

    def is_ready(self, version: int) -> bool:
        with self.replica.client() as client:
            return client.is_model_ready(self.model, str(version))
