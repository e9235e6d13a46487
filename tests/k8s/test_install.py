"""The chart's manifests on a real kube-apiserver (tests/fixtures/kube.py).

The test server is 1.20 (the newest one buildable here): it stores, validates, defaults and authorises
every kind it serves. The kinds it does not serve yet are skipped by asking its discovery API, and
the skipped set is pinned so that nothing else slips through; those kinds are validated against the
current schemas in test_chart.py.
"""

import copy

import pytest
import yaml

from tests.k8s.test_chart import RELEASE, helm, template  # noqa: F401  (helm is a fixture)

pytestmark = pytest.mark.integration

# Newer than 1.20: HPA autoscaling/v2 (1.23), PodDisruptionBudget policy/v1 (1.21), ValidatingAdmissionPolicy
# admissionregistration.k8s.io/v1 (1.30), Prometheus and cert-manager CRDs.
NOT_SERVED = {("autoscaling/v2", "HorizontalPodAutoscaler"), ("policy/v1", "PodDisruptionBudget"),
              ("monitoring.coreos.com/v1", "ServiceMonitor"), ("cert-manager.io/v1", "Certificate"),
              ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"),
              ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding")}


def served_kinds(api) -> set[tuple[str, str]]:
    kinds = set()
    for line in api.kubectl_run("api-resources", "--no-headers").stdout.splitlines():
        parts = line.split()
        # NAME [SHORTNAMES] APIVERSION NAMESPACED KIND
        kinds.add((parts[-3], parts[-1]))
    return kinds


def without_grpc_probes(doc: dict) -> dict:
    """1.20 has no grpc probe handler (1.24+); a tcpSocket probe on the same port stands in so that
    the rest of the pod template is still checked by the server."""
    doc = copy.deepcopy(doc)
    for c in doc["spec"]["template"]["spec"]["containers"]:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if "grpc" in c.get(probe, {}):
                c[probe]["tcpSocket"] = {"port": c[probe].pop("grpc")["port"]}
    return doc


def install(api, namespace: str, manifests: str) -> list[dict]:
    """Apply what the server serves; return the applied objects."""
    if api.kubectl_run("get", "namespace", namespace, check=False).returncode != 0:
        api.kubectl_run("create", "namespace", namespace)
    served = served_kinds(api)
    docs = [d for d in yaml.safe_load_all(manifests) if d]
    skipped = {(d["apiVersion"], d["kind"]) for d in docs if (d["apiVersion"], d["kind"]) not in served}
    assert skipped <= NOT_SERVED, f"the server refuses kinds the chart should not need: {skipped - NOT_SERVED}"
    applied = [without_grpc_probes(d) if d["kind"] == "Deployment" else d
               for d in docs if (d["apiVersion"], d["kind"]) in served]
    # Client-side schema validation would use 1.20's schemas; the server validates what it stores.
    api.kubectl_run("apply", "--validate=false", "-n", namespace, "-f", "-",
                    input=yaml.safe_dump_all(applied))
    return applied


@pytest.mark.parametrize("values", ["gpu-values.yaml", "tls-values.yaml", "external-redis-values.yaml"])
def test_manifests_are_accepted_and_stored(kube_api, helm, values):
    namespace = values.removesuffix("-values.yaml")
    applied = install(kube_api, namespace, template(helm, values, namespace=namespace))
    assert {d["kind"] for d in applied} >= {"Deployment", "Service", "ConfigMap", "ServiceAccount", "Role",
                                          "RoleBinding", "NetworkPolicy", "PersistentVolumeClaim"}
    for doc in applied:
        stored = kube_api.get_json("-n", namespace, f"{doc['kind'].lower()}/{doc['metadata']['name']}")
        assert stored["metadata"]["labels"] == doc["metadata"]["labels"]
        if doc["kind"] in ("Deployment", "StatefulSet"):
            assert stored["spec"]["selector"] == doc["spec"]["selector"]
            c = stored["spec"]["template"]["spec"]["containers"][0]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
        if doc["kind"] == "Job":
            assert stored["spec"]["template"]["spec"]["containers"][0]["command"] == \
                doc["spec"]["template"]["spec"]["containers"][0]["command"]


def test_upgrade_keeps_immutable_fields(kube_api, helm):
    """A new image and new configuration apply over a running release: selectors (immutable) stay."""
    namespace = "upgrade"
    install(kube_api, namespace, template(helm, None, "auth.apiKeys={k1}", namespace=namespace))
    before = kube_api.get_json("-n", namespace, f"deployment/{RELEASE}-glmvoice-orchestrator")
    install(kube_api, namespace, template(helm, None, "auth.apiKeys={k2}", "image.tag=0.2.0",
                                          "orchestrator.maxStreams=8", namespace=namespace))
    after = kube_api.get_json("-n", namespace, f"deployment/{RELEASE}-glmvoice-orchestrator")
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == "glmvoice:0.2.0"
    annotation = lambda d: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert annotation(after) != annotation(before)
    config = kube_api.get_json("-n", namespace, f"configmap/{RELEASE}-glmvoice-orchestrator")
    assert config["data"]["MAX_STREAMS"] == "8"


def can(api, namespace: str, account: str, verb: str, resource: str, subresource: str = "") -> bool:
    args = ["auth", "can-i", verb, resource, "-n", namespace,
            f"--as=system:serviceaccount:{namespace}:{RELEASE}-glmvoice-{account}"]
    if subresource:
        args.append(f"--subresource={subresource}")
    answer = api.kubectl_run(*args, check=False).stdout.strip()
    assert answer in ("yes", "no"), answer
    return answer == "yes"


def test_rbac_grants_exactly_the_needed_access(kube_api, helm):
    namespace = "rbac"
    install(kube_api, namespace, template(helm, None, namespace=namespace))
    allowed = {
        "promoter": [("list", "pods"), ("watch", "endpoints"), ("list", "endpointslices.discovery.k8s.io")],
        "job-submitter": [("create", "jobs.batch"), ("delete", "jobs.batch"), ("watch", "pods")],
    }
    denied = {
        "promoter": [("create", "jobs.batch"), ("get", "jobs.batch"), ("delete", "jobs.batch"), ("get", "secrets"), ("create", "pods"), ("patch", "deployments.apps"),
                     ("delete", "pods"), ("update", "configmaps")],
        "job-submitter": [("get", "secrets"), ("list", "endpoints"), ("create", "pods"), ("create", "roles.rbac.authorization.k8s.io")],
        "workload": [("get", "pods"), ("list", "configmaps"), ("create", "jobs.batch")],
    }
    for account, rules in allowed.items():
        for verb, resource in rules:
            assert can(kube_api, namespace, account, verb, resource), (account, verb, resource)
    for account, rules in denied.items():
        for verb, resource in rules:
            assert not can(kube_api, namespace, account, verb, resource), (account, verb, resource)
    assert can(kube_api, namespace, "job-submitter", "get", "pods", subresource="log")
    assert not can(kube_api, namespace, "promoter", "get", "pods", subresource="log")
    # Namespaced: nothing outside the release's namespace.
    args = ["auth", "can-i", "list", "pods", "-n", "default", f"--as=system:serviceaccount:{namespace}:{RELEASE}-glmvoice-promoter"]
    assert kube_api.kubectl_run(*args, check=False).stdout.strip() == "no"
