"""The import graph between glmvoice/, services/, training/ and model_repo/ at any commits, and today's layering
contracts held against each: the before/after of docs/architecture.md "Layers".

    .venv/bin/python .ci/import_graph.py              # bea534a (before the moves) and HEAD
    .venv/bin/python .ci/import_graph.py [-v] REV [REV...]   # -v: edges per subpackage

Commits, not the working tree: commit first to see your change. Each commit is exported (`git archive`)
into a temporary directory, so the checkout is left alone. For each:
- the cross-package edges: direct imports from one top-level package into another, counted per pair (grimp,
  which import-linter uses), plus model_repo/'s Triton adapters (not an importable package: read with ast).
  A pair holding an import the layering forbids is marked BROKEN, and those imports are listed below it.
- import-linter's report with this checkout's [tool.importlinter] contracts, fitted to that tree: only the
  root packages it has, and ignore_imports that match nothing there are not errors.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REVS = ("bea534a", "HEAD")
PACKAGES = ("glmvoice", "services", "training", "loadtest")  # importable roots, where a tree has them


def broken(source: str, target: str) -> bool:
    """Does a direct import source -> target (dotted, model_repo.* for adapters) break the layering?"""
    src, dst = source.split(".")[0], target.split(".")[0]
    if src == "glmvoice":
        return dst in ("services", "training", "loadtest")
    if src in ("services", "model_repo"):
        return dst == "training" or (src == "model_repo" and dst == "services")
    return False


def edges(tree: Path) -> set[tuple[str, str]]:
    """Every direct import (source module, target module) from one top-level package into another."""
    import grimp

    roots = [p for p in PACKAGES if (tree / p / "__init__.py").exists()]
    graph = grimp.build_graph(*roots, cache_dir=None)
    found = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if module.split(".")[0] != imported.split(".")[0]:
                found.add((module, imported))
    for path in sorted((tree / "model_repo").glob("*/*/model.py")):
        source = f"model_repo.{path.parent.parent.name}"
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            found.update((source, name) for name in names if name.split(".")[0] in roots)
    return found


def listing(found: set[tuple[str, str]], depth: int) -> list[str]:
    """Edges counted per (source, target) cut to `depth` names; the broken ones below their pair in full."""
    def cut(name: str) -> str:
        return ".".join(name.split(".")[:depth])

    pairs = Counter((cut(a), cut(b)) for a, b in found)
    lines = []
    for (source, target), count in sorted(pairs.items()):
        bad = sorted((a, b) for a, b in found if (cut(a), cut(b)) == (source, target) and broken(a, b))
        lines.append(f"{source} -> {target}: {count}" + ("   BROKEN" if bad else ""))
        lines += [f"    {a} -> {b}" for a, b in bad]
    return lines


def contracts_config(tree: Path) -> Path:
    """This checkout's [tool.importlinter], fitted to `tree`, written as a TOML file in it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    roots = [p for p in config["root_packages"] if (tree / p / "__init__.py").exists()]
    lines = ["[tool.importlinter]", f"root_packages = {json.dumps(roots)}",
             f"include_external_packages = {json.dumps(config.get('include_external_packages', False))}", ""]
    for contract in config["contracts"]:
        lines.append("[[tool.importlinter.contracts]]")
        contract = {**contract, "unmatched_ignore_imports_alerting": "none"}
        lines += [f"{key} = {json.dumps(value)}" for key, value in contract.items()]  # JSON values are TOML
        lines.append("")
    path = tree / ".importlinter-fitted.toml"
    path.write_text("\n".join(lines))
    return path


def report(rev: str, depth: int) -> int:
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix=f"import-graph-{sha}-") as tmp:
        tree = Path(tmp)
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = {**os.environ, "PYTHONPATH": tmp}
        print(f"=== {rev} ({sha}): imports across packages (source -> target: module-to-module imports) ===",
              flush=True)
        # A fresh interpreter whose sys.path starts at the exported tree (not this checkout, not the editable
        # install): grimp finds the packages there.
        listing = subprocess.run([sys.executable, __file__, "--edges", tmp, str(depth)], cwd=tmp, env=env, check=True,
                                 capture_output=True, text=True).stdout
        print(listing, end="", flush=True)
        print(f"=== {rev} ({sha}): lint-imports with this checkout's contracts ===", flush=True)
        lint = Path(sys.executable).with_name("lint-imports")
        done = subprocess.run([str(lint), "--no-cache", str(contracts_config(tree))], cwd=tmp, env=env,
                              capture_output=True, text=True)
        out = done.stdout
        print(out[out.find("---------\nContracts"):].strip() + "\n" + done.stderr, flush=True)  # past the banner
        return done.returncode


def main(argv: list[str]) -> int:
    if argv[:1] == ["--edges"]:
        tree = Path(argv[1])
        found = importlib.util.find_spec("glmvoice").origin  # the tree's own package, not the editable install's
        assert found and Path(found).is_relative_to(tree), found
        print("\n".join(listing(edges(tree), depth=int(argv[2]))))
        return 0
    depth = 2 if "-v" in argv else 1  # -v: per subpackage (glmvoice.cli -> services.promoter)
    codes = [report(rev, depth) for rev in ([a for a in argv if a != "-v"] or DEFAULT_REVS)]
    return 0 if codes[-1] == 0 else 1  # the last commit (HEAD by default) must keep every contract


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
