"""Training, evaluation and promotion as Kubernetes batch/v1 Jobs: build, submit, watch, chain.

The Jobs are the ones the Helm chart renders (charts/glmvoice/templates/jobs/): same names, commands,
volumes, identities and security contexts, so a Job submitted here and one rendered by `helm template`
behave alike. A chain runs train → evaluate → promote and stops at the first Job that does not succeed:
failed (the Job's own condition, with its reason), deleted (someone removed it), or timeout (our
deadline passed; the Job is then deleted so it stops using the cluster).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

KINDS = ("train", "evaluate", "promote")
COMPONENT = {"train": "training", "evaluate": "training", "promote": "promoter"}
STORE_MOUNT = "/store"
MODELS_MOUNT = "/models"
TLS_MOUNT = "/etc/glmvoice/tls"  # the chart's glmvoice.tlsDir


@dataclass(frozen=True)
class JobResources:
    requests: dict = field(default_factory=lambda: {"cpu": "2", "memory": "8Gi"})
    limits: dict = field(default_factory=lambda: {"memory": "16Gi"})
    gpu: int = 0
    active_deadline_s: int = 0  # 0: none
    node_selector: dict = field(default_factory=dict)
    tolerations: list = field(default_factory=list)


PROMOTER_RESOURCES = JobResources(requests={"cpu": "500m", "memory": "1Gi"}, limits={"memory": "4Gi"},
                                  active_deadline_s=3600)


@dataclass(frozen=True)
class JobSettings:
    """What the chart's values say about Jobs; defaults are the chart's defaults."""

    namespace: str
    image: str
    release: str = "glmvoice"  # Helm release name (the app.kubernetes.io/instance label)
    fullname: str = ""  # name prefix; empty: the chart's rule (release, or <release>-glmvoice)
    pull_policy: str = "IfNotPresent"
    gpu_resource_name: str = "nvidia.com/gpu"
    backoff_limit: int = 1
    ttl_after_finished_s: int = 86400
    tmp_size: str = "1Gi"
    redis_addr: str = ""  # for the promote Job; empty: the bundled Redis Service <fullname>-redis:6379
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    # The chart's gRPC TLS Secret when its tls.enabled (tls.secretName, or <fullname>-grpc-tls): the promote Job
    # dials Triton over TLS with it. Empty: plaintext.
    tls_secret: str = ""
    # The chart's redis.tls.enabled: the promote Job dials Redis over TLS, trusting the Secret's ca.crt and
    # presenting its certificate (needs tls_secret).
    redis_tls: bool = False
    resources: dict = field(default_factory=lambda: {"train": JobResources(), "evaluate": JobResources(),
                                                     "promote": PROMOTER_RESOURCES})

    @property
    def prefix(self) -> str:
        if self.fullname:
            return self.fullname
        return self.release if "glmvoice" in self.release else f"{self.release}-glmvoice"[:63].rstrip("-")

    def with_resources(self, kind: str, **changes) -> JobSettings:
        return replace(self, resources={**self.resources, kind: replace(self.resources[kind], **changes)})


def segment(value: str) -> str:
    """A Kubernetes name segment from a model name or an id (as the chart's glmvoice.jobSegment)."""
    return str(value).lower().replace("_", "-").replace(".", "-")


def job_name(settings: JobSettings, kind: str, model: str, run_id: str) -> str:
    return f"{settings.prefix}-{kind}-{segment(model)}-{segment(run_id)}"[:63].rstrip("-")


def checkpoint_dir(model: str, run_id: str) -> str:
    return f"{STORE_MOUNT}/{model}/{run_id}"


def command(kind: str, model: str, run_id: str, preset: str = "tiny", extra_args: tuple[str, ...] = ()) -> list[str]:
    ckpt = checkpoint_dir(model, run_id)
    if kind == "train":
        return ["python", "-m", "training.jobs.train", "--model", model, "--preset", preset, "--out", ckpt, *extra_args]
    if kind == "evaluate":
        return ["python", "-m", "training.jobs.evaluate", "--model", model, "--checkpoint", ckpt,
                "--out", f"{ckpt}/eval", *extra_args]
    if kind == "promote":
        return ["glmvoice", "promote", model, "--candidate", run_id, *extra_args]
    raise ValueError(f"unknown job kind {kind!r}; expected one of {KINDS}")


def _labels(settings: JobSettings, kind: str, model: str, run_id: str) -> dict:
    return {"app.kubernetes.io/name": "glmvoice", "app.kubernetes.io/instance": settings.release,
            "app.kubernetes.io/component": COMPONENT[kind], "app.kubernetes.io/managed-by": "glmvoice-jobs",
            "app.kubernetes.io/part-of": "glmvoice", "glmvoice.io/job": kind, "glmvoice.io/model": model,
            "glmvoice.io/run": segment(run_id)[:63]}


def _env(settings: JobSettings, kind: str, model: str) -> list[dict]:
    env = [{"name": "OTEL_SERVICE_NAME", "value": f"glmvoice-{COMPONENT[kind]}"},
           {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}, {"name": "HOME", "value": "/tmp"}]
    if kind == "promote":
        selector = (f"app.kubernetes.io/component=triton,app.kubernetes.io/instance={settings.release},"
                    f"app.kubernetes.io/name=glmvoice,glmvoice.io/model={model}")
        env += [{"name": "REDIS_ADDR", "value": settings.redis_addr or f"{settings.prefix}-redis:6379"},
                # The chart's generated Redis password (redis.auth), as its promote Job template reads it.
                {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": f"{settings.prefix}-redis-auth",
                                                                          "key": "password"}}},
                {"name": "GLMVOICE_MODEL_REPOSITORY", "value": f"{MODELS_MOUNT}/repository"},
                {"name": "GLMVOICE_STORE", "value": STORE_MOUNT},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "TRITON_LABEL_SELECTOR", "value": selector},
                {"name": "TRITON_HTTP_PORT", "value": str(settings.triton_http_port)},
                {"name": "TRITON_GRPC_PORT", "value": str(settings.triton_grpc_port)}]
        if settings.tls_secret:  # as the chart's glmvoice.tlsEnv with triton: true
            env += [{"name": "TLS_CERT_FILE", "value": f"{TLS_MOUNT}/tls.crt"},
                    {"name": "TLS_KEY_FILE", "value": f"{TLS_MOUNT}/tls.key"},
                    {"name": "TLS_CA_FILE", "value": f"{TLS_MOUNT}/ca.crt"},
                    {"name": "TRITON_TLS", "value": "true"},
                    {"name": "TRITON_TLS_SERVER_NAME", "value": f"{settings.prefix}-triton.{settings.namespace}.svc"}]
        if settings.redis_tls:  # as the chart's glmvoice.redisTlsEnv
            if not settings.tls_secret:
                raise ValueError("Redis TLS (--redis-tls) needs the TLS Secret (--tls-secret): its ca.crt and identity")
            env += [{"name": "REDIS_TLS", "value": "true"}, {"name": "REDIS_CA_FILE", "value": f"{TLS_MOUNT}/ca.crt"}]
    return env


def build_job(settings: JobSettings, kind: str, model: str, run_id: str, preset: str = "tiny",
              extra_args: tuple[str, ...] = ()) -> dict:
    """The batch/v1 Job manifest (a plain dict, as the API takes it)."""
    spec = settings.resources[kind]
    resources = {"requests": dict(spec.requests), "limits": dict(spec.limits)}
    if spec.gpu > 0:  # an extended resource: requests and limits must be equal (quantities are strings)
        resources["requests"][settings.gpu_resource_name] = str(spec.gpu)
        resources["limits"][settings.gpu_resource_name] = str(spec.gpu)
    # Training writes the store; promotion reads it and writes the model repository.
    mounts = {"store": False, "models": True} if kind == "promote" else {"store": True}
    claims = {"store": f"{settings.prefix}-store", "models": f"{settings.prefix}-model-repository"}
    labels = _labels(settings, kind, model, run_id)
    pod_spec = {
        "restartPolicy": "Never",
        "serviceAccountName": f"{settings.prefix}-promoter" if kind == "promote" else f"{settings.prefix}-workload",
        # Only the promoter talks to the Kubernetes API (to find the Triton pods).
        "automountServiceAccountToken": kind == "promote",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": kind,
            "image": settings.image,
            "imagePullPolicy": settings.pull_policy,
            "command": command(kind, model, run_id, preset, extra_args),
            "envFrom": [{"configMapRef": {"name": f"{settings.prefix}-common"}}],
            "env": _env(settings, kind, model),
            "resources": resources,
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}] + [
                {"name": name, "mountPath": STORE_MOUNT if name == "store" else MODELS_MOUNT, "readOnly": not writable}
                for name, writable in mounts.items()],
        }],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size}}] + [
            {"name": name, "persistentVolumeClaim": {"claimName": claims[name]}} for name in mounts],
    }
    if kind == "promote" and settings.tls_secret:
        pod_spec["containers"][0]["volumeMounts"].append({"name": "grpc-tls", "mountPath": TLS_MOUNT, "readOnly": True})
        pod_spec["volumes"].append({"name": "grpc-tls", "secret": {"secretName": settings.tls_secret, "defaultMode": 0o440}})
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = list(spec.tolerations)
    job_spec = {"backoffLimit": settings.backoff_limit, "ttlSecondsAfterFinished": settings.ttl_after_finished_s,
                "template": {"metadata": {"labels": labels}, "spec": pod_spec}}
    if spec.active_deadline_s:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_s
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": job_name(settings, kind, model, run_id), "namespace": settings.namespace,
                         "labels": labels},
            "spec": job_spec}


@dataclass(frozen=True)
class JobOutcome:
    kind: str
    name: str
    status: str  # succeeded | failed | deleted | timeout
    reason: str = ""
    message: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


def _finished(job) -> tuple[str, str, str] | None:
    if job.metadata.deletion_timestamp:  # being deleted: finalizers (orphan, foreground) may keep it a while
        return "deleted", "Deleted", f"Job {job.metadata.name} was deleted while running"
    for condition in (job.status.conditions or []) if job.status else []:
        if condition.status != "True":
            continue
        if condition.type == "Complete":
            return "succeeded", condition.reason or "", condition.message or ""
        if condition.type == "Failed":
            return "failed", condition.reason or "", condition.message or ""
    return None


class JobRunner:
    """Submits Jobs with a kubernetes.client.BatchV1Api and follows them with watches."""

    def __init__(self, batch_api, settings: JobSettings, log=lambda message: None):
        self.batch = batch_api
        self.settings = settings
        self.log = log

    def submit(self, manifest: dict) -> str:
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch.create_namespaced_job(self.settings.namespace, manifest)
        except ApiException as exc:
            if exc.status == 409:
                raise ValueError(f"Job {manifest['metadata']['name']} already exists: use a new run id") from None
            raise
        self.log(f"submitted Job {manifest['metadata']['name']}")
        return manifest["metadata"]["name"]

    def wait(self, kind: str, name: str, timeout_s: float) -> JobOutcome:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        started = time.monotonic()
        deadline = started + timeout_s
        namespace = self.settings.namespace

        def outcome(status, reason="", message=""):
            return JobOutcome(kind, name, status, reason, message, round(time.monotonic() - started, 2))

        while (remaining := deadline - time.monotonic()) > 0:
            # List, then watch from the list's version: nothing between the two is missed, and a watch
            # that expires (or whose version is too old) just starts over.
            jobs = self.batch.list_namespaced_job(namespace, field_selector=f"metadata.name={name}")
            if not jobs.items:
                return outcome("deleted", "NotFound", f"Job {name} no longer exists")
            if done := _finished(jobs.items[0]):
                return outcome(*done)
            stream = watch.Watch()
            try:
                events = stream.stream(self.batch.list_namespaced_job, namespace,
                                       field_selector=f"metadata.name={name}",
                                       resource_version=jobs.metadata.resource_version,
                                       timeout_seconds=max(1, int(min(remaining, 60))))
                for event in events:
                    if event["type"] == "DELETED":
                        return outcome("deleted", "Deleted", f"Job {name} was deleted while running")
                    if done := _finished(event["object"]):
                        return outcome(*done)
                    if time.monotonic() >= deadline:
                        break
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: the version expired; list again
                    raise
            finally:
                stream.stop()
        self._delete(name)
        return outcome("timeout", "DeadlineExceeded", f"not finished after {timeout_s:.0f} s; Job deleted")

    def _delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch.delete_namespaced_job(name, self.settings.namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def run(self, kind: str, model: str, run_id: str, timeout_s: float, preset: str = "tiny",
            extra_args: tuple[str, ...] = ()) -> JobOutcome:
        name = self.submit(build_job(self.settings, kind, model, run_id, preset, extra_args))
        result = self.wait(kind, name, timeout_s)
        self.log(f"Job {name}: {result.status} {result.reason} {result.message}".rstrip())
        return result

    def chain(self, kinds: list[str], model: str, run_id: str, timeout_s: float, preset: str = "tiny",
              extra_args: dict[str, tuple[str, ...]] | None = None) -> list[JobOutcome]:
        """Runs `kinds` in order on the same run id; stops after the first that does not succeed."""
        outcomes = []
        for kind in kinds:
            outcomes.append(self.run(kind, model, run_id, timeout_s, preset, (extra_args or {}).get(kind, ())))
            if not outcomes[-1].ok:
                break
        return outcomes


def chain_from(kind: str) -> list[str]:
    """`train` chains train → evaluate → promote; `evaluate` chains evaluate → promote."""
    return list(KINDS[KINDS.index(kind):])
