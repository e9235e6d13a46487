"""`make soak` / `python -m loadtest.soak`: a bounded soak of the local stack at steady load, over loopback.

Brings the stack up as `make up` does (or uses the one that is up), drives it with the load generator
(`python -m loadtest`, fixed concurrency, real speech, barge-ins included) for --duration-s, and samples the
resident memory of every process of the stack (each component's process group: Redis, Triton and its python
backend stubs, the orchestrator, the gateway) every --interval-s. Then it reads the live-stream gauges (Triton's
metrics port: tokenizer and decoder streams, LM requests active and queued; the orchestrator's live Converse
streams), runs `make down` (services.local_stack down) and checks that no process of the stack is left.

Per process it prints RSS at the end of warm-up (start), the peak, at the end, the growth (end - start) and
the slope over the last third of the run (MiB per minute: still growing, or flat). The bound on growth
(--max-growth-mib, 64 MiB) leaves room for what fills up by design: the LM's prefix cache holds up to
16,384 KV tokens (36 MiB for the tiny LM), filled over the first minutes at the default load.
It exits 1 when a process grew more than --max-growth-mib, when a stream is still live --drain-s after the
load stopped, when a process outlived `down`, or when the load got no answer at all; 0 otherwise. Writes
the report with every sample to --out/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from glmvoice.telemetry import scrape
from services.local_stack import alive, process_groups, running, state_file, up

MIB = 1024 * 1024
# Gauges whose value is a live stream or request: all of them must read 0 once the load has stopped.
TRITON_STREAM_GAUGES = {
    "speech_tokenizer_open_streams": ("glmvoice_speech_tokenizer_open_streams", {}),
    "speech_decoder_open_streams": ("glmvoice_speech_decoder_open_streams", {}),
    "llm_active": ("glmvoice_llm_engine", {"state": "active"}),
    "llm_queued": ("glmvoice_llm_engine", {"state": "queued"}),
}
ORCHESTRATOR_STREAM_GAUGES = {"orchestrator_active_streams": ("glmvoice_active_streams", {})}


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a live process from /proc/PID/status; None if it is gone (or a zombie)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None  # a zombie has no VmRSS line


def describe(pid: int) -> str:
    """A short name for a process: its program, and the model a Triton python stub serves."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    args = [a.decode(errors="replace") for a in args if a]
    if not args:
        return "?"
    program = Path(args[0]).name
    if program.startswith("python") and len(args) > 2 and args[1] == "-m":
        program = args[2]
    model = next((m.group(1) for a in args if (m := re.search(r"/([A-Za-z0-9_]+)/1/model\.py$", a))), None)
    return f"{program} ({model})" if model else program


def stack_members(state: dict) -> dict[int, str]:
    """pid -> component for every live process in the process groups of the stack's components."""
    groups = process_groups()
    return {pid: name for name, leader in state["pids"].items() for pid in groups.get(leader, [])}


def live_streams(state: dict) -> dict[str, float | None]:
    values = {}
    for key, (name, labels) in TRITON_STREAM_GAUGES.items():
        values[key] = scrape(state["triton_metrics"], name, labels)
    for key, (name, labels) in ORCHESTRATOR_STREAM_GAUGES.items():
        values[key] = scrape(state["metrics"], name, labels)
    return values


class Sampler:
    """RSS of every stack process, sampled at `interval_s`; processes that appear later are sampled too."""

    def __init__(self, state: dict):
        self.state = state
        self.began = time.monotonic()
        self.samples: list[dict] = []  # {"t": s since start, "rss": {pid: bytes}}
        self.processes: dict[int, dict] = {}  # pid -> {"component", "name"}

    def sample(self) -> dict:
        t = round(time.monotonic() - self.began, 2)
        rss = {}
        for pid, component in stack_members(self.state).items():
            value = rss_bytes(pid)
            if value is None:
                continue
            rss[pid] = value
            self.processes.setdefault(pid, {"component": component, "name": describe(pid)})
        record = {"t": t, "rss": rss}
        self.samples.append(record)
        return record


def slope(series: list[tuple[float, int]]) -> float:
    """Least-squares slope of (t, value) points, per second (0 for fewer than two distinct times)."""
    if len(series) < 2:
        return 0.0
    mean_t = sum(t for t, _ in series) / len(series)
    mean_v = sum(v for _, v in series) / len(series)
    spread = sum((t - mean_t) ** 2 for t, _ in series)
    return sum((t - mean_t) * (v - mean_v) for t, v in series) / spread if spread else 0.0


def per_process(samples: list[dict], processes: dict[int, dict], warmup_s: float) -> list[dict]:
    """RSS start (the first sample at or after warm-up), peak, end (the last sample) and growth, in MiB."""
    rows = []
    for pid, info in sorted(processes.items()):
        series = [(s["t"], s["rss"][pid]) for s in samples if pid in s["rss"]]
        warm = [(t, v) for t, v in series if t >= warmup_s] or series[-1:]
        start, end, peak = warm[0][1], series[-1][1], max(v for _, v in series)
        late = warm[-max(2, len(warm) // 3):]  # the last third after warm-up (two points at least): growing, or flat?
        rows.append({
            "pid": pid, "component": info["component"], "name": info["name"], "samples": len(series),
            "start_t": warm[0][0], "end_t": series[-1][0], "start_mib": round(start / MIB, 1),
            "peak_mib": round(peak / MIB, 1), "end_mib": round(end / MIB, 1), "growth_mib": round((end - start) / MIB, 1),
            "late_mib_per_min": round(slope(late) * 60 / MIB, 2),
        })
    return rows


def load_command(args, target: str) -> list[str]:
    return [sys.executable, "-m", "loadtest", "--target", f"ours={target}", "--workload", "fixed",
            "--concurrency", str(args.concurrency), "--sessions", "1000000", "--turns", str(args.turns),
            "--think-s", str(args.think_s), "--duration-s", str(args.duration_s),
            "--max-new-tokens", str(args.max_new_tokens), "--barge-in", str(args.barge_in),
            "--out", str(args.out / "load"), "--no-progress"]


def soak(args) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    state = running()
    reused = state is not None
    if state is None:
        print(f"soak: bringing the stack up (`make up`, checkpoints {args.checkpoints})", flush=True)
        state = up(args.checkpoints, args.workdir)
    else:
        print(f"soak: using the stack that is up ({state_file()}); `make down` stops it at the end", flush=True)
    report: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "stack": {"reused": reused, "pids": state["pids"], "orchestrator": state["orchestrator"]}}
    sampler = Sampler(state)
    try:
        sampler.sample()
        with open(args.out / "load.log", "w") as log:
            load = subprocess.Popen(load_command(args, state["orchestrator"]), stdout=log, stderr=subprocess.STDOUT)
        print(f"soak: {args.duration_s:.0f} s at {args.concurrency} concurrent sessions against {state['orchestrator']}; "
              f"RSS of every stack process every {args.interval_s} s", flush=True)
        next_at = time.monotonic()
        while load.poll() is None:
            next_at += args.interval_s
            time.sleep(max(0.0, next_at - time.monotonic()))
            sampler.sample()
        report["load"] = {"exit_code": load.returncode, "log": str(args.out / "load.log"),
                          "seconds": round(time.monotonic() - sampler.began, 1)}
        summary_path = args.out / "load" / "summary.json"
        if summary_path.exists():
            totals = json.loads(summary_path.read_text())["summary"].get("ours", {}).get("all", {})
            report["load"].update({k: totals.get(k) for k in ("sessions", "turns", "answered", "errors_by_status")})
            report["load"]["ttfa_ms_p95"] = (totals.get("ttfa_ms") or {}).get("p95")
        sampler.sample()
        # Streams end shortly after their callers: wait up to drain_s for every gauge to read 0.
        deadline = time.monotonic() + args.drain_s
        while True:
            streams = live_streams(state)
            if all(v == 0 for v in streams.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        report["streams_after"] = streams
    finally:
        began = time.monotonic()
        down = subprocess.run([sys.executable, "-m", "services.local_stack", "down"], capture_output=True, text=True,
                              timeout=300)
        report["down"] = {"exit_code": down.returncode, "seconds": round(time.monotonic() - began, 1)}
        everything = set(sampler.processes) | set(state["pids"].values())
        groups = process_groups()
        left = sorted({pid for pid in everything if alive(pid)} |
                      {pid for leader in state["pids"].values() for pid in groups.get(leader, [])})
        report["left_after_down"] = [{"pid": pid, "name": describe(pid)} for pid in left]
        report["processes"] = per_process(sampler.samples, sampler.processes, args.warmup_s)
        report["samples"] = [{"t": s["t"], "rss": {str(p): v for p, v in s["rss"].items()}} for s in sampler.samples]
    return report


def verdict(report: dict, max_growth_mib: float) -> list[str]:
    failures = []
    for row in report["processes"]:
        if row["growth_mib"] > max_growth_mib:
            failures.append(f"{row['component']} {row['name']} (pid {row['pid']}) grew {row['growth_mib']} MiB "
                            f"> {max_growth_mib} MiB")
    for key, value in report.get("streams_after", {}).items():
        if value is None:
            failures.append(f"{key}: its gauge is not published (cannot tell whether streams leaked)")
        elif value:
            failures.append(f"{key} = {value:g} after the load stopped (a leaked stream)")
    if "streams_after" not in report:
        failures.append("the live-stream gauges were not read")
    if not report.get("load", {}).get("answered"):
        failures.append(f"the load got no answered turn (see {report.get('load', {}).get('log')})")
    if report["left_after_down"]:
        failures.append(f"processes left after `make down`: {report['left_after_down']}")
    if report["down"]["exit_code"] != 0:
        failures.append(f"`make down` exited {report['down']['exit_code']}")
    return failures


def print_report(report: dict, failures: list[str]) -> None:
    print(f"\n{'component':<13} {'process':<36} {'pid':>7} {'n':>4} {'start':>8} {'peak':>8} {'end':>8} {'growth':>8} "
          f"{'late/min':>9}  (MiB)")
    for row in report["processes"]:
        print(f"{row['component']:<13} {row['name'][:36]:<36} {row['pid']:>7} {row['samples']:>4} {row['start_mib']:>8.1f} "
              f"{row['peak_mib']:>8.1f} {row['end_mib']:>8.1f} {row['growth_mib']:>+8.1f} {row['late_mib_per_min']:>+9.2f}")
    total = {k: round(sum(r[k] for r in report["processes"]), 1) for k in ("start_mib", "end_mib", "growth_mib")}
    print(f"{'all':<13} {'':<36} {'':>7} {'':>4} {total['start_mib']:>8.1f} {'':>8} {total['end_mib']:>8.1f} "
          f"{total['growth_mib']:>+8.1f}")
    load = report.get("load", {})
    print(f"\nload: {load.get('sessions')} sessions, {load.get('answered')}/{load.get('turns')} turns answered, "
          f"errors {load.get('errors_by_status')}, p95 TTFA {load.get('ttfa_ms_p95')} ms, in {load.get('seconds')} s")
    print(f"live streams after the load: {report.get('streams_after')}")
    print(f"make down: {report['down']['seconds']} s, processes left: {len(report['left_after_down'])}")
    print("soak: PASS" if not failures else "soak: FAIL\n  " + "\n  ".join(failures))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=Path("build/checkpoints/tiny"))
    parser.add_argument("--workdir", type=Path, default=Path("build/stack"), help="where `up` keeps the stack's files")
    parser.add_argument("--duration-s", type=float, default=600.0, help="steady load for this long (SOAK_S)")
    parser.add_argument("--interval-s", type=float, default=5.0, help="RSS sampled this often")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="growth is counted from the first sample after this (default: a tenth of the run, at most 60 s)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--turns", type=int, default=3, help="turns per session (history grows in Redis)")
    parser.add_argument("--think-s", type=float, default=0.5)
    parser.add_argument("--barge-in", type=float, default=0.1)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--max-growth-mib", type=float, default=64.0,
                        help="fail if a process's RSS grows more than this after warm-up")
    parser.add_argument("--drain-s", type=float, default=10.0, help="how long the stream gauges may take to read 0")
    parser.add_argument("--out", type=Path, default=Path("build/soak"))
    args = parser.parse_args(argv)
    if args.warmup_s is None:
        args.warmup_s = min(60.0, args.duration_s / 10)
    report = soak(args)
    failures = verdict(report, args.max_growth_mib)
    report["failures"] = failures
    (args.out / "soak.json").write_text(json.dumps(report, indent=2))
    print_report(report, failures)
    print(f"report with every sample: {args.out / 'soak.json'}")
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
