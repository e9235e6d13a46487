"""The checkpoint registry of each model, in Redis.

A checkpoint moves candidate → evaluated → promoted → retired (and retired → promoted again on a
rollback). Every change runs in one Lua script: the script checks the states it starts from, applies
all of them, appends the who/when/why events to the model's history and moves the serving stack, or
changes nothing. Two promoters racing therefore cannot both win, and a reader never sees half a change.

Keys (the `{model}` hash tag keeps one model's keys in one cluster slot):
  <prefix>:{model}:checkpoint:<id>   hash: state, path, provenance, metrics, gate, version, times
  <prefix>:{model}:checkpoints       set of ids
  <prefix>:{model}:history           list of JSON events, oldest first
  <prefix>:{model}:serving           list of JSON {checkpoint, version}; the last one is live
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

STATES = ("candidate", "evaluated", "promoted", "retired")

_APPLY = """
local spec = cjson.decode(ARGV[1])
local n = #spec.steps
local history, serving, index = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
if spec.check_top then
  local top = redis.call('LINDEX', serving, -1)
  if (top or '') ~= spec.top then
    return redis.error_reply('CONFLICT the serving version changed meanwhile (now ' .. tostring(top) .. ')')
  end
end
for i, step in ipairs(spec.steps) do
  local state = redis.call('HGET', KEYS[i], 'state')
  if step.create then
    if state then return redis.error_reply('EXISTS checkpoint ' .. step.id .. ' is already registered') end
  else
    if not state then return redis.error_reply('MISSING checkpoint ' .. step.id .. ' is not registered') end
    local allowed = false
    for _, s in ipairs(step.from) do if s == state then allowed = true end end
    if not allowed then
      return redis.error_reply('STATE checkpoint ' .. step.id .. ' is ' .. state .. ', expected one of: '
        .. table.concat(step.from, ', '))
    end
    if step.gate and redis.call('HGET', KEYS[i], 'gate') ~= '1' then
      return redis.error_reply('GATE checkpoint ' .. step.id .. ' failed its evaluation gate')
    end
  end
end
for i, step in ipairs(spec.steps) do
  for k, v in pairs(step.set) do redis.call('HSET', KEYS[i], k, v) end
  redis.call('HSET', KEYS[i], 'state', step.to)
  if step.create then redis.call('SADD', index, step.id) end
end
for _, event in ipairs(spec.events) do redis.call('RPUSH', history, event) end
for _, op in ipairs(spec.serving_ops) do
  if op[1] == 'push' then redis.call('RPUSH', serving, op[2]) else redis.call('RPOP', serving) end
end
return 'OK'
"""


class RegistryError(ValueError):
    """A transition the registry refuses; nothing was changed."""


class GateFailedError(RegistryError):
    """The checkpoint's evaluation failed its gate: it is never promoted."""


class ConflictError(RegistryError):
    """Someone else changed the model's serving state meanwhile."""


_ERRORS = {"GATE": GateFailedError, "CONFLICT": ConflictError}


@dataclass(frozen=True)
class Checkpoint:
    model: str
    id: str
    state: str
    path: str
    provenance: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    gate: bool | None = None  # None until evaluated
    version: int | None = None  # the Triton version that serves it, once promoted
    created_at: str = ""
    updated_at: str = ""

    def to_json(self) -> dict:
        return self.__dict__.copy()


@dataclass(frozen=True)
class Event:
    checkpoint: str
    from_state: str
    to_state: str
    who: str
    why: str
    when: str
    version: int | None = None


@dataclass(frozen=True)
class Serving:
    checkpoint: str
    version: int

    def encode(self) -> str:
        return json.dumps({"checkpoint": self.checkpoint, "version": self.version}, sort_keys=True)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Registry:
    def __init__(self, client: redis.Redis, prefix: str = "glmvoice:promoter"):
        self.client = client
        self.prefix = prefix
        self._apply = client.register_script(_APPLY)

    def _key(self, model: str, *parts: str) -> str:
        return ":".join([self.prefix, "{" + model + "}", *parts])

    def _checkpoint_key(self, model: str, checkpoint_id: str) -> str:
        return self._key(model, "checkpoint", checkpoint_id)

    @contextmanager
    def lock(self, model: str, timeout_s: float, wait_s: float = 5.0):
        """One promotion or rollback per model at a time; the lock expires if its holder dies."""
        lock = self.client.lock(self._key(model, "lock"), timeout=timeout_s, blocking_timeout=wait_s)
        if not lock.acquire():
            raise ConflictError(f"{model}: another promotion or rollback is running")
        try:
            yield
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:  # expired meanwhile; nothing left to release
                pass

    # Reads ----------------------------------------------------------------------------------------
    def get(self, model: str, checkpoint_id: str) -> Checkpoint:
        raw = self.client.hgetall(self._checkpoint_key(model, checkpoint_id))
        if not raw:
            raise RegistryError(f"{model}: checkpoint {checkpoint_id!r} is not registered")
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return Checkpoint(
            model=model, id=checkpoint_id, state=f["state"], path=f["path"],
            provenance=json.loads(f.get("provenance") or "{}"), metrics=json.loads(f.get("metrics") or "{}"),
            gate={"1": True, "0": False}.get(f.get("gate", "")),
            version=int(f["version"]) if f.get("version") else None,
            created_at=f.get("created_at", ""), updated_at=f.get("updated_at", ""),
        )

    def exists(self, model: str, checkpoint_id: str) -> bool:
        return bool(self.client.exists(self._checkpoint_key(model, checkpoint_id)))

    def checkpoints(self, model: str) -> list[Checkpoint]:
        ids = sorted(i.decode() for i in self.client.smembers(self._key(model, "checkpoints")))
        return [self.get(model, i) for i in ids]

    def history(self, model: str) -> list[Event]:
        return [Event(**json.loads(e)) for e in self.client.lrange(self._key(model, "history"), 0, -1)]

    def serving(self, model: str) -> list[Serving]:
        """The promoted lineage, oldest first; the last entry is live."""
        return [Serving(**json.loads(s)) for s in self.client.lrange(self._key(model, "serving"), 0, -1)]

    def live(self, model: str) -> Serving | None:
        lineage = self.serving(model)
        return lineage[-1] if lineage else None

    # Transitions ------------------------------------------------------------------------------------
    def _run(self, model: str, steps: list[tuple[str, dict]], events: list[Event], top: str | None = None,
             serving_ops: list[list[str]] = ()) -> None:
        """Applies `steps` [(checkpoint id, {from, to, gate, set, create})], appends `events`, and runs
        `serving_ops` ([["push", value]] or [["pop"]]) on the serving stack, if its top is still `top`."""
        keys = [self._checkpoint_key(model, cid) for cid, _ in steps]
        keys += [self._key(model, "history"), self._key(model, "serving"), self._key(model, "checkpoints")]
        spec = {
            "steps": [{"id": cid, "from": [], "set": {}, "create": False, "gate": False, **s} for cid, s in steps],
            "events": [json.dumps(e.__dict__) for e in events],
            "check_top": top is not None, "top": top or "", "serving_ops": list(serving_ops),
        }
        try:
            self._apply(keys=keys, args=[json.dumps(spec)])
        except redis.exceptions.ResponseError as exc:
            code, _, message = str(exc).partition(" ")
            raise _ERRORS.get(code, RegistryError)(f"{model}: {message or exc}") from None

    def note(self, model: str, event: Event) -> None:
        """A history entry that changes no state (a failed attempt, say)."""
        self.client.rpush(self._key(model, "history"), json.dumps(event.__dict__))

    def register(self, model: str, checkpoint_id: str, path: str, provenance: dict, who: str, why: str) -> Checkpoint:
        when = now_iso()
        fields = {"path": str(path), "provenance": json.dumps(provenance), "created_at": when, "updated_at": when,
                  "metrics": "{}", "gate": "", "version": ""}
        event = Event(checkpoint_id, "", "candidate", who, why, when)
        self._run(model, [(checkpoint_id, {"create": True, "to": "candidate", "set": fields})], [event])
        return self.get(model, checkpoint_id)

    def record_evaluation(self, model: str, checkpoint_id: str, metrics: dict, who: str, why: str) -> Checkpoint:
        """candidate → evaluated, storing the metrics and the gate verdict (metrics["gate"], a bool)."""
        gate = metrics.get("gate")
        if not isinstance(gate, bool):
            raise RegistryError(f"{model}: metrics of {checkpoint_id!r} have no boolean 'gate'")
        when = now_iso()
        fields = {"metrics": json.dumps(metrics), "gate": "1" if gate else "0", "updated_at": when}
        verdict = "passed" if gate else "failed"
        event = Event(checkpoint_id, "candidate", "evaluated", who, f"{why} (gate {verdict})", when)
        step = {"from": ["candidate", "evaluated"], "to": "evaluated", "set": fields}
        self._run(model, [(checkpoint_id, step)], [event])
        return self.get(model, checkpoint_id)

    def check_promotable(self, model: str, checkpoint_id: str) -> Checkpoint:
        """Raises unless the checkpoint may be promoted now: evaluated (or retired) and through its gate."""
        checkpoint = self.get(model, checkpoint_id)
        if checkpoint.gate is False:
            raise GateFailedError(f"{model}: checkpoint {checkpoint_id!r} failed its evaluation gate "
                                  f"(metrics {checkpoint.metrics}); it is never promoted")
        if checkpoint.state not in ("evaluated", "retired"):
            raise RegistryError(f"{model}: checkpoint {checkpoint_id!r} is {checkpoint.state}; only an evaluated "
                                "checkpoint can be promoted")
        return checkpoint

    def mark_promoted(self, model: str, checkpoint_id: str, version: int, who: str, why: str) -> None:
        """checkpoint → promoted (serving `version`), the live one → retired, in one step."""
        when = now_iso()
        live = self.live(model)
        steps = [(checkpoint_id, {"from": ["evaluated", "retired"], "to": "promoted", "gate": True,
                                  "set": {"version": str(version), "updated_at": when}})]
        events = [Event(checkpoint_id, self.get(model, checkpoint_id).state, "promoted", who, why, when, version)]
        if live is not None and live.checkpoint != checkpoint_id:
            steps.append((live.checkpoint, {"from": ["promoted"], "to": "retired", "set": {"updated_at": when}}))
            events.append(Event(live.checkpoint, "promoted", "retired", who, f"replaced by {checkpoint_id}", when,
                                live.version))
        self._run(model, steps, events, top=live.encode() if live else "",
                  serving_ops=[["push", Serving(checkpoint_id, version).encode()]])

    def mark_rolled_back(self, model: str, version: int, who: str, why: str) -> Serving:
        """The live checkpoint → retired and the one before it → promoted again, now served as `version`
        (versions only go up); returns what serves now."""
        lineage = self.serving(model)
        if len(lineage) < 2:
            raise RegistryError(f"{model}: nothing to roll back to (serving lineage {[s.checkpoint for s in lineage]})")
        current, previous = lineage[-1], lineage[-2]
        restored = Serving(previous.checkpoint, version)
        when = now_iso()
        steps = [(current.checkpoint, {"from": ["promoted"], "to": "retired", "set": {"updated_at": when}}),
                 (previous.checkpoint, {"from": ["retired"], "to": "promoted", "set": {"updated_at": when,
                                                                                     "version": str(version)}})]
        events = [Event(current.checkpoint, "promoted", "retired", who, f"rollback: {why}", when, current.version),
                  Event(previous.checkpoint, "retired", "promoted", who, f"rollback: {why}", when, version)]
        self._run(model, steps, events, top=current.encode(),
                  serving_ops=[["pop"], ["pop"], ["push", restored.encode()]])
        return restored
