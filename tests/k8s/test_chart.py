"""The Helm chart, checked with the real helm binary and the Kubernetes API schemas.

Every value set in charts/glmvoice/ci/ is linted, rendered for Kubernetes 1.28 and 1.33 and validated
strictly against that version's schemas; the rendered manifests are then
checked for what schemas cannot see: probes, resources, selectors that match, minimal RBAC,
non-root pods and checksum annotations that follow the configuration.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "glmvoice"
HELM = ROOT / "build" / "tools" / "helm"
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
VALUE_SETS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
KUBE_VERSIONS = ["1.28.0", "1.33.0"]
RELEASE = "rel"
NAMESPACE = "voice"
# Kinds outside the core API (Prometheus Operator and cert-manager CRDs): the schemas do not know them.
CRD_KINDS = {"ServiceMonitor", "Certificate"}
# What a 1.30+ cluster serves and `helm template` does not assume: the chart's admission policy needs it.
API_VERSIONS = ["admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}


@pytest.fixture(scope="session")
def helm() -> Path:
    # Idempotent and cached: a no-op when the pinned binary is already in place.
    subprocess.run([str(ROOT / "charts" / "tools" / "install-helm.sh")], check=True, capture_output=True)
    return HELM


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def template(helm: Path, values: str | None = None, *sets: str, kube: str = "1.33.0",
             namespace: str = NAMESPACE) -> str:
    args = ["template", RELEASE, str(CHART), "--namespace", namespace, "--kube-version", kube]
    for api in API_VERSIONS:
        args += ["--api-versions", api]
    if values:
        args += ["-f", str(CHART / "ci" / values)]
    for s in sets:
        args += ["--set", s]
    return run_helm(helm, *args).stdout


def render(helm: Path, values: str | None = None, *sets: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(template(helm, values, *sets)) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def containers(docs: list[dict]):
    for w in workloads(docs):
        for c in pod_spec(w)["containers"]:
            yield w, c


@pytest.fixture(scope="module", params=VALUE_SETS)
def rendered(request, helm) -> list[dict]:
    return render(helm, request.param)


def test_value_sets_exist():
    assert {"default-values.yaml", "gpu-values.yaml", "external-redis-values.yaml",
            "autoscaling-off-values.yaml", "tls-values.yaml"} <= set(VALUE_SETS)


@pytest.mark.parametrize("values", VALUE_SETS)
def test_lint_strict(helm, values):
    proc = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(CHART / "ci" / values), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS)
def test_manifests_validate_strictly(helm, values, kube):
    manifests = template(helm, values, kube=kube)
    proc = subprocess.run([str(VALIDATE), "--strict", "-k", kube, "-"], input=manifests,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    docs = [d for d in yaml.safe_load_all(manifests) if d]
    # Every core resource was checked against a schema (none silently skipped).
    passed = proc.stdout.count("passed for resource")
    assert passed == sum(d["kind"] not in CRD_KINDS for d in docs)


def test_schema_rejects_bad_values(helm):
    bad = ["triton.models.llm.gpu=-1", "orchestrator.maxStreams=0", "jobs.train.model=gpt",
           "logLevel=LOUD", "typo=1", "redis.external.addr=no-port"]
    for s in bad:
        proc = run_helm(helm, "template", RELEASE, str(CHART), "--set", s, check=False)
        assert proc.returncode != 0, f"--set {s} was accepted"


def test_required_values_fail_clearly(helm):
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--set", "redis.enabled=false", check=False)
    assert proc.returncode != 0 and "redis.external.addr" in proc.stderr
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--set", "jobs.train.enabled=true", check=False)
    assert proc.returncode != 0 and "jobs.train.runId" in proc.stderr


def test_probes_on_every_long_running_container(rendered):
    for w, c in containers(rendered):
        if w["kind"] == "Job":
            continue
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in c, f"{w['metadata']['name']}/{c['name']} has no {probe}"


def test_probe_kinds_follow_the_contract(helm):
    docs = render(helm)
    deployments = by_kind(docs, "Deployment")
    orch = pod_spec(deployments[f"{RELEASE}-glmvoice-orchestrator"])["containers"][0]
    assert orch["readinessProbe"]["grpc"]["port"] == 50051
    # The orchestrator reads the served LM's tokenizer through the promoter's `current` link, read-only.
    assert {"name": "TOKENIZER_DIR", "value": "/models/checkpoints/llm/current"} in orch["env"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in orch["volumeMounts"]
    gateway = pod_spec(deployments[f"{RELEASE}-glmvoice-gateway"])["containers"][0]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for model in ("speech-tokenizer", "llm", "speech-decoder"):
        triton = pod_spec(deployments[f"{RELEASE}-glmvoice-triton-{model}"])["containers"][0]
        assert triton["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{model.replace('-', '_')}/ready"
        assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
        assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}


def test_resources_on_every_container(rendered):
    for w, c in containers(rendered):
        res = c.get("resources", {})
        name = f"{w['metadata']['name']}/{c['name']}"
        assert {"cpu", "memory"} <= set(res.get("requests", {})), name
        assert "memory" in res.get("limits", {}), name


def test_gpu_requests_equal_limits(helm):
    docs = render(helm, "gpu-values.yaml")
    gpu_containers = [(w, c) for w, c in containers(docs) if "nvidia.com/gpu" in c["resources"]["limits"]]
    # Three Triton networks, the train and the evaluate Job.
    assert len(gpu_containers) == 5
    for _, c in gpu_containers:
        assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"]
    for w, c in containers(render(helm)):
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {}), w["metadata"]["name"]


def test_selectors_match_pod_labels(rendered):
    names = [w["metadata"]["name"] for w in workloads(rendered)]
    assert len(names) == len(set(names))
    for w in workloads(rendered):
        if w["kind"] == "Job":
            continue
        selector = w["spec"]["selector"]["matchLabels"]
        assert matches(selector, pod_labels(w)), w["metadata"]["name"]
        # Each Deployment's selector is its own: no other workload's pods fall under it.
        others = [o for o in workloads(rendered) if o is not w and matches(selector, pod_labels(o))]
        assert not others, f"{w['metadata']['name']} also selects {[o['metadata']['name'] for o in others]}"


def test_services_select_pods_with_their_ports(rendered):
    for svc in by_kind(rendered, "Service").values():
        targets = [w for w in workloads(rendered) if matches(svc["spec"]["selector"], pod_labels(w))]
        assert len(targets) == 1, svc["metadata"]["name"]
        port_names = {p["name"] for c in pod_spec(targets[0])["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, (svc["metadata"]["name"], port)


def test_hpas_and_pdbs_point_at_workloads(rendered):
    deployments = by_kind(rendered, "Deployment")
    for hpa in by_kind(rendered, "HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        # The HPA owns the replica count; a fixed one would fight it on every upgrade.
        assert "replicas" not in deployments[target["name"]]["spec"]
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for pdb in by_kind(rendered, "PodDisruptionBudget").values():
        selected = [w for w in workloads(rendered) if matches(pdb["spec"]["selector"]["matchLabels"], pod_labels(w))]
        assert len(selected) == 1, pdb["metadata"]["name"]


def test_autoscaling_signals(helm):
    hpas = by_kind(render(helm), "HorizontalPodAutoscaler")
    metric = lambda name: hpas[f"{RELEASE}-glmvoice-{name}"]["spec"]["metrics"][0]
    assert metric("orchestrator")["pods"]["metric"]["name"] == "glmvoice_active_streams"
    assert metric("triton-llm")["pods"]["metric"]["name"] == "nv_inference_pending_request_count"
    for name in ("triton-speech-tokenizer", "triton-speech-decoder", "gateway"):
        assert metric(name)["resource"]["name"] == "cpu"
    off = render(helm, "autoscaling-off-values.yaml")
    assert not by_kind(off, "HorizontalPodAutoscaler")
    assert by_kind(off, "Deployment")[f"{RELEASE}-glmvoice-triton-llm"]["spec"]["replicas"] == 2


def test_rbac_is_minimal(rendered):
    assert not [d for d in rendered if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = by_kind(rendered, "Role")
    accounts = by_kind(rendered, "ServiceAccount")
    for role in roles.values():
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            assert not {"secrets", "roles", "rolebindings"} & set(rule["resources"])
            assert not {"escalate", "bind", "impersonate", "patch", "update", "deletecollection"} & set(rule["verbs"])
    for binding in by_kind(rendered, "RoleBinding").values():
        assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] in roles
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["name"] in accounts
            assert subject["namespace"] == NAMESPACE


def test_promoter_role_is_exactly_what_a_swap_needs(helm):
    roles = by_kind(render(helm), "Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"])
             for r in roles[f"{RELEASE}-glmvoice-promoter"]["rules"]}
    read = {"get", "list", "watch"}
    assert rules == {(("",), ("pods", "endpoints")): read,
                     (("discovery.k8s.io",), ("endpointslices",)): read}


def test_orchestrator_role_only_follows_endpointslices(helm):
    rules = by_kind(render(helm), "Role")[f"{RELEASE}-glmvoice-orchestrator"]["rules"]
    assert rules == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]


@pytest.mark.parametrize("routing", [True, False])
def test_only_the_promoter_and_the_routing_orchestrator_get_an_api_token(helm, routing):
    docs = render(helm, "gpu-values.yaml", f"orchestrator.routing.enabled={str(routing).lower()}")
    callers = {"promoter"} | ({"orchestrator"} if routing else set())
    for w in workloads(docs):
        spec = pod_spec(w)
        component = pod_labels(w)["app.kubernetes.io/component"]
        assert spec["automountServiceAccountToken"] is (component in callers), w["metadata"]["name"]
        if component in callers:  # each caller of the API has its own account and Role
            assert spec["serviceAccountName"] == f"{RELEASE}-glmvoice-{component}"
    roles = {d["metadata"]["name"] for d in docs if d["kind"] == "Role"}
    assert (f"{RELEASE}-glmvoice-orchestrator" in roles) is routing
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == f"{RELEASE}-glmvoice-orchestrator")
    headless = {d["metadata"]["name"] for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"}
    for model in ("speech-tokenizer", "llm", "speech-decoder"):
        service = f"{RELEASE}-glmvoice-triton-{model}-replicas"
        addr = config["data"][f"TRITON_{model.replace('-', '_').upper()}_ADDR"]
        assert (service in headless) is routing
        assert addr == (f"endpointslices://{NAMESPACE}/{service}:grpc" if routing else f"{RELEASE}-glmvoice-triton-{model}:8001")


def test_pods_run_as_non_root_on_read_only_roots(rendered):
    for w in workloads(rendered):
        spec = pod_spec(w)
        assert spec["securityContext"]["runAsNonRoot"] is True, w["metadata"]["name"]
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]


def test_writable_paths_are_volumes(rendered):
    for w, c in containers(rendered):
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        if c["name"] == "redis":
            assert "/data" in mounts
        else:
            assert "/tmp" in mounts, w["metadata"]["name"]


def test_triton_deployments_follow_the_launcher_contract(helm):
    for name, d in by_kind(render(helm), "Deployment").items():
        if "-triton-" not in name:
            continue
        model = pod_labels(d)["glmvoice.io/model"]
        c = pod_spec(d)["containers"][0]
        assert c["command"] == ["python", "-m", "services.triton"]
        args = c["args"]
        assert args[args.index("--models") + 1] == model
        assert args[args.index("--model-repository") + 1] == "/models/repository"
        mount = next(m for m in c["volumeMounts"] if m["name"] == "models")
        assert mount["mountPath"] == "/models" and mount["readOnly"] is True
        shm = next(v for v in pod_spec(d)["volumes"] if v["name"] == "shm")
        assert shm["emptyDir"]["medium"] == "Memory"


def test_orchestrator_addresses_resolve_to_rendered_services(helm):
    docs = render(helm)
    services = by_kind(docs, "Service")
    config = by_kind(docs, "ConfigMap")[f"{RELEASE}-glmvoice-orchestrator"]["data"]

    def resolves(addr: str) -> bool:
        if addr.startswith("endpointslices://"):  # a headless Service in this namespace, by port name
            namespace, _, rest = addr.removeprefix("endpointslices://").partition("/")
            name, _, port = rest.partition(":")
            return (namespace == NAMESPACE and name in services and services[name]["spec"].get("clusterIP") == "None"
                    and port in {p["name"] for p in services[name]["spec"]["ports"]})
        host, port = addr.rsplit(":", 1)
        return host in services and int(port) in {p["port"] for p in services[host]["spec"]["ports"]}

    for key in ("REDIS_ADDR", "TRITON_SPEECH_TOKENIZER_ADDR", "TRITON_LLM_ADDR", "TRITON_SPEECH_DECODER_ADDR"):
        assert resolves(config[key]), (key, config[key])
    assert config["MAX_STREAMS"] == "32"
    gateway = by_kind(docs, "ConfigMap")[f"{RELEASE}-glmvoice-gateway"]["data"]
    assert resolves(gateway["ORCHESTRATOR_ADDR"])


def test_external_redis(helm):
    docs = render(helm, "external-redis-values.yaml")
    assert not by_kind(docs, "StatefulSet")
    config = by_kind(docs, "ConfigMap")[f"{RELEASE}-glmvoice-orchestrator"]["data"]
    assert config["REDIS_ADDR"] == "redis.sessions.svc.cluster.local:6379"


def test_api_keys_secret_is_mounted_where_the_env_points(helm):
    docs = render(helm, "tls-values.yaml")
    secret = by_kind(docs, "Secret")[f"{RELEASE}-glmvoice-api-keys"]
    assert set(secret["data"]) == {"api-keys"}
    for name in ("orchestrator", "gateway"):
        c = pod_spec(by_kind(docs, "Deployment")[f"{RELEASE}-glmvoice-{name}"])["containers"][0]
        env = {e["name"]: e.get("value") for e in c["env"]}
        mount = next(m for m in c["volumeMounts"] if m["name"] == "api-keys")
        assert env["GLMVOICE_API_KEYS_FILE"] == f"{mount['mountPath']}/api-keys"


def checksums(docs: list[dict]) -> dict[str, str]:
    return {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for w in workloads(docs)}


def test_checksums_follow_the_configuration(helm):
    keys = "auth.apiKeys={a}"
    base = checksums(render(helm, None, keys))
    for name in base:
        assert len(base[name]) == 64, name
    orch, gw = f"{RELEASE}-glmvoice-orchestrator", f"{RELEASE}-glmvoice-gateway"
    assert checksums(render(helm, None, keys)) == base  # deterministic
    streams = checksums(render(helm, None, keys, "orchestrator.maxStreams=8"))
    assert streams[orch] != base[orch] and streams[gw] == base[gw]
    logs = checksums(render(helm, None, keys, "logLevel=DEBUG"))
    assert all(logs[n] != base[n] for n in base if n != f"{RELEASE}-glmvoice-redis")
    rotated = checksums(render(helm, None, "auth.apiKeys={b}"))
    assert rotated[orch] != base[orch] and rotated[gw] != base[gw]
    redis = checksums(render(helm, None, keys, "redis.maxmemory=1gb"))
    assert redis[f"{RELEASE}-glmvoice-redis"] != base[f"{RELEASE}-glmvoice-redis"]


def peer_names(peer: dict, docs: list[dict]) -> set[str]:
    """Who a NetworkPolicyPeer admits, in words a test can compare exactly: a release component (pods of
    this namespace), `namespace:<name>` / `namespaces:<labels>` (optionally `/pods:<labels>`),
    `every-namespace` (an empty namespaceSelector: the peer is widened to the whole cluster) or `ip:<cidr>`."""
    if "ipBlock" in peer:
        return {"ip:" + peer["ipBlock"]["cidr"]}
    pods = peer.get("podSelector")
    if "namespaceSelector" not in peer:
        labels = pods.get("matchLabels", {})
        assert set(pods) <= {"matchLabels"}, f"unexpected selector {pods}"
        found = {pod_labels(w)["app.kubernetes.io/component"] for w in workloads(docs) if matches(labels, pod_labels(w))}
        return found or {f"no-pod:{labels}"}
    ns = {k: v for k, v in (peer["namespaceSelector"] or {}).items() if v}  # null or empty terms select all
    if not ns:
        where = "every-namespace"
    elif set(ns) == {"matchLabels"} and set(ns["matchLabels"]) == {"kubernetes.io/metadata.name"}:
        where = "namespace:" + ns["matchLabels"]["kubernetes.io/metadata.name"]
    else:
        where = f"namespaces:{ns}"
    return {where + (f"/pods:{pods}" if pods else "")}


def ingress_sources(docs: list[dict], policy: str, port: str) -> set[str]:
    """Everything that may reach `port` of the policy's pods; `any` when a rule has no `from`."""
    found: set[str] = set()
    for rule in by_kind(docs, "NetworkPolicy")[f"{RELEASE}-glmvoice-{policy}"]["spec"].get("ingress", []):
        if port not in {p["port"] for p in rule.get("ports", [])} and rule.get("ports"):
            continue
        if "from" not in rule:
            found.add("any")
        for peer in rule.get("from", []):
            found |= peer_names(peer, docs)
    return found


MONITORING = "namespace:monitoring"


def test_network_policies_allow_only_the_design_paths(helm):
    docs = render(helm, "gpu-values.yaml")
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies[f"{RELEASE}-glmvoice-default-deny"]
    assert "ingress" not in deny["spec"] and deny["spec"]["policyTypes"] == ["Ingress"]
    assert all(matches(deny["spec"]["podSelector"]["matchLabels"], pod_labels(w)) for w in workloads(docs))
    # Every serving component has its own policy, selecting exactly its pods, for ingress only.
    for component in ("redis", "triton", "orchestrator", "gateway"):
        policy = policies[f"{RELEASE}-glmvoice-{component}"]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        selected = {pod_labels(w)["app.kubernetes.io/component"] for w in workloads(docs)
                    if matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels(w))}
        assert selected == {component}, (component, selected)

    assert ingress_sources(docs, "redis", "redis") == {"orchestrator", "promoter"}
    assert ingress_sources(docs, "triton", "grpc") == {"orchestrator", "promoter"}
    assert ingress_sources(docs, "triton", "http") == set()
    assert ingress_sources(docs, "triton", "metrics") == {MONITORING}
    # Front doors: open to any source by default (clients are outside the cluster), metrics to Prometheus.
    assert ingress_sources(docs, "orchestrator", "grpc") == {"any"}
    assert ingress_sources(docs, "orchestrator", "metrics") == {MONITORING}
    assert ingress_sources(docs, "gateway", "http") == {"any"}


def test_network_policies_narrowed_front_doors(helm):
    """With orchestratorFrom / gatewayFrom set, only the gateway and those peers reach the orchestrator,
    and only those peers (and Prometheus, whose scrape shares the port) reach the gateway."""
    label = "networkPolicy.{}[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name={}"
    docs = render(helm, "gpu-values.yaml", label.format("orchestratorFrom", "voice-clients"),
                  label.format("gatewayFrom", "ingress-nginx"))
    assert ingress_sources(docs, "orchestrator", "grpc") == {"gateway", "namespace:voice-clients"}
    assert ingress_sources(docs, "orchestrator", "metrics") == {MONITORING}
    assert ingress_sources(docs, "gateway", "http") == {"namespace:ingress-nginx", MONITORING}


def test_a_peer_widened_to_every_namespace_is_seen(helm):
    """The helper must tell `monitoring` from every namespace, or a widened peer would pass the tests above."""
    docs = render(helm, "gpu-values.yaml", "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels=null")
    assert "every-namespace" in ingress_sources(docs, "triton", "metrics")


def test_jobs_run_the_contract_commands(helm):
    jobs = {pod_labels(j)["glmvoice.io/job"]: pod_spec(j) for j in by_kind(render(helm, "gpu-values.yaml"), "Job").values()}
    assert set(jobs) == {"train", "evaluate", "promote", "rollback"}
    train = jobs["train"]["containers"][0]["command"]
    assert train[:3] == ["python", "-m", "training.jobs.train"]
    assert train[train.index("--out") + 1] == "/store/llm/gpu-run-1"
    assert train[train.index("--preset") + 1] == "glm-4-voice"
    assert jobs["promote"]["containers"][0]["command"] == ["glmvoice", "promote", "llm", "--candidate", "gpu-run-1"]
    assert jobs["rollback"]["containers"][0]["command"] == ["glmvoice", "rollback", "llm"]
    for name, spec in jobs.items():
        assert spec["restartPolicy"] == "Never"
        mounts = {m["mountPath"]: m["readOnly"] for m in spec["containers"][0]["volumeMounts"] if m["name"] != "tmp"}
        expected = {"train": {"/store": False}, "evaluate": {"/store": False},
                    "promote": {"/store": True, "/models": False}, "rollback": {"/models": False}}[name]
        assert mounts == expected, name
    env = {e["name"]: e.get("value") for e in jobs["promote"]["containers"][0]["env"]}
    assert env["REDIS_ADDR"] == f"{RELEASE}-glmvoice-redis:6379"
    assert "glmvoice.io/model=llm" in env["TRITON_LABEL_SELECTOR"].split(",")


def test_service_monitors_scrape_named_ports(helm):
    docs = render(helm, "gpu-values.yaml")
    monitors = by_kind(docs, "ServiceMonitor")
    assert len(monitors) == 3
    for monitor in monitors.values():
        selected = [s for s in by_kind(docs, "Service").values()
                    if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert selected, monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["endpoints"]:
            for svc in selected:
                assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}


def test_notes_render(helm):
    proc = run_helm(helm, "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE)
    assert "glmvoice_active_streams" in proc.stdout and "port-forward" in proc.stdout


def test_image_user_matches_the_pod_security_context(helm):
    dockerfile = (ROOT / "charts" / "image" / "Dockerfile").read_text()
    user = next(line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER "))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    assert user == f"{uid}:{values['podSecurityContext']['runAsGroup']}"
    # Every module the chart runs has a role in the image's entry point.
    entrypoint = (ROOT / "charts" / "image" / "entrypoint.sh").read_text()
    modules = {c["command"][2] for _, c in containers(render(helm, "gpu-values.yaml")) if c["command"][0] == "python"}
    assert modules == {"services.triton", "services.orchestrator", "services.gateway",
                       "training.jobs.train", "training.jobs.evaluate"}
    for module in modules:
        assert f"exec python -m {module} " in entrypoint, module


def test_every_value_is_documented():
    """Each leaf key in values.yaml has a `# --` comment right above it; a block under such a comment
    (a Kubernetes structure passed through) counts as one documented value."""
    undocumented, skip_below, comment = [], None, None
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment = comment or stripped  # the first line of a comment block carries the marker
            continue
        if not stripped:
            comment = None
            continue
        indent = len(line) - len(line.lstrip())
        documented = bool(comment and comment.startswith("# --"))
        comment = None
        if skip_below is not None and indent > skip_below:
            continue
        skip_below = None
        key = re.match(r"\s*([A-Za-z_][\w.-]*):(.*)$", line)
        if not key:
            continue
        if key.group(2).strip():
            if not documented:
                undocumented.append(stripped)
        elif documented:
            skip_below = indent
    assert not undocumented, undocumented
