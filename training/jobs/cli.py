"""`glmvoice jobs submit train|evaluate|promote`: Kubernetes Jobs, watched until they finish.

`--chain` continues train → evaluate → promote on the same run id and stops at the first Job that fails,
is deleted or times out. Prints one JSON object with every Job's outcome; the exit code is 0 only if all
succeeded. Settings: flags, else GLMVOICE_IMAGE, POD_NAMESPACE, GLMVOICE_RELEASE, REDIS_ADDR, GLMVOICE_TLS_SECRET.
"""

from __future__ import annotations

import json
import os
import sys

KINDS = ("train", "evaluate", "promote")
# Registered in pyproject's glmvoice.commands: `glmvoice jobs ...`.
HELP = {"jobs": "submit and follow training, evaluation and promotion Jobs on Kubernetes"}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="jobs_command", required=True)
    submit = sub.add_parser("submit", help="submit a Job (or a chain of them) and wait for it")
    submit.add_argument("kind", choices=KINDS)
    submit.add_argument("--model", required=True, help="speech_tokenizer, llm or speech_decoder")
    submit.add_argument("--run-id", "--candidate", dest="run_id", required=True,
                        help="run id: the checkpoint is /store/<model>/<run id>")
    submit.add_argument("--preset", default="tiny", help="model preset for train (tiny, glm-4-voice)")
    submit.add_argument("--chain", action="store_true", help="continue with the following steps up to promote")
    submit.add_argument("--extra-arg", action="append", default=[], help="appended to the first Job's command")
    submit.add_argument("--gpu", type=int, default=None, help="GPUs for train / evaluate Jobs")
    submit.add_argument("--cpu", default=None, help="CPU request for train / evaluate Jobs (e.g. 2)")
    submit.add_argument("--memory", default=None, help="memory request and limit for train / evaluate Jobs (e.g. 16Gi)")
    submit.add_argument("--timeout", type=float, default=6 * 3600.0, help="seconds to wait for each Job")
    submit.add_argument("--namespace", default=None, help="default $POD_NAMESPACE, else the kubeconfig's")
    submit.add_argument("--image", default=None, help="default $GLMVOICE_IMAGE")
    submit.add_argument("--release", default=None, help="Helm release name (default $GLMVOICE_RELEASE or glmvoice)")
    submit.add_argument("--redis", default=None, help="REDIS_ADDR for the promote Job (default: the chart's Redis)")
    submit.add_argument("--tls-secret", default=None,
                        help="the chart's gRPC TLS Secret when tls.enabled: the promote Job dials Triton over TLS "
                             "(default $GLMVOICE_TLS_SECRET; empty: plaintext)")
    submit.add_argument("--redis-tls", action="store_true", default=None,
                        help="the chart's redis.tls.enabled: the promote Job dials Redis over TLS with --tls-secret's "
                             "ca.crt and certificate (default $GLMVOICE_REDIS_TLS)")
    submit.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, else ~/.kube/config)")


def _api(kubeconfig: str | None):
    from kubernetes import client, config

    if kubeconfig:
        api = client.BatchV1Api(config.new_client_from_config(config_file=kubeconfig))
        return api, config.list_kube_config_contexts(kubeconfig)[1]
    try:
        config.load_incluster_config()
        return client.BatchV1Api(), None
    except config.ConfigException:
        config.load_kube_config()
        return client.BatchV1Api(), config.list_kube_config_contexts()[1]


def run(args) -> int:
    from glmvoice.provenance import valid_run_id
    from training.jobs.submit import JobRunner, JobSettings, chain_from

    valid_run_id(args.run_id)
    image = args.image or os.environ.get("GLMVOICE_IMAGE")
    if not image:
        raise ValueError("no image: pass --image or set GLMVOICE_IMAGE")
    batch, context = _api(args.kubeconfig)
    namespace = (args.namespace or os.environ.get("POD_NAMESPACE")
                 or (context or {}).get("context", {}).get("namespace") or "default")
    settings = JobSettings(namespace=namespace, image=image,
                           release=args.release or os.environ.get("GLMVOICE_RELEASE", "glmvoice"),
                           redis_addr=args.redis or os.environ.get("REDIS_ADDR", ""),
                           tls_secret=args.tls_secret or os.environ.get("GLMVOICE_TLS_SECRET", ""),
                           redis_tls=bool(args.redis_tls)
                           or os.environ.get("GLMVOICE_REDIS_TLS", "").lower() in ("1", "true", "yes", "on"))
    for kind in ("train", "evaluate"):
        spec = settings.resources[kind]
        changes = {"requests": {**spec.requests, **({"cpu": args.cpu} if args.cpu else {}),
                                **({"memory": args.memory} if args.memory else {})},
                   "limits": {**spec.limits, **({"memory": args.memory} if args.memory else {})}}
        if args.gpu is not None:
            changes["gpu"] = args.gpu
        settings = settings.with_resources(kind, **changes)
    kinds = chain_from(args.kind) if args.chain else [args.kind]
    runner = JobRunner(batch, settings, log=lambda message: print(message, file=sys.stderr, flush=True))
    outcomes = runner.chain(kinds, args.model, args.run_id, args.timeout, args.preset,
                            {kinds[0]: tuple(args.extra_arg)})
    ok = len(outcomes) == len(kinds) and all(o.ok for o in outcomes)
    print(json.dumps({"namespace": namespace, "ok": ok, "jobs": [o.__dict__ for o in outcomes],
                      "not_run": kinds[len(outcomes):]}))
    return 0 if ok else 1
