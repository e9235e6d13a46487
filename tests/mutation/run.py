"""`make mutate`: mutation testing (mutmut, pinned in the test extra) over the critical modules.

Each target names a source file, the functions to mutate there (mutmut mutant-name globs; on two shared cores
a whole engine is hours, so each target is scoped to the code that decides what users get) and the tests that
should kill its mutants. Every target runs in its own scratch copy of the repository (mutmut reads its config
from pyproject.toml and rewrites the source tree), so the work tree is never touched. Per target it prints
killed / survived / timeout / no tests, the score (killed + timeout over all tested), the survivors, and
whether the time budget cut the run short.

  make mutate                                  every target, MUTATE_BUDGET_S seconds each (default 900)
  make mutate MUTATE=engine-prefix,registry    a few targets
  .venv/bin/python -m tests.mutation.run --list
  .venv/bin/python -m tests.mutation.run engine-prefix --tests-from <commit> --tests tests/unit/test_llm_engine.py
                                               (a "before" run: that commit's tests against today's code)

When a module moves (as PrefixStore and _reuse_prefix moved from llm_engine to llm_scheduler), update its TARGETS entry: file,
dotted module and function globs. Function globs are mutmut names: `x_<func>` for a module function,
`xǁ<Class>ǁ<method>` for a method, then `__mutmut_<n>`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COPY = ("glmvoice", "services", "training", "model_repo", "tests", "protos", "charts", "pyproject.toml")
CLASS_SEP = "ǁ"  # mutmut's separator in method mutant names
SHOWN = 12


@dataclass(frozen=True)
class Target:
    file: str  # source file, relative to the repository root
    functions: tuple[str, ...]  # "func" or "Class.method" (fnmatch globs on the name)
    tests: tuple[str, ...]  # pytest selection that should kill the mutants


TARGETS: dict[str, Target] = {
    "engine-prefix": Target("glmvoice/runtime/llm_scheduler.py", ("PrefixStore.put", "Scheduler._reuse_prefix"),
                            ("tests/unit/test_llm_engine.py", "tests/unit/test_llm_engine_prefix.py")),
    "decoder-flow": Target("glmvoice/models/flow.py", ("Flow.sample", "Flow.time_grid"),
                           ("tests/unit/test_speech_decoder.py", "tests/unit/test_decoder_reference.py")),
    "decoder-stream": Target("glmvoice/runtime/decoder_stream.py", ("DecoderStreams._settle_mel", "DecoderStreams._settle_audio"),
                             ("tests/unit/test_decoder_stream.py",)),
    "orchestrator-reply": Target("services/orchestrator/converse.py", ("ConverseSession._kept_ids", "ConverseSession.on_cancel"),
                                 ("tests/integration/test_orchestrator_turns.py",)),
    "auth": Target("services/orchestrator/auth.py", ("ApiKeys.*",), ("tests/unit/test_auth.py",)),
    "registry": Target("services/promoter/registry.py", ("Registry.mark_promoted", "Registry.mark_rolled_back"),
                       ("tests/integration/test_promotion.py::test_racing_promotions_have_exactly_one_winner",
                        "tests/integration/test_promotion.py::test_transitions_are_recorded_with_who_when_and_why",
                        "tests/integration/test_promotion.py::test_refused_transitions_change_nothing")),
}


def mutant_globs(target: Target) -> list[str]:
    module = target.file.removesuffix(".py").replace("/", ".")
    globs = []
    for name in target.functions:
        cls, _, func = name.rpartition(".")
        mangled = f"x{CLASS_SEP}{cls}{CLASS_SEP}{func}" if cls else f"x_{func}"
        globs.append(f"{module}.{mangled}__mutmut_*")
    return globs


def git_extract(ref: str, paths: list[str], into: Path) -> None:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, *paths], check=True, capture_output=True).stdout
    subprocess.run(["tar", "x", "-C", str(into)], input=archive, check=True)


def scratch_copy(target: Target, tests: tuple[str, ...], tests_from: str | None, source_from: str | None) -> Path:
    work = Path(tempfile.mkdtemp(prefix="glmvoice-mutate-"))
    if source_from:  # a fixed commit, so runs started later compare the same code
        present = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", source_from], check=True,
                                 capture_output=True, text=True).stdout.split()
        git_extract(source_from, [n for n in COPY if n in present], work)
        shutil.copytree(ROOT / "glmvoice" / "v1", work / "glmvoice" / "v1", dirs_exist_ok=True)  # generated stubs
    else:
        for name in COPY:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "mutants", "build"))
            elif src.exists():
                shutil.copy2(src, work / name)
    if tests_from:  # the test suite as it was at a commit (a "before" run), against the same source
        shutil.rmtree(work / "tests")
        git_extract(tests_from, ["tests"], work)
    top = target.file.split("/")[0]
    # The pytest config keeps its markers; mutmut gets the file to mutate and the tests to run.
    config = {
        "source_paths": [top], "only_mutate": [target.file],
        "also_copy": [n for n in COPY if n not in (top, "tests", "pyproject.toml")],
        "pytest_add_cli_args_test_selection": list(tests),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-m", "not slow and not gpu", "-x"],
        "process_isolation": "fork", "use_git_change_detection": False, "track_dependencies": False,
    }
    with open(work / "pyproject.toml", "a") as f:
        f.write("\n[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
    return work


def run_target(name: str, target: Target, tests: tuple[str, ...], budget_s: float, tests_from: str | None = None,
               source_from: str | None = None) -> dict:
    work = scratch_copy(target, tests, tests_from, source_from)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    mutmut = [sys.executable, "-m", "mutmut"]
    started = time.monotonic()
    cut = False
    try:
        proc = subprocess.Popen([*mutmut, "run", "--max-children", "1", *mutant_globs(target)], cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=budget_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 15)
            out, _ = proc.communicate()
            cut = True
        results = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True, text=True).stdout
        verdicts = dict(re.findall(r"^\s*(\S+__mutmut_\d+): (.+)$", results, flags=re.M))
        wanted = [re.compile(fnmatch_to_re(g)) for g in mutant_globs(target)]
        verdicts = {m: v.strip() for m, v in verdicts.items() if any(w.fullmatch(m) for w in wanted)}
        survivors = sorted(m for m, v in verdicts.items() if v == "survived")
        # `mutmut show` costs seconds each: diffs for the first SHOWN survivors, names for the rest.
        diffs = {m: subprocess.run([*mutmut, "show", m], cwd=work, env=env, capture_output=True, text=True).stdout
                 if i < SHOWN else "" for i, m in enumerate(survivors)}
        if not verdicts:
            print(out[-3000:])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    counts: dict[str, int] = {}
    for v in verdicts.values():
        counts[v] = counts.get(v, 0) + 1
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    tested = killed + counts.get("survived", 0)
    return {"target": name, "file": target.file, "tests": list(tests), "counts": counts, "verdicts": verdicts,
            "score": killed / tested if tested else None, "survivors": diffs, "cut_by_budget": cut,
            "seconds": round(time.monotonic() - started, 1)}


def fnmatch_to_re(glob: str) -> str:
    return re.escape(glob).replace(r"\*", ".*")


def report(result: dict) -> None:
    score = "n/a" if result["score"] is None else f"{result['score']:.0%}"
    print(f"== {result['target']} ({result['file']}): score {score}  {result['counts']}  "
          f"{result['seconds']} s{'  CUT BY THE TIME BUDGET' if result['cut_by_budget'] else ''}")
    print(f"   tests: {' '.join(result['tests'])}")
    for name, diff in result["survivors"].items():
        print(f"   survived: {name}")
        for line in diff.splitlines():
            if line.startswith(("+", "-")) and not line.startswith(("+++", "---")):
                print(f"      {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description="mutation testing of the critical modules (mutmut)")
    parser.add_argument("targets", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--budget-s", type=float, default=float(os.environ.get("MUTATE_BUDGET_S", 900)),
                        help="wall-clock seconds per target (env MUTATE_BUDGET_S)")
    parser.add_argument("--tests", nargs="+", help="override the target's test selection (e.g. a 'before' run)")
    parser.add_argument("--tests-from", metavar="REF", help="take tests/ from this git commit (a 'before' run)")
    parser.add_argument("--source-from", metavar="REF", help="take the code from this git commit (default: the work tree)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        for name, t in TARGETS.items():
            print(f"{name}: {t.file} [{', '.join(t.functions)}] <- {' '.join(t.tests)}")
        return
    names = [n for arg in args.targets for n in arg.split(",") if n] or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        sys.exit(f"unknown targets {unknown}; known: {list(TARGETS)}")
    results = []
    for name in names:
        result = run_target(name, TARGETS[name], tuple(args.tests or TARGETS[name].tests), args.budget_s, args.tests_from,
                            args.source_from)
        report(result)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
