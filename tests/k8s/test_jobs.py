"""`glmvoice jobs submit` and the promoter's pod discovery against a real kube-apiserver.

Nothing runs Pods here (no kubelet, no controllers): a thread plays the kubelet and the Job controller,
setting each Job's status through the status subresource (or deleting it, or ignoring it).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml
from kubernetes import client, config

from glmvoice.cli import main as cli
from services.promoter.replicas import pod_replicas
from tests.k8s.test_chart import RELEASE, helm, template  # noqa: F401  (helm is a fixture)
from training.jobs.submit import JobRunner, JobSettings, build_job, chain_from, job_name

pytestmark = pytest.mark.integration
IMAGE = "registry.example/glmvoice:0.1.0"


@pytest.fixture(scope="module")
def api_client(kube_api):
    return config.new_client_from_config(config_file=str(kube_api.kubeconfig))


@pytest.fixture
def namespace(api_client, request):
    name = "jobs-" + request.node.name.removeprefix("test_").replace("_", "-")[:40].rstrip("-")
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": name}})
    # No controller manager: the namespace's default service account must be made by hand.
    core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
    return name


def settings(namespace: str, **kw) -> JobSettings:
    return JobSettings(namespace=namespace, image=IMAGE, release=RELEASE, **kw)


class FakeKubelet(threading.Thread):
    """Finishes every Job of the namespace as `verdicts[kind]` says: complete, fail, delete, or None (hang)."""

    def __init__(self, api_client, namespace: str, verdicts: dict[str, str | None], delay_s: float = 0.3):
        super().__init__(daemon=True)
        self.batch = client.BatchV1Api(api_client)
        self.namespace, self.verdicts, self.delay_s = namespace, verdicts, delay_s
        self.seen: list[str] = []  # Job names in the order they appeared
        self.commands: dict[str, list[str]] = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            for job in self.batch.list_namespaced_job(self.namespace).items:
                if job.metadata.name not in self.seen:
                    self.seen.append(job.metadata.name)
                    self.commands[job.metadata.name] = job.spec.template.spec.containers[0].command
                    threading.Timer(self.delay_s, self.finish, (job,)).start()
            time.sleep(0.05)

    def finish(self, job):
        verdict = self.verdicts.get(job.metadata.labels["glmvoice.io/job"])
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if verdict == "delete":
            self.batch.delete_namespaced_job(job.metadata.name, self.namespace)
        elif verdict in ("complete", "fail"):
            condition = {"type": "Complete", "status": "True", "lastProbeTime": now, "lastTransitionTime": now}
            counts = {"succeeded": 1, "completionTime": now}
            if verdict == "fail":
                condition.update(type="Failed", reason="BackoffLimitExceeded", message="Job has reached the specified backoff limit")
                counts = {"failed": 2}
            self.batch.patch_namespaced_job_status(job.metadata.name, self.namespace,
                                                   {"status": {"conditions": [condition], "startTime": now, **counts}})


def run_with_kubelet(api_client, namespace, verdicts, kinds, timeout_s=20.0, **kw):
    kubelet = FakeKubelet(api_client, namespace, verdicts)
    kubelet.start()
    try:
        runner = JobRunner(client.BatchV1Api(api_client), settings(namespace, **kw))
        outcomes = runner.chain(kinds, "llm", "r42", timeout_s, preset="tiny")
    finally:
        kubelet.stop.set()
        kubelet.join(5)
    return outcomes, kubelet


def quantities(resources: dict) -> dict:
    # YAML renders `nvidia.com/gpu: 1` as a number; the API client sends quantities as strings.
    return {part: {name: str(value) for name, value in values.items()} for part, values in resources.items()}


@pytest.mark.parametrize("tls,redis_tls", [(False, False), (True, False), (True, True)])
def test_jobs_match_the_charts_job_templates(helm, tls, redis_tls):
    """With tls.enabled the promote Job also mounts the gRPC TLS Secret and dials Triton over TLS; with
    redis.tls.enabled (--redis-tls) Redis too."""
    values = {"train": ["jobs.train.runId=r42", "jobs.train.gpu=1"], "evaluate": ["jobs.evaluate.candidate=r42"],
              "promote": ["jobs.promote.candidate=r42"]}
    ours_settings = settings("voice", tls_secret="internal-tls" if tls else "", redis_tls=redis_tls).with_resources(
        "train", gpu=1)
    tls_sets = (["tls.enabled=true", "tls.secretName=internal-tls"] if tls else []) + (
        ["redis.tls.enabled=true"] if redis_tls else [])
    for kind, sets in values.items():
        docs = yaml.safe_load_all(template(helm, None, f"jobs.{kind}.enabled=true", "image.repository=registry.example/glmvoice",
                                           "image.tag=0.1.0", *sets, *tls_sets, namespace="voice"))
        [rendered] = [d for d in docs if d and d["kind"] == "Job"]
        ours = build_job(ours_settings, kind, "llm", "r42")
        assert ("TRITON_TLS" in {e["name"] for e in ours["spec"]["template"]["spec"]["containers"][0]["env"]}) is (
            tls and kind == "promote")
        assert ("REDIS_TLS" in {e["name"] for e in ours["spec"]["template"]["spec"]["containers"][0]["env"]}) is (
            redis_tls and kind == "promote")
        assert ours["metadata"]["name"] == rendered["metadata"]["name"]
        theirs_pod, ours_pod = rendered["spec"]["template"]["spec"], ours["spec"]["template"]["spec"]
        for key in ("serviceAccountName", "automountServiceAccountToken", "securityContext", "volumes", "restartPolicy"):
            assert ours_pod[key] == theirs_pod[key], (kind, key)
        theirs_c, ours_c = theirs_pod["containers"][0], ours_pod["containers"][0]
        for key in ("command", "image", "volumeMounts", "securityContext", "envFrom"):
            assert ours_c[key] == theirs_c[key], (kind, key)
        assert quantities(ours_c["resources"]) == quantities(theirs_c["resources"]), kind
        theirs_env = {e["name"]: e for e in theirs_c["env"]}
        assert all(ours_env == theirs_env[ours_env["name"]] for ours_env in ours_c["env"] if ours_env["name"] in theirs_env)
        assert set(theirs_env) - {e["name"] for e in ours_c["env"]} == set(), kind
        assert ours["spec"]["backoffLimit"] == rendered["spec"]["backoffLimit"]
        assert ours["spec"].get("activeDeadlineSeconds") == rendered["spec"].get("activeDeadlineSeconds")


def test_a_chain_runs_train_then_evaluate_then_promote(api_client, namespace):
    outcomes, kubelet = run_with_kubelet(api_client, namespace, dict.fromkeys(("train", "evaluate", "promote"), "complete"),
                                         chain_from("train"))
    assert [(o.kind, o.status) for o in outcomes] == [("train", "succeeded"), ("evaluate", "succeeded"), ("promote", "succeeded")]
    s = settings(namespace)
    assert kubelet.seen == [job_name(s, k, "llm", "r42") for k in ("train", "evaluate", "promote")]
    train, evaluate, promote = (kubelet.commands[n] for n in kubelet.seen)
    out = train[train.index("--out") + 1]
    assert out == "/store/llm/r42" and evaluate[evaluate.index("--checkpoint") + 1] == out
    assert promote == ["glmvoice", "promote", "llm", "--candidate", "r42"]
    stored = client.BatchV1Api(api_client).read_namespaced_job(kubelet.seen[2], namespace)
    env = {e.name: e for e in stored.spec.template.spec.containers[0].env}
    assert env["POD_NAMESPACE"].value_from.field_ref.field_path == "metadata.namespace"
    assert "glmvoice.io/model=llm" in env["TRITON_LABEL_SELECTOR"].value


def test_a_failed_job_stops_the_chain_and_says_why(api_client, namespace):
    outcomes, kubelet = run_with_kubelet(api_client, namespace, {"train": "complete", "evaluate": "fail"}, chain_from("train"))
    assert [(o.kind, o.status, o.reason) for o in outcomes] == [("train", "succeeded", ""), ("evaluate", "failed", "BackoffLimitExceeded")]
    assert "backoff limit" in outcomes[1].message
    assert len(kubelet.seen) == 2  # promote was never submitted


def test_a_deleted_job_is_reported(api_client, namespace):
    outcomes, _ = run_with_kubelet(api_client, namespace, {"train": "delete"}, ["train"])
    assert [(o.kind, o.status) for o in outcomes] == [("train", "deleted")]


def test_a_job_past_its_deadline_is_deleted_and_reported(api_client, namespace):
    outcomes, kubelet = run_with_kubelet(api_client, namespace, {"train": None}, ["train"], timeout_s=2.0)
    assert [(o.kind, o.status) for o in outcomes] == [("train", "timeout")]
    # It waited its deadline; the upper bound only has to catch a deadline that is ignored (a watch runs up to
    # 60 s per round), so it is wide: API latency on a slow or loaded machine must not fail it.
    assert 2.0 <= outcomes[0].seconds < 30, f"timed out after {outcomes[0].seconds} s"
    job = client.BatchV1Api(api_client).list_namespaced_job(namespace).items
    assert job == [] or job[0].metadata.deletion_timestamp is not None


def test_cli_submits_with_gpus_and_exits_nonzero_on_failure(api_client, namespace, kube_api, capsys):
    kubelet = FakeKubelet(api_client, namespace, {"train": "fail"})
    kubelet.start()
    try:
        code = cli(["jobs", "submit", "train", "--model", "llm", "--run-id", "r7", "--chain", "--gpu", "2",
                    "--image", IMAGE, "--release", RELEASE, "--namespace", namespace, "--kubeconfig", str(kube_api.kubeconfig),
                    "--timeout", "20"])
    finally:
        kubelet.stop.set()
        kubelet.join(5)
    captured = capsys.readouterr()
    assert code == 1, captured.err
    report = json.loads(captured.out)
    assert not report["ok"]
    assert [(j["kind"], j["status"]) for j in report["jobs"]] == [("train", "failed")]
    assert report["not_run"] == ["evaluate", "promote"]
    stored = client.BatchV1Api(api_client).read_namespaced_job(kubelet.seen[0], namespace)
    resources = stored.spec.template.spec.containers[0].resources
    assert resources.limits["nvidia.com/gpu"] == "2" and resources.requests["nvidia.com/gpu"] == "2"
    assert stored.spec.template.spec.volumes[1].persistent_volume_claim.claim_name == f"{RELEASE}-glmvoice-store"


def test_promoter_finds_the_running_triton_pods_of_its_model(api_client, namespace):
    core = client.CoreV1Api(api_client)
    selector = {"app.kubernetes.io/component": "triton", "app.kubernetes.io/instance": RELEASE, "glmvoice.io/model": "llm"}
    pods = {"triton-llm-b": (selector, "10.0.0.2", "Running"), "triton-llm-a": (selector, "10.0.0.1", "Running"),
            "triton-llm-c": (selector, "10.0.0.3", "Pending"),
            "triton-decoder": ({**selector, "glmvoice.io/model": "speech_decoder"}, "10.0.0.4", "Running")}
    for name, (labels, ip, phase) in pods.items():
        core.create_namespaced_pod(namespace, {"metadata": {"name": name, "labels": labels}, "spec": {
            "automountServiceAccountToken": False, "containers": [{"name": "triton", "image": IMAGE}]}})
        core.patch_namespaced_pod_status(name, namespace, {"status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}})
    found = pod_replicas(core, namespace, ",".join(f"{k}={v}" for k, v in selector.items()), 8001)
    assert [(r.name, r.url) for r in found] == [("triton-llm-a", "10.0.0.1:8001"), ("triton-llm-b", "10.0.0.2:8001")]
