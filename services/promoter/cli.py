"""`glmvoice promote MODEL --candidate ID` and `glmvoice rollback MODEL` (one module, two commands).

--show prints the model's registry. promote: registers <store>/<MODEL>/<ID> (provenance.json) if new, records its evaluation (metrics.json
with a boolean "gate"), refuses it if the gate failed, then makes it the next Triton version on every
replica, one at a time, with a canary. rollback: the previous promoted version serves again.
Settings come from the environment (PromoterSettings.from_env); flags win. An entry point of the promoter,
registered with the `glmvoice` command.
"""

from __future__ import annotations

import json
import os
import socket

# The command names this module serves, with their help (registered in pyproject's glmvoice.commands).
HELP = {"promote": "make a checkpoint the served Triton version, one replica at a time",
        "rollback": "serve the previously promoted version again"}


def _default_who() -> str:
    # In a pod the host name is the Job's pod name, which names the actor well enough.
    return os.environ.get("GLMVOICE_WHO") or f"{os.environ.get('USER', 'glmvoice')}@{socket.gethostname()}"


def add_arguments(parser) -> None:
    action = parser.prog.split()[-1]  # "promote" or "rollback": COMMANDS registers this module for both
    parser.set_defaults(action=action)
    parser.add_argument("model", help="speech_tokenizer, llm or speech_decoder")
    if action == "promote":
        parser.add_argument("--candidate", help="checkpoint id: the directory <store>/<model>/<id>")
    parser.add_argument("--show", action="store_true",
                        help="only print the model's registry: live version, lineage, checkpoints, history")
    parser.add_argument("--why", default=f"{action} requested from the command line",
                        help="reason, kept in the history")
    parser.add_argument("--who", default=None, help="actor kept in the history (default: $GLMVOICE_WHO or user@host)")
    parser.add_argument("--redis", help="host:port (default $REDIS_ADDR)")
    parser.add_argument("--repository", help="Triton model repository (default $GLMVOICE_MODEL_REPOSITORY)")
    parser.add_argument("--store", help="checkpoint store (default $GLMVOICE_STORE)")
    parser.add_argument("--serving-checkpoints",
                        help="where Triton reads checkpoints (default <repository>/../checkpoints)")
    parser.add_argument("--triton",
                        help="comma-separated Triton gRPC addresses (default $TRITON_ADDRS, else Kubernetes pods)")
    parser.add_argument("--device", help="device written into new versions: auto, cpu or cuda (default auto)")


def _show(registry, model: str) -> dict:
    live = registry.live(model)
    return {"model": model, "live": live.__dict__ if live else None,
            "lineage": [s.__dict__ for s in registry.serving(model)],
            "checkpoints": [c.to_json() for c in registry.checkpoints(model)],
            "history": [e.__dict__ for e in registry.history(model)]}


def run(args) -> int:
    from services.promoter.promoter import Promoter, PromoterSettings, discover_replicas, redis_client
    from services.promoter.registry import Registry
    from services.promoter.rollout import RolloutError

    if args.show:
        addr = args.redis or os.environ.get("REDIS_ADDR")
        if not addr:
            raise ValueError("REDIS_ADDR is not set (or pass --redis)")
        print(json.dumps(_show(Registry(redis_client(addr)), args.model)))
        return 0
    if args.action == "promote" and not args.candidate:
        raise ValueError("--candidate is required (or --show)")
    settings = PromoterSettings.from_env(
        redis_addr=args.redis, model_repository=args.repository, store=args.store,
        serving_checkpoints=args.serving_checkpoints, device=args.device,
        triton_addrs=tuple(a for a in (args.triton or "").split(",") if a),
    )
    registry = Registry(redis_client(settings.redis_addr))
    promoter = Promoter(settings, registry, discover_replicas(settings),
                        who=args.who or _default_who())
    try:
        if args.action == "promote":
            result = promoter.promote(args.model, args.candidate, args.why)
        else:
            result = promoter.rollback(args.model, args.why)
    except RolloutError as exc:
        print(json.dumps({"model": args.model, "action": args.action, "error": str(exc)}))
        return 1
    print(json.dumps(result))
    return 0
