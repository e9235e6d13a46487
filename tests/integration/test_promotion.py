"""The checkpoint registry on a real Redis, and promotion / rollback on a real Triton under load."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import redis
import tritonclient.grpc as grpcclient

from glmvoice.cli import main as cli
from glmvoice.models.llm_checkpoint import load_llm
from glmvoice.provenance import new_provenance, write_metrics, write_provenance
from glmvoice.runtime.generate import generate
from glmvoice.sampling import SamplingParams
from services.promoter import registry as registry_module
from services.promoter.canary import CanaryError, run_canary
from services.promoter.registry import ConflictError, GateFailedError, Registry, RegistryError
from services.promoter.replicas import Replica, TritonControl
from services.triton.launcher import TritonServer, TritonSettings
from tests.fixtures.redis import redis_server  # noqa: F401  (fixture; also a conftest plugin)
from tests.fixtures.servers import free_port
from training.random_checkpoints import write_tiny_checkpoint

pytestmark = pytest.mark.integration
PROMPT_TEXT = "one plus two"
NEW_TOKENS = 6
# A hang guard only (the test's own timeout is 900 s): the load runs until told to stop, however fast or
# slow the machine, and the test checks it covered the whole promote / rollback sequence.
LOAD_MAX_SECONDS = 600.0


@pytest.fixture(scope="module")
def redis_addr(redis_server):
    return redis_server.addr


@pytest.fixture
def redis_client(redis_addr):
    host, port = redis_addr.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port))


@pytest.fixture
def registry(redis_client):
    """A registry under a fresh key prefix: the Redis server is shared with other suites."""
    return Registry(redis_client, prefix=f"test-promoter-{uuid.uuid4().hex}")


def test_transitions_are_recorded_with_who_when_and_why(registry, monkeypatch):
    ticks = (f"2026-01-01T00:00:{second:02d}Z" for second in range(60))  # one distinct time per transition
    monkeypatch.setattr(registry_module, "now_iso", lambda: next(ticks))
    registry.register("llm", "a", "/store/llm/a", {"seed": 1}, "alice", "trained")
    registry.record_evaluation("llm", "a", {"gate": True, "metrics": {"loss": 1.0}}, "ci", "eval job")
    registry.mark_promoted("llm", "a", 1, "bob", "first release")
    registry.register("llm", "b", "/store/llm/b", {"seed": 2}, "alice", "trained")
    registry.record_evaluation("llm", "b", {"gate": True, "metrics": {"loss": 0.5}}, "ci", "eval job")
    registry.mark_promoted("llm", "b", 2, "bob", "better loss")
    assert [(c.id, c.state, c.version) for c in registry.checkpoints("llm")] == [("a", "retired", 1), ("b", "promoted", 2)]
    stamped = {c.id: c.updated_at for c in registry.checkpoints("llm")}  # b's promotion retired a in the same step
    assert stamped["a"] == stamped["b"] == registry.history("llm")[-1].when
    restored = registry.mark_rolled_back("llm", 3, "carol", "complaints")
    assert (restored.checkpoint, restored.version) == ("a", 3)
    assert [(c.id, c.state, c.version) for c in registry.checkpoints("llm")] == [("a", "promoted", 3), ("b", "retired", 2)]
    history = registry.history("llm")
    assert [(e.checkpoint, e.from_state, e.to_state, e.who) for e in history] == [
        ("a", "", "candidate", "alice"), ("a", "candidate", "evaluated", "ci"), ("a", "evaluated", "promoted", "bob"),
        ("b", "", "candidate", "alice"), ("b", "candidate", "evaluated", "ci"), ("b", "evaluated", "promoted", "bob"),
        ("a", "promoted", "retired", "bob"), ("b", "promoted", "retired", "carol"), ("a", "retired", "promoted", "carol"),
    ]
    assert all(e.when.endswith("Z") and e.why for e in history)
    # The audit trail names the version each transition served, and why the live one was replaced.
    assert [e.version for e in history] == [None, None, 1, None, None, 2, 1, 2, 3]
    assert [e.why for e in history[-3:]] == ["replaced by b", "rollback: complaints", "rollback: complaints"]
    # Every transition stamps its checkpoints: updated_at is the time of each one's last event.
    assert {c.id: c.updated_at for c in registry.checkpoints("llm")} == {e.checkpoint: e.when for e in history}
    assert [(s.checkpoint, s.version) for s in registry.serving("llm")] == [("a", 3)]


def test_rollbacks_walk_back_a_longer_lineage_and_a_retired_checkpoint_can_return(registry):
    """Three promotions, then two rollbacks: each restores the entry before the live one (not the first or
    second of the lineage), under a new version; then a retired checkpoint is promoted again directly."""
    for cid in ("a", "b", "c"):
        registry.register("llm", cid, f"/store/llm/{cid}", {}, "alice", "trained")
        registry.record_evaluation("llm", cid, {"gate": True}, "ci", "eval")
    for version, cid in enumerate(("a", "b", "c"), start=1):
        registry.mark_promoted("llm", cid, version, "bob", "release")
    states = lambda: {c.id: (c.state, c.version) for c in registry.checkpoints("llm")}  # noqa: E731
    restored = registry.mark_rolled_back("llm", 4, "carol", "regression")
    assert (restored.checkpoint, restored.version) == ("b", 4)
    assert [(s.checkpoint, s.version) for s in registry.serving("llm")] == [("a", 1), ("b", 4)]
    assert states() == {"a": ("retired", 1), "b": ("promoted", 4), "c": ("retired", 3)}
    restored = registry.mark_rolled_back("llm", 5, "carol", "still bad")
    assert (restored.checkpoint, restored.version) == ("a", 5)
    assert states() == {"a": ("promoted", 5), "b": ("retired", 4), "c": ("retired", 3)}
    registry.mark_promoted("llm", "c", 6, "bob", "fixed upstream")  # retired -> promoted again
    assert [(s.checkpoint, s.version) for s in registry.serving("llm")] == [("a", 5), ("c", 6)]
    assert states() == {"a": ("retired", 5), "b": ("retired", 4), "c": ("promoted", 6)}


def test_refused_transitions_change_nothing(registry):
    registry.register("llm", "a", "/store/llm/a", {}, "alice", "trained")
    with pytest.raises(RegistryError, match="already registered"):
        registry.register("llm", "a", "/elsewhere", {}, "mallory", "again")
    with pytest.raises(RegistryError, match="is candidate"):
        registry.mark_promoted("llm", "a", 1, "bob", "skipping evaluation")
    registry.record_evaluation("llm", "a", {"gate": False, "failed": ["loss too high"]}, "ci", "eval job")
    with pytest.raises(GateFailedError, match="failed its evaluation gate"):
        registry.check_promotable("llm", "a")
    with pytest.raises(GateFailedError):
        registry.mark_promoted("llm", "a", 1, "bob", "forcing it")
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.mark_rolled_back("llm", 2, "bob", "no lineage")
    assert registry.get("llm", "a").state == "evaluated" and registry.get("llm", "a").path == "/store/llm/a"
    assert registry.serving("llm") == []
    assert len(registry.history("llm")) == 2


class InterleavedRegistry(Registry):
    """The public Registry, with every read of the live version held at a barrier until all racers have
    read it: the racers then write on the same stale view, which only the compare-and-swap can refuse."""

    def __init__(self, client, prefix, racers: int):
        super().__init__(client, prefix)
        self.barrier = threading.Barrier(racers)

    def live(self, model):
        seen = super().live(model)
        self.barrier.wait(timeout=10)
        return seen


def race(calls: list) -> list[str]:
    def attempt(call):
        try:
            call()
            return "won"
        except ConflictError:
            return "conflict"

    with ThreadPoolExecutor(len(calls)) as pool:
        return sorted(pool.map(attempt, calls))


@pytest.mark.parametrize("first", [True, False], ids=["first-promotion", "replacing-the-live-one"])
def test_racing_promotions_have_exactly_one_winner(registry, redis_client, first):
    """Two promoters promote different checkpoints at once through the public API; exactly one wins and
    the other gets ConflictError. Racing for the FIRST promotion has no live checkpoint to retire, so no
    state check can stop the loser: only the serving-stack compare-and-swap does."""
    for cid in ("a", "b", "c"):
        registry.register("llm", cid, f"/store/llm/{cid}", {}, "alice", "trained")
        registry.record_evaluation("llm", cid, {"gate": True}, "ci", "eval")
    if not first:
        registry.mark_promoted("llm", "a", 1, "bob", "first")
    racing = InterleavedRegistry(redis_client, registry.prefix, racers=2)
    results = race([lambda: racing.mark_promoted("llm", "b", 2, "bob", "race"),
                            lambda: racing.mark_promoted("llm", "c", 3, "carol", "race")])
    assert results == ["conflict", "won"]
    lineage = registry.serving("llm")
    assert len(lineage) == (1 if first else 2)
    winner = lineage[-1].checkpoint
    states = {c.id: c.state for c in registry.checkpoints("llm")}
    assert states[winner] == "promoted" and states[({"b", "c"} - {winner}).pop()] == "evaluated"
    assert [c for c, s in states.items() if s == "promoted"] == [winner]


def test_one_promotion_per_model_at_a_time(registry):
    with registry.lock("llm", timeout_s=30):
        with pytest.raises(ConflictError, match="another promotion"):
            with registry.lock("llm", timeout_s=30, wait_s=0.2):
                pass
        with registry.lock("speech_decoder", timeout_s=30, wait_s=0.2):
            pass  # other models are not blocked
    with registry.lock("llm", timeout_s=30, wait_s=0.2):
        pass

# --- promotion on a real Triton ---------------------------------------------------------------------


def make_checkpoint(store: Path, cid: str, source: Path | None, seed: int, gate: bool) -> Path:
    target = store / "llm" / cid
    if source is None:
        write_tiny_checkpoint(target, seed=seed)
    else:
        shutil.copytree(source, target)
    write_provenance(target, new_provenance("llm", "tiny", "test-recipe", None, seed, 0))
    write_metrics(target / "eval", "llm", {"loss": 1.0 if gate else 9.0}, gate, [] if gate else ["loss above 5.0"],
                  {"loss": 5.0})
    return target


@pytest.fixture
def deployment(request, tmp_path_factory, tiny_llm_dir):
    """A store with checkpoints a (seed 1234), b (seed 4321), c (fails its gate), d (corrupt weights),
    an empty repository on a shared volume, and Triton replicas that have loaded nothing yet."""
    base = tmp_path_factory.mktemp("promotion")
    store = base / "store"
    make_checkpoint(store, "a", tiny_llm_dir, 1234, gate=True)
    make_checkpoint(store, "b", None, 4321, gate=True)
    make_checkpoint(store, "c", tiny_llm_dir, 1234, gate=False)
    broken = make_checkpoint(store, "d", tiny_llm_dir, 1234, gate=True)
    for shard in broken.glob("*.safetensors"):
        shard.write_bytes(shard.read_bytes()[:100])
    repository = base / "models" / "repository"
    repository.mkdir(parents=True)
    servers = []
    try:
        for i in range(request.param):
            settings = TritonSettings(model_repository=repository, grpc_port=free_port(), http_port=free_port(),
                                      metrics_port=free_port())
            servers.append(TritonServer(settings, log_path=base / f"tritonserver-{i}.log").start(ready_timeout_s=180))
        yield {"store": store, "repository": repository, "servers": servers}
    finally:
        for server in servers:
            server.stop()


class LoadWorker(threading.Thread):
    """Sends the same greedy request again and again over one gRPC stream, until told to stop or the
    deadline passes; keeps every reply's ids, or the error."""

    def __init__(self, url: str, prompt: list[int], stop: threading.Event, deadline: float):
        super().__init__(daemon=True)
        self.url, self.prompt, self.stop = url, prompt, stop
        self.deadline = deadline
        self.replies: list[tuple[float, tuple[int, ...] | str]] = []  # (when, ids or 'error: ...')

    def _request(self, client) -> tuple[int, ...] | str:
        ids, errors, final = [], [], threading.Event()
        self.on_response = lambda result, error: self._collect(result, error, ids, errors, final)
        inputs = []
        for name, array in (("input_ids", np.asarray(self.prompt, np.int64)), ("max_new_tokens", np.array([NEW_TOKENS], np.int32)),
                            ("temperature", np.array([0.0], np.float32)), ("stop_ids", np.array([-1], np.int64))):
            tensor = grpcclient.InferInput(name, list(array.shape), grpcclient.np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        client.async_stream_infer("llm", inputs, enable_empty_final_response=True)
        if not final.wait(30):
            return "error: no final response in 30 s"
        return f"error: {errors[0]}" if errors else tuple(ids)

    @staticmethod
    def _collect(result, error, ids, errors, final):
        if error is not None:
            errors.append(str(error))
            final.set()
            return
        out = result.as_numpy("output_ids")
        if out is not None:
            ids.extend(out.reshape(-1).tolist())
        if result.get_response().parameters["triton_final_response"].bool_param:
            final.set()

    def run(self):
        client = grpcclient.InferenceServerClient(self.url)
        client.start_stream(callback=lambda result, error: self.on_response(result, error))
        try:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                self.replies.append((time.monotonic(), self._request(client)))
        finally:
            client.stop_stream()
            client.close()


def promoter_cli(capsys, deployment, redis_addr, *args) -> tuple[int, dict | None, str]:
    repository = deployment["repository"]
    code = cli([*args, "--redis", redis_addr, "--repository", str(repository), "--store", str(deployment["store"]),
                "--triton", ",".join(server.grpc_url for server in deployment["servers"]), "--device", "cpu", "--who", "pytest"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


def version_dirs(deployment) -> list[str]:
    return sorted(p.name for p in (deployment["repository"] / "llm").iterdir() if p.name.isdigit())


def served_copies(deployment) -> list[str]:
    copies = deployment["repository"].parent / "checkpoints" / "llm"
    return sorted(p.name for p in copies.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


def wait_for(predicate, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# One replica keeps the default suite fast; two show the one-replica-at-a-time rollout under load (the
# undoing of a rollout that fails midway has its own test below, in the default run).
@pytest.mark.parametrize("deployment", [1, pytest.param(2, marks=pytest.mark.slow)], indirect=True, ids=lambda n: f"{n}-replicas")
def test_promotion_and_rollback_under_load_lose_no_request(deployment, redis_addr, redis_client, capsys):
    registry = clear_llm_registry(redis_client)
    store, servers = deployment["store"], deployment["servers"]
    replicas = len(servers)
    model_a, tokenizer = load_llm(store / "llm" / "a")
    model_b, _ = load_llm(store / "llm" / "b")
    prompt = tokenizer.encode_prompt(PROMPT_TEXT)
    greedy = SamplingParams(temperature=0.0)
    answers = {"a": tuple(generate(model_a, prompt, NEW_TOKENS, params=greedy).ids),
               "b": tuple(generate(model_b, prompt, NEW_TOKENS, params=greedy).ids)}
    assert answers["a"] != answers["b"]
    controls = [TritonControl(Replica(f"replica-{i}", s.grpc_url), "llm") for i, s in enumerate(servers)]

    def live_versions():
        return [c.ready_versions() for c in controls]

    # First promotion: nothing served yet, version 1 appears on every replica.
    code, report, err = promoter_cli(capsys, deployment, redis_addr, "promote", "llm", "--candidate", "a")
    assert code == 0 and report["version"] == 1 and report["previous_version"] is None, (report, err)
    assert live_versions() == [[1]] * replicas

    stop = threading.Event()
    deadline = time.monotonic() + LOAD_MAX_SECONDS
    workers = [LoadWorker(s.grpc_url, prompt, stop, deadline) for s in servers]
    started = time.monotonic()
    for w in workers:
        w.start()
    try:
        def served(name):  # every replica's last three replies come from checkpoint `name`
            return lambda: all(len(w.replies) > 3 and all(r == answers[name] for _, r in w.replies[-3:]) for w in workers)

        assert wait_for(served("a"))
        code, report, err = promoter_cli(capsys, deployment, redis_addr, "promote", "llm", "--candidate", "b")
        assert code == 0 and (report["version"], report["previous_version"]) == (2, 1), (report, err)
        assert [r["replica"] for r in report["replicas"]] == [s.grpc_url for s in servers]
        assert all(r["canary"]["reply_ids"] for r in report["replicas"])
        assert live_versions() == [[2]] * replicas
        assert wait_for(served("b"))
        # Version 1 is unloaded everywhere: its directory is gone; a's copy stays as the rollback target.
        assert version_dirs(deployment) == ["2"] and served_copies(deployment) == ["a", "b"]

        # A candidate that failed its gate is refused before anything is touched.
        code, report, err = promoter_cli(capsys, deployment, redis_addr, "promote", "llm", "--candidate", "c")
        assert code == 2 and report is None and "failed its evaluation gate" in err, err
        # A candidate whose weights do not load: the first replica refuses it and keeps serving version 2.
        code, report, err = promoter_cli(capsys, deployment, redis_addr, "promote", "llm", "--candidate", "d")
        assert code == 1 and "v2 restored" in report["error"], report
        assert live_versions() == [[2]] * replicas
        assert wait_for(served("b"))

        # Rollback: checkpoint a again, as version 3 (the failed version 3 was withdrawn).
        code, report, err = promoter_cli(capsys, deployment, redis_addr, "rollback", "llm")
        assert code == 0 and (report["checkpoint"], report["version"], report["rolled_back_version"]) == ("a", 3, 2), (report, err)
        assert live_versions() == [[3]] * replicas
        assert wait_for(served("a"))
        # `current` names the served checkpoint: the orchestrator reads the LM's tokenizer through it.
        current = deployment["repository"].parent / "checkpoints" / "llm" / "current"
        assert current.resolve() == (current.parent / "a").resolve()
        rolled_back = time.monotonic()
        assert wait_for(lambda: all(w.replies and w.replies[-1][0] > rolled_back for w in workers))
    finally:
        stop.set()
        for w in workers:
            w.join(60)
    elapsed = time.monotonic() - started

    replies = [r for w in workers for _, r in w.replies]
    counts = {"total": len(replies), "failed": sum(isinstance(r, str) for r in replies),
              "a": replies.count(answers["a"]), "b": replies.count(answers["b"])}
    counts["other"] = counts["total"] - counts["failed"] - counts["a"] - counts["b"]
    with capsys.disabled():
        print(f"\nrequests on {replicas} replica(s) during promote, refused and failed promotes, rollback ({elapsed:.1f} s): {counts}")
    assert counts["failed"] == 0, [r for r in replies if isinstance(r, str)][:5]
    assert counts["other"] == 0
    # The load ran past the rollback on every replica (the hang guard was not hit), and each went a → b → a.
    assert elapsed < LOAD_MAX_SECONDS and all(w.replies[-1][0] > rolled_back for w in workers), "the load stopped early"
    for w in workers:
        sequence = [name for _, r in w.replies for name, ids in answers.items() if r == ids]
        runs = [name for i, name in enumerate(sequence) if i == 0 or sequence[i - 1] != name]
        assert runs == ["a", "b", "a"], runs

    states = {c.id: (c.state, c.gate, c.version) for c in registry.checkpoints("llm")}
    assert states == {"a": ("promoted", True, 3), "b": ("retired", True, 2), "c": ("evaluated", False, None),
                      "d": ("evaluated", True, None)}
    assert any("failed" in e.why and e.checkpoint == "d" for e in registry.history("llm"))
    # After the rollback only a is in the lineage: b's copy and versions 1-2 are gone.
    assert version_dirs(deployment) == ["3"] and served_copies(deployment) == ["a"]
    assert cli(["promote", "llm", "--show", "--redis", redis_addr]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["live"] == {"checkpoint": "a", "version": 3} and len(shown["history"]) == len(registry.history("llm"))
    assert {c["id"]: c["provenance"]["seed"] for c in shown["checkpoints"]} == {"a": 1234, "b": 4321, "c": 1234, "d": 1234}



def clear_llm_registry(redis_client) -> Registry:
    """The CLI uses the default key prefix: start from an empty registry for llm."""
    stale = list(redis_client.scan_iter("glmvoice:promoter:{llm}:*"))
    if stale:
        redis_client.delete(*stale)
    return Registry(redis_client)


@pytest.mark.parametrize("deployment", [2], indirect=True, ids=lambda n: f"{n}-replicas")
def test_a_replica_down_midway_rolls_the_moved_one_back(deployment, redis_addr, redis_client, capsys):
    """Promotion goes one replica at a time; when a later replica cannot take the new version, the replicas
    already moved go back to the live version, the registry keeps it live, and the new version is withdrawn."""
    registry = clear_llm_registry(redis_client)
    servers = deployment["servers"]
    controls = [TritonControl(Replica(f"replica-{i}", s.grpc_url), "llm") for i, s in enumerate(servers)]
    code, report, err = promoter_cli(capsys, deployment, redis_addr, "promote", "llm", "--candidate", "a")
    assert code == 0 and report["version"] == 1, (report, err)
    assert [c.ready_versions() for c in controls] == [[1], [1]]
    servers[-1].stop()
    code, report, err = promoter_cli(capsys, deployment, redis_addr, "promote", "llm", "--candidate", "b")
    assert code == 1 and f"v1 restored on ['{servers[0].grpc_url}']" in report["error"], (report, err)
    assert controls[0].ready_versions() == [1]
    assert (registry.live("llm").checkpoint, registry.live("llm").version) == ("a", 1)
    assert registry.get("llm", "b").state == "evaluated"
    assert not (deployment["repository"] / "llm" / "2").exists()


def test_every_models_canary_passes_on_its_served_version(triton_server, tiny_speech_tokenizer_dir, tiny_llm_dir,
                                                          tiny_speech_decoder_dir):
    checkpoints = {"speech_tokenizer": tiny_speech_tokenizer_dir, "llm": tiny_llm_dir, "speech_decoder": tiny_speech_decoder_dir}
    reports = {model: run_canary(triton_server.grpc_url, model, 1, ckpt) for model, ckpt in checkpoints.items()}
    assert reports["llm"]["reply_ids"] and reports["speech_tokenizer"]["codes"] > 0 and reports["speech_decoder"]["samples"] > 0
    # A version that is not loaded answers nothing: the canary fails rather than hitting another version.
    for model, ckpt in checkpoints.items():
        with pytest.raises(CanaryError, match="v7"):
            run_canary(triton_server.grpc_url, model, 7, ckpt, timeout_s=20)
