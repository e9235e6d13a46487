"""Which Triton replica serves what: a live set of replicas per network, and rendezvous hashing on a key.

The LM keeps a session's KV prefix on the replica that served its last turn, so every turn of a session
goes to the same replica: the first of the session's rendezvous order (highest hash of session id +
address) among the live replicas. Adding or removing one replica moves only the sessions whose first
choice it is (about 1/N), and every orchestrator replica computes the same order without shared state.
A replica that is gone, draining (model unloaded) or full answers UNAVAILABLE (full: RESOURCE_EXHAUSTED)
before the first token:
the turn goes to the next replica of the order and prefills the whole history there (correct, slower),
the reroute is counted, and that replica sits out `quarantine_s` so the session's next turns stay
where the KV now is. A stream (tokenizer, decoder, an LM reply) stays on the replica that opened it; if
that replica dies the caller gets UNAVAILABLE from gRPC at once (the connection resets).

Where the replicas come from (one setting per network, e.g. TRITON_LLM_ADDR):
- `host:port[,host:port...]`: a static list (local stacks, tests);
- `endpointslices://<namespace>/<service>[:<port name>]`: the ready endpoints of a headless Service,
  followed with a watch on its EndpointSlices (discovery.k8s.io v1, or v1beta1 on Kubernetes < 1.21).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.orchestrator.errors import BackendUnavailable, Exhausted

log = logging.getLogger("glmvoice.orchestrator.routing")
K8S_SCHEME = "endpointslices://"
SERVICE_LABEL = "kubernetes.io/service-name"
DEFAULT_PORT_NAME = "grpc"
CLOSE_REMOVED_AFTER_S = 60.0  # streams still open on a removed replica may finish (draining pods)


def rendezvous_order(key: str, addrs: Iterable[str]) -> list[str]:
    """Addresses, best first, for `key` (highest random weight hashing)."""

    def weight(addr: str) -> int:
        return int.from_bytes(hashlib.blake2b(f"{key}\0{addr}".encode(), digest_size=8).digest(), "big")

    return sorted(addrs, key=weight, reverse=True)


class Replicas:
    """The live replicas of one network (thread-safe: a Kubernetes watch thread updates it)."""

    def __init__(self, addrs: Iterable[str] = ()):
        self._lock = threading.Lock()
        self._addrs: frozenset[str] = frozenset(addrs)
        self.changed = threading.Event()  # set on every change (tests and benchmarks wait on it)

    def set(self, addrs: Iterable[str]) -> None:
        addrs = frozenset(addrs)
        with self._lock:
            if addrs == self._addrs:
                return
            log.info("replicas now %s", sorted(addrs))
            self._addrs = addrs
        self.changed.set()

    def snapshot(self) -> frozenset[str]:
        with self._lock:
            return self._addrs


class RoutingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        registry = registry or CollectorRegistry()
        self.reroutes = Counter(
            "glmvoice_reroutes", "Requests sent past their first-choice replica (it was gone, draining or full)",
            ["network"], registry=registry,
        )
        self.replicas = Gauge("glmvoice_replicas", "Replicas in the routing table", ["network"], registry=registry)


class Router:
    """One network's replicas, a gRPC client per replica (made by `connect`), and the order for a key."""

    def __init__(self, network: str, replicas: Replicas, connect: Callable[[str], Any], metrics: RoutingMetrics,
                 quarantine_s: float = 5.0):
        self.network, self.replicas, self.connect, self.metrics = network, replicas, connect, metrics
        self.quarantine_s = quarantine_s
        self.clients: dict[str, Any] = {}
        self.down_until: dict[str, float] = {}
        self.removed_at: dict[str, float] = {}
        self.source: EndpointSliceWatch | None = None

    def order(self, key: str) -> list[str]:
        """Live replicas for `key`, best first; quarantined ones go last (tried only if nothing else is left)."""
        addrs = self.replicas.snapshot()
        self.metrics.replicas.labels(network=self.network).set(len(addrs))
        now = time.monotonic()
        ranked = rendezvous_order(key, addrs)
        return [a for a in ranked if self.down_until.get(a, 0) <= now] + [a for a in ranked if self.down_until.get(a, 0) > now]

    def client(self, addr: str) -> Any:
        if addr not in self.clients:
            self.clients[addr] = self.connect(addr)
        return self.clients[addr]

    def pick(self, key: str) -> tuple[str, Any]:
        order = self.order(key)
        if not order:
            raise BackendUnavailable(f"no {self.network} replica is available")
        return order[0], self.client(order[0])

    def mark_down(self, addr: str, reason: str) -> None:
        log.warning("%s replica %s unavailable (%s): skipped for %.0f s", self.network, addr, reason, self.quarantine_s)
        self.down_until[addr] = time.monotonic() + self.quarantine_s

    def rerouted(self) -> None:
        self.metrics.reroutes.labels(network=self.network).inc()

    async def reap(self) -> None:
        """Closes the clients of replicas gone from the table for a while (their streams have ended)."""
        live, now = self.replicas.snapshot(), time.monotonic()
        for addr in list(self.clients):
            if addr in live:
                self.removed_at.pop(addr, None)
            elif now - self.removed_at.setdefault(addr, now) > CLOSE_REMOVED_AFTER_S:
                await self.clients.pop(addr).close()
                self.removed_at.pop(addr)

    async def close(self) -> None:
        if self.source is not None:
            self.source.stop()
        for client in self.clients.values():
            await client.close()
        self.clients.clear()


class RoutedStream:
    """An LM stream on the key's replica; before its first item, an UNAVAILABLE replica passes the request
    to the next one in the key's order. After the first item the stream is bound to its replica."""

    def __init__(self, router: Router, key: str, open_stream: Callable[[Any], Any]):
        self.router, self.key, self.open_stream = router, key, open_stream
        self.stream: Any = None
        self.addr: str | None = None  # the replica that served it (benchmarks and logs)
        self.cancelled = False

    @property
    def finish_reason(self) -> str | None:
        return "cancelled" if self.stream is None and self.cancelled else getattr(self.stream, "finish_reason", None)

    async def __aiter__(self) -> AsyncIterator[Any]:
        order = self.router.order(self.key)
        if not order:
            raise BackendUnavailable(f"no {self.router.network} replica is available")
        for attempt, addr in enumerate(order):
            if self.cancelled:
                return
            self.addr, self.stream = addr, self.open_stream(self.router.client(addr))
            started = False
            try:
                async for item in self.stream:
                    started = True
                    yield item
                return
            except (BackendUnavailable, Exhausted) as exc:  # gone or draining; full (RESOURCE_EXHAUSTED)
                if started or attempt == len(order) - 1:
                    raise
                self.router.mark_down(addr, str(exc))
                self.router.rerouted()

    async def cancel(self) -> None:
        self.cancelled = True
        if self.stream is not None:
            await self.stream.cancel()


def replica_source(network: str, value: str, kube_config: Callable[[], Any] | None = None) -> tuple[Replicas, EndpointSliceWatch | None]:
    """A setting's value -> the live replica set (and the watch that keeps it current, already started)."""
    if not value.startswith(K8S_SCHEME):
        addrs = [a.strip() for a in value.split(",") if a.strip()]
        if not addrs:
            raise ValueError(f"{network}: no replica address in {value!r}")
        return Replicas(addrs), None
    target = value.removeprefix(K8S_SCHEME)
    namespace, _, service = target.partition("/")
    service, _, port_name = service.partition(":")
    if not namespace or not service:
        raise ValueError(f"{network}: expected {K8S_SCHEME}<namespace>/<service>[:<port name>], got {value!r}")
    replicas = Replicas()
    watch = EndpointSliceWatch(replicas, namespace, service, port_name or DEFAULT_PORT_NAME, kube_config)
    watch.start()
    return replicas, watch


def ready_addresses(slices: Iterable[dict], port_name: str) -> set[str]:
    """host:port of every ready endpoint in EndpointSlices (v1 and v1beta1 share these fields). A
    terminating (draining) endpoint is not ready; an endpoint without conditions counts as ready (the API's rule)."""
    addrs = set()
    for item in slices:
        ports = [p.get("port") for p in item.get("ports") or [] if p.get("name", "") == port_name and p.get("port")]
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for port in ports:
                addrs.update(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}" for host in endpoint["addresses"])
    return addrs


class EndpointSliceWatch:
    """Keeps `replicas` equal to the ready endpoints of one Service: list, then watch from that resourceVersion;
    relists after an error or an expired watch. Runs in a daemon thread (the kubernetes client is blocking)."""

    def __init__(self, replicas: Replicas, namespace: str, service: str, port_name: str,
                 kube_config: Callable[[], Any] | None = None, retry_s: float = 1.0):
        self.replicas, self.namespace, self.service, self.port_name = replicas, namespace, service, port_name
        self.kube_config, self.retry_s = kube_config or _in_cluster_client, retry_s
        self.stopping = threading.Event()
        self.synced = threading.Event()  # set once the first list has filled the replica set
        self.version: str | None = None  # the discovery.k8s.io version the API server serves
        self._watch: Any = None
        self.thread = threading.Thread(target=self._run, name=f"endpointslices-{service}", daemon=True)

    def start(self) -> EndpointSliceWatch:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._watch is not None:
            self._watch.stop()

    def _run(self) -> None:
        from kubernetes import client, watch

        api_client = self.kube_config()
        while not self.stopping.is_set():
            try:
                self.version = self.version or discovery_version(api_client)
                api = client.CustomObjectsApi(api_client)
                args = dict(group="discovery.k8s.io", version=self.version, namespace=self.namespace,
                            plural="endpointslices", label_selector=f"{SERVICE_LABEL}={self.service}")
                listed = api.list_namespaced_custom_object(**args)
                slices = {s["metadata"]["name"]: s for s in listed["items"]}
                self.replicas.set(ready_addresses(slices.values(), self.port_name))
                self.synced.set()
                self._watch = watch.Watch()
                for event in self._watch.stream(api.list_namespaced_custom_object, **args,
                                                resource_version=listed["metadata"]["resourceVersion"],
                                                timeout_seconds=300):
                    if self.stopping.is_set():
                        return
                    if event["type"] == "ERROR":  # e.g. 410 Gone: the resourceVersion expired; relist
                        break
                    item = event["object"]
                    if event["type"] == "DELETED":
                        slices.pop(item["metadata"]["name"], None)
                    else:
                        slices[item["metadata"]["name"]] = item
                    self.replicas.set(ready_addresses(slices.values(), self.port_name))
            except Exception as exc:  # noqa: BLE001 - the watch must outlive API server restarts
                if self.stopping.is_set():
                    return
                log.warning("EndpointSlice watch of %s/%s failed: %s", self.namespace, self.service, exc)
                self.stopping.wait(self.retry_s)


def discovery_version(api_client: Any) -> str:
    """discovery.k8s.io/v1 where served (Kubernetes >= 1.21), else v1beta1 (1.17-1.20)."""
    from kubernetes import client

    for group in client.ApisApi(api_client).get_api_versions().groups:
        if group.name == "discovery.k8s.io":
            served = {v.version for v in group.versions}
            for version in ("v1", "v1beta1"):
                if version in served:
                    return version
    raise RuntimeError("the API server serves no discovery.k8s.io EndpointSlices (Kubernetes >= 1.17 needed)")


def _in_cluster_client() -> Any:
    from kubernetes import client, config

    config.load_incluster_config()
    return client.ApiClient()
