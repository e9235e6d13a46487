"""Promotion and rollback of one model: registry, artifacts, repository version, rollout.

Where things live (Kubernetes: the store and the model-repository volumes; locally: any directories):
  <store>/<model>/<id>/                   a training run's checkpoint (provenance.json; eval/metrics.json
                                          or metrics.json with the gate's verdict)
  <serving_checkpoints>/<model>/<id>/     the copy Triton reads: Triton pods mount only the repository volume
  <repository>/<model>/<version>/         a version referencing that copy (services.triton.repository)
Versions only go up: a rollback serves the previous checkpoint as a new version, so that a restarted
replica, which loads the newest version, always comes back with what the others serve.
After a rollout has succeeded, older version directories (no replica serves them) and the copies of
checkpoints that are neither live nor the rollback target are deleted: each copy of the real LM is ~19 GB.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.promoter.registry import Checkpoint, Event, Registry, RegistryError, now_iso
from services.promoter.replicas import Replica
from services.promoter.rollout import RolloutError, RolloutPlan, rollout
from services.tls import TRITON_ENVIRONMENT, TlsFiles, parse_bool
from services.triton.repository import MODELS, add_version


@dataclass(frozen=True)
class PromoterSettings:
    redis_addr: str
    model_repository: Path
    store: Path
    serving_checkpoints: Path
    triton_addrs: tuple[str, ...] = ()  # static gRPC addresses; empty means Kubernetes pods
    namespace: str = ""
    label_selector: str = ""
    grpc_port: int = 8001
    device: str = "auto"
    canary_timeout_s: float = 120.0
    load_timeout_s: float = 900.0
    lock_timeout_s: float = 3600.0
    # TRITON_TLS: dial the replicas over TLS with the pod's files (TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE),
    # checking their certificate for TRITON_TLS_SERVER_NAME (pods are dialled by IP).
    triton_tls: TlsFiles | None = None
    triton_tls_server_name: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> PromoterSettings:
        """REDIS_ADDR, GLMVOICE_MODEL_REPOSITORY, GLMVOICE_STORE, GLMVOICE_SERVING_CHECKPOINTS, TRITON_ADDRS
        (comma-separated host:grpc_port) or POD_NAMESPACE + TRITON_LABEL_SELECTOR + TRITON_GRPC_PORT; TRITON_TLS
        and TRITON_TLS_SERVER_NAME with the TLS_* files."""
        env = dict(os.environ if env is None else env)
        values = {
            "redis_addr": env.get("REDIS_ADDR", ""),
            "model_repository": env.get("GLMVOICE_MODEL_REPOSITORY", ""),
            "store": env.get("GLMVOICE_STORE", ""),
            "serving_checkpoints": env.get("GLMVOICE_SERVING_CHECKPOINTS", ""),
            "triton_addrs": tuple(a for a in env.get("TRITON_ADDRS", "").split(",") if a),
            "namespace": env.get("POD_NAMESPACE", ""),
            "label_selector": env.get("TRITON_LABEL_SELECTOR", ""),
            "grpc_port": int(env.get("TRITON_GRPC_PORT", "8001")),
            "device": env.get("GLMVOICE_DEVICE", "auto"),
        }
        if parse_bool(env.get(TRITON_ENVIRONMENT["triton_tls"]) or "false"):
            values["triton_tls"] = TlsFiles.from_environ(env).check()
            values["triton_tls_server_name"] = env.get(TRITON_ENVIRONMENT["triton_tls_server_name"], "")
        values.update({k: v for k, v in overrides.items() if v not in (None, "", ())})
        for key, name in (("redis_addr", "REDIS_ADDR"), ("model_repository", "GLMVOICE_MODEL_REPOSITORY"),
                          ("store", "GLMVOICE_STORE")):
            if not values[key]:
                raise ValueError(f"{name} is not set (or pass --{key.replace('_', '-')})")
        if not values["triton_addrs"] and not (values["namespace"] and values["label_selector"]):
            raise ValueError("no Triton replicas: set TRITON_ADDRS, or POD_NAMESPACE and TRITON_LABEL_SELECTOR")
        repository = Path(values["model_repository"])
        # Beside the repository on the same volume, so Triton pods see it at the same path.
        values["serving_checkpoints"] = Path(values["serving_checkpoints"] or repository.parent / "checkpoints")
        return cls(**{**values, "model_repository": repository, "store": Path(values["store"])})


def redis_client(addr: str, environ: dict[str, str] | None = None):
    """The registry's Redis, connected as the orchestrator connects (services.tls.redis_options): REDIS_PASSWORD
    (the chart's Secret) when Redis requires AUTH; REDIS_TLS, REDIS_CA_FILE and the pod's TLS_CERT_FILE /
    TLS_KEY_FILE when it serves TLS."""
    import redis

    from services.tls import redis_options_from_environ

    host, _, port = addr.rpartition(":")
    options = redis_options_from_environ(dict(os.environ if environ is None else environ))
    return redis.Redis(host=host or "localhost", port=int(port or 6379), socket_timeout=10, **options)


def discover_replicas(settings: PromoterSettings, core_api=None) -> list[Replica]:
    from services.promoter.replicas import pod_replicas, static_replicas

    tls = (settings.triton_tls, settings.triton_tls_server_name)
    if settings.triton_addrs:
        return static_replicas(list(settings.triton_addrs), *tls)
    if core_api is None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        core_api = client.CoreV1Api()
    return pod_replicas(core_api, settings.namespace, settings.label_selector, settings.grpc_port, *tls)


def read_evaluation(checkpoint: Path) -> dict:
    """The evaluation Job writes <checkpoint>/eval/metrics.json; a trainer may leave one beside the weights."""
    from glmvoice.provenance import METRICS_NAME, read_metrics

    evaluated = checkpoint / "eval"
    return read_metrics(evaluated if (evaluated / METRICS_NAME).exists() else checkpoint)


def copy_checkpoint(source: Path, target: Path) -> Path:
    """Copies a checkpoint directory once (staging then rename: readers never see half a copy)."""
    if target.is_dir():
        return target
    staging = target.parent / f".staging-{target.name}"
    shutil.rmtree(staging, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, staging)
    staging.rename(target)
    return target


def point_current(serving: Path) -> Path:
    """Makes `<serving_checkpoints>/<model>/current` name the checkpoint now served, atomically (a new
    link renamed over the old): the orchestrator reads the LM's text tokenizer through it."""
    current = serving.parent / "current"
    staging = serving.parent / ".current-staging"
    staging.unlink(missing_ok=True)
    staging.symlink_to(serving.name)
    staging.rename(current)
    return current


@dataclass
class Promoter:
    settings: PromoterSettings
    registry: Registry
    replicas: list[Replica]
    who: str
    log: Callable[[str], None] = field(default=lambda message: print(message, file=sys.stderr, flush=True))

    def _model(self, model: str) -> str:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
        return model

    def ingest(self, model: str, checkpoint_id: str, why: str) -> Checkpoint:
        """Registers <store>/<model>/<id> as a candidate and records its evaluation, if not done yet."""
        from glmvoice.provenance import read_provenance, valid_run_id

        path = self.settings.store / model / valid_run_id(checkpoint_id)
        if not self.registry.exists(model, checkpoint_id):
            if not path.is_dir():
                raise FileNotFoundError(f"checkpoint {path} does not exist")
            provenance = read_provenance(path)
            if provenance.network != model:
                raise ValueError(f"{path} is a {provenance.network} checkpoint, not {model}")
            self.registry.register(model, checkpoint_id, str(path), asdict(provenance), self.who, why)
        checkpoint = self.registry.get(model, checkpoint_id)
        if checkpoint.state == "candidate":
            evaluation = read_evaluation(Path(checkpoint.path))
            checkpoint = self.registry.record_evaluation(model, checkpoint_id, evaluation, self.who, why)
        return checkpoint

    def _roll(self, model: str, checkpoint_id: str, serving: Path, old: int | None) -> tuple[int, list[dict]]:
        """Adds a version serving `serving` and moves every replica to it; returns (version, reports)."""
        repository = self.settings.model_repository
        new = add_version(repository, model, serving, device=self.settings.device)
        plan = RolloutPlan(model=model, old=old, new=new, checkpoint=serving,
                           withdraw=lambda: shutil.rmtree(repository / model / str(new), ignore_errors=True),
                           canary_timeout_s=self.settings.canary_timeout_s, load_timeout_s=self.settings.load_timeout_s)
        try:
            return new, rollout(self.replicas, plan, self.log)
        except RolloutError as exc:
            state = self.registry.get(model, checkpoint_id).state
            self._note(model, checkpoint_id, state, f"rollout of v{new} failed: {exc}")
            raise

    def promote(self, model: str, checkpoint_id: str, why: str) -> dict:
        model = self._model(model)
        with self.registry.lock(model, self.settings.lock_timeout_s):
            checkpoint = self.ingest(model, checkpoint_id, why)
            self.registry.check_promotable(model, checkpoint_id)
            live = self.registry.live(model)
            serving = copy_checkpoint(Path(checkpoint.path), self.settings.serving_checkpoints / model / checkpoint_id)
            new, replicas = self._roll(model, checkpoint_id, serving, live.version if live else None)
            self.registry.mark_promoted(model, checkpoint_id, new, self.who, why)
            point_current(serving)
            self._prune(model, new)
        return {"model": model, "checkpoint": checkpoint_id, "version": new,
                "previous_version": live.version if live else None,
                "previous_checkpoint": live.checkpoint if live else None, "replicas": replicas}

    def rollback(self, model: str, why: str) -> dict:
        model = self._model(model)
        with self.registry.lock(model, self.settings.lock_timeout_s):
            lineage = self.registry.serving(model)
            if len(lineage) < 2:
                raise RegistryError(f"{model}: nothing to roll back to (lineage {[s.checkpoint for s in lineage]})")
            current, previous = lineage[-1], lineage[-2]
            # The copy is normally still there (pruning keeps the rollback target); if not, copy it again.
            serving = copy_checkpoint(Path(self.registry.get(model, previous.checkpoint).path),
                                      self.settings.serving_checkpoints / model / previous.checkpoint)
            new, replicas = self._roll(model, previous.checkpoint, serving, current.version)
            self.registry.mark_rolled_back(model, new, self.who, why)
            point_current(serving)
            self._prune(model, new)
        return {"model": model, "checkpoint": previous.checkpoint, "version": new,
                "rolled_back_checkpoint": current.checkpoint, "rolled_back_version": current.version,
                "replicas": replicas}

    def _prune(self, model: str, live_version: int) -> None:
        """Deletes what the finished rollout left unused: versions below the live one (every replica has
        unloaded them) and served copies other than the live checkpoint and the rollback target."""
        for version in (self.settings.model_repository / model).iterdir():
            if version.name.isdigit() and int(version.name) < live_version:
                shutil.rmtree(version, ignore_errors=True)
        keep = {entry.checkpoint for entry in self.registry.serving(model)[-2:]}
        for copy in (self.settings.serving_checkpoints / model).iterdir():
            if copy.is_dir() and not copy.is_symlink() and not copy.name.startswith(".") and copy.name not in keep:
                shutil.rmtree(copy, ignore_errors=True)
        self.log(f"{model}: kept version {live_version} and the copies of {sorted(keep)}")

    def _note(self, model: str, checkpoint_id: str, state: str, why: str) -> None:
        self.registry.note(model, Event(checkpoint_id, state, state, self.who, why, now_iso()))
