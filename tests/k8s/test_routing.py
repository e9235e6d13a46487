"""Session routing on the real kube-apiserver: the orchestrator's RBAC and its EndpointSlice watch.

The test server is 1.20, which serves EndpointSlices as discovery.k8s.io/v1beta1 only (v1 is 1.21+): the
watch asks discovery which version is served, so this exercises the older path; current clusters take v1.
"""

import time

import pytest
import yaml

from services.orchestrator.routing import EndpointSliceWatch, Replicas
from tests.k8s.test_chart import RELEASE, helm, template  # noqa: F401  (helm is a fixture)
from tests.k8s.test_install import can, install

pytestmark = pytest.mark.integration
NAMESPACE = "routing"
SERVICE = f"{RELEASE}-glmvoice-triton-llm-replicas"
ACCOUNT = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-glmvoice-orchestrator"


@pytest.fixture(scope="module")
def installed(kube_api, helm):
    return install(kube_api, NAMESPACE, template(helm, None, namespace=NAMESPACE))


def test_orchestrator_may_only_list_and_watch_endpointslices(kube_api, installed):
    assert can(kube_api, NAMESPACE, "orchestrator", "list", "endpointslices.discovery.k8s.io")
    assert can(kube_api, NAMESPACE, "orchestrator", "watch", "endpointslices.discovery.k8s.io")
    for verb, resource in [("get", "secrets"), ("list", "pods"), ("list", "endpoints"), ("create", "endpointslices.discovery.k8s.io"),
                           ("delete", "endpointslices.discovery.k8s.io"), ("list", "configmaps")]:
        assert not can(kube_api, NAMESPACE, "orchestrator", verb, resource), (verb, resource)
    other = kube_api.kubectl_run("auth", "can-i", "list", "endpointslices.discovery.k8s.io", "-n", "default",
                                 f"--as={ACCOUNT}", check=False).stdout.strip()
    assert other == "no"  # a Role, not a ClusterRole
    # The other workloads (Triton, gateway, Redis) stay without any API access.
    assert not can(kube_api, NAMESPACE, "workload", "list", "endpointslices.discovery.k8s.io")
    services = {d["metadata"]["name"]: d for d in installed if d["kind"] == "Service"}
    assert services[SERVICE]["spec"]["clusterIP"] == "None"
    stored = kube_api.get_json("-n", NAMESPACE, f"service/{SERVICE}")
    assert stored["spec"]["clusterIP"] == "None"


def endpoint_slice(name: str, ips_ready: dict[str, bool], version: str) -> str:
    return yaml.safe_dump({
        "apiVersion": f"discovery.k8s.io/{version}", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": SERVICE}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 8001, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in ips_ready.items()],
    })


def wait_for(replicas: Replicas, expected: set[str], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while replicas.snapshot() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert replicas.snapshot() == expected


def test_routing_table_follows_endpointslices(kube_api, installed):
    from kubernetes import config

    def client_as_orchestrator():
        api_client = config.new_client_from_config(config_file=str(kube_api.kubeconfig))
        api_client.set_default_header("Impersonate-User", ACCOUNT)  # exactly the chart's RBAC
        return api_client

    replicas = Replicas()
    watch = EndpointSliceWatch(replicas, NAMESPACE, SERVICE, "grpc", client_as_orchestrator).start()
    try:
        assert watch.synced.wait(30), "the watch never listed the EndpointSlices"
        assert replicas.snapshot() == set()
        version = watch.version
        assert version == ("v1beta1" if kube_api.version.startswith("v1.20") else "v1")
        kube_api.kubectl_run("apply", "-f", "-", input=endpoint_slice("llm-a", {"10.0.0.1": True, "10.0.0.2": True}, version))
        wait_for(replicas, {"10.0.0.1:8001", "10.0.0.2:8001"})
        # A replica added (a new slice), one draining (not ready), one slice removed.
        kube_api.kubectl_run("apply", "-f", "-", input=endpoint_slice("llm-b", {"10.0.0.3": True}, version))
        wait_for(replicas, {"10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"})
        kube_api.kubectl_run("apply", "-f", "-", input=endpoint_slice("llm-a", {"10.0.0.1": True, "10.0.0.2": False}, version))
        wait_for(replicas, {"10.0.0.1:8001", "10.0.0.3:8001"})
        kube_api.kubectl_run("delete", "-n", NAMESPACE, f"endpointslices.{version}.discovery.k8s.io", "llm-a")
        wait_for(replicas, {"10.0.0.3:8001"})
    finally:
        watch.stop()
