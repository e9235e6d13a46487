"""`python -m loadtest` / `glmvoice loadtest`: load the public APIs with real speech and write a report.

Targets are `--target NAME=ADDR` (gRPC host:port, or ws://.../v1/realtime) and/or `--local`, which starts
Redis, Triton and one orchestrator per `--backends` entry here (tiny checkpoints) and stops them at the end.
Targets run one after another, each alone on the machine. Writes under --out: turns.jsonl (one record per
turn), summary.json, report.md / report.html and the plots; prints the summary and where the report is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

HELP = {"loadtest": "load the gRPC / WebSocket APIs with real speech; TTFA, underrun, capacity; HTML report"}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loadtest.capacity import LEVELS
    from loadtest.speech import FORMATS

    where = parser.add_argument_group("targets")
    where.add_argument("--target", action="append", default=[], metavar="NAME=ADDR",
                       help="a server to load: NAME=host:port (gRPC VoiceChat) or NAME=ws://host:port/v1/realtime")
    where.add_argument("--local", action="store_true", help="start a local stack (Redis, Triton, orchestrators) and load it")
    where.add_argument("--checkpoints", type=Path, default=Path("build/checkpoints/tiny"), help="checkpoints of --local")
    where.add_argument("--backends", default="triton,baseline",
                       help="orchestrators of --local: triton (ours), inprocess (ours-inprocess), baseline (official-style)")
    where.add_argument("--ws", action="store_true", help="with --local: also start the gateway and load its WebSocket")
    where.add_argument("--api-key", default=None)
    load = parser.add_argument_group("workload")
    load.add_argument("--workload", choices=("fixed", "ramp", "poisson"), default="fixed")
    load.add_argument("--concurrency", type=int, default=8, help="fixed: concurrent sessions")
    load.add_argument("--levels", type=_ints, default=(1, 2, 4, 8), help="ramp: concurrency steps, e.g. 1,2,4,8")
    load.add_argument("--rate", type=float, default=0.5, help="poisson: sessions started per second")
    load.add_argument("--sessions", type=int, default=8, help="sessions per run (per step for ramp)")
    load.add_argument("--turns", type=int, default=3, help="turns per session (history kept in Redis)")
    load.add_argument("--think-s", type=float, default=1.0, help="pause between a reply and the next turn")
    load.add_argument("--barge-in", type=float, default=0.1, help="fraction of turns the caller speaks over")
    load.add_argument("--duration-s", type=float, default=180.0, help="bound per run/step: no session starts later")
    load.add_argument("--formats", default=",".join(FORMATS), help=f"input formats, from {','.join(FORMATS)}")
    load.add_argument("--speech", choices=("mixed", "questions", "librivox"), default="mixed")
    load.add_argument("--max-new-tokens", type=int, default=120, help="reply bound in LM ids (keeps runs bounded)")
    load.add_argument("--temperature", type=float, default=None)
    load.add_argument("--seed", type=int, default=None)
    search = parser.add_argument_group("capacity and quality")
    search.add_argument("--find-capacity", action="store_true",
                        help="raise concurrency until p95 TTFA > --slo-ms or > 1%% of turns underrun")
    search.add_argument("--slo-ms", type=float, default=500.0, help="p95 TTFA SLO (500 on CPU tiny, 250 on a GPU)")
    search.add_argument("--capacity-levels", type=_ints, default=LEVELS)
    search.add_argument("--quality", action="store_true", help="greedy replies at --quality-concurrency vs each alone")
    search.add_argument("--quality-concurrency", type=int, default=16)
    search.add_argument("--skip-workload", action="store_true", help="only the capacity search / quality check")
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded one-turn sessions per target first")
    parser.add_argument("--out", type=Path, default=Path("build/loadtest"))
    parser.add_argument("--no-progress", action="store_true")


async def _load(args, targets, workload, corpus) -> dict:
    from loadtest.capacity import find_capacity
    from loadtest.quality import check
    from loadtest.workloads import run_workload

    records, capacity, quality = [], [], []
    for target in targets:
        # Not recorded: first calls pay for lazy initialisation (allocator, kernels) in every process.
        warm = replace(workload, kind="fixed", concurrency=1, sessions=args.warmup, turns=1, barge_in=0.0)
        await run_workload(target.dial, warm, corpus, target.name, progress=False)
        if not args.skip_workload:
            records += await run_workload(target.dial, workload, corpus, target.name, not args.no_progress)
        if args.find_capacity:
            result, steps = await find_capacity(target, workload, corpus, args.slo_ms, args.capacity_levels,
                                                progress=not args.no_progress)
            capacity.append(result)
            records += steps
        if args.quality:
            quality.append(await check(target, corpus, args.quality_concurrency, args.max_new_tokens))
    return {"records": records, "capacity": capacity, "quality": quality}


def run(args: argparse.Namespace) -> int:
    from loadtest.records import summarize, write_jsonl
    from loadtest.report import write_report
    from loadtest.speech import FORMATS
    from loadtest.speech import corpus as speech_corpus
    from loadtest.stack import LocalStack
    from loadtest.targets import Target
    from loadtest.workloads import Workload

    formats = tuple(f for f in args.formats.split(",") if f)
    if bad := [f for f in formats if f not in FORMATS]:
        raise ValueError(f"unknown formats {bad}; choose from {list(FORMATS)}")
    if not args.local and not args.target:
        raise ValueError("give --target NAME=ADDR or --local")
    workload = Workload(kind=args.workload, concurrency=args.concurrency, levels=args.levels, rate=args.rate,
                        sessions=args.sessions, duration_s=args.duration_s, turns=args.turns, think_s=args.think_s,
                        barge_in=args.barge_in, formats=formats, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, seed=args.seed)
    corpus = speech_corpus(args.speech)
    targets = [Target.parse(spec, args.api_key) for spec in args.target]
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    with LocalStack(args.checkpoints, args.out / "stack", args.backends.split(","), args.ws) if args.local else nullcontext() as stack:
        if stack is not None:
            targets = [Target(name, addr, args.api_key) for name, addr in stack.addrs.items()] + targets
        result = asyncio.run(_load(args, targets, workload, corpus))
    records = result["records"]
    summary = summarize(records)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(records, args.out / "turns.jsonl")
    context = {"started": started, "targets": {t.name: t.addr for t in targets}, "workload": asdict(workload),
               "corpus": [u.name for u in corpus], "checkpoints": str(args.checkpoints) if args.local else None}
    full = {"context": context, "summary": summary, "capacity": result["capacity"], "quality": result["quality"]}
    (args.out / "summary.json").write_text(json.dumps(full, indent=2, ensure_ascii=False))
    paths = write_report(args.out, records, summary, "glmvoice load test", context, result["capacity"], result["quality"])
    print(json.dumps({t: s["all"] for t, s in summary.items()}, indent=2))
    for item in result["capacity"]:
        print(f"capacity {item['target']}: {item['capacity']} calls within the TTFA SLO "
              f"({item.get('saturated_first', {}).get('stage') or 'not saturated'}); "
              f"{item['realtime_calls']} calls streamed without gaps")
    for item in result["quality"]:
        print(f"quality {item['target']}: {item['same']}/{item['checked']} replies at concurrency {item['concurrency']} equal to alone")
    print(f"report: {paths['html']} (also {paths['markdown'].name}, turns.jsonl, summary.json)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
