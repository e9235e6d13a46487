"""The package works outside this checkout: a built wheel, installed into a fresh virtual environment and run
from another directory, finds its Triton templates (promotion's version-adding step), serves a turn of the LM
through the in-process backend, and registers the commands that live with services and training."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Runs inside the fresh environment, from a directory outside the checkout.
PROBE = r"""
import asyncio, json, sys
from pathlib import Path

import glmvoice, services
from services.orchestrator.backends import LMRequest
from services.orchestrator.backends.inprocess import InProcessBackend
from services.triton.repository import add_version, templates_dir
from glmvoice.sampling import SamplingParams

tokenizer_dir, llm_dir, decoder_dir, repository = map(Path, sys.argv[1:5])
version = add_version(repository, "llm", llm_dir)

async def one_turn():
    backend = InProcessBackend(tokenizer_dir, llm_dir, decoder_dir)
    await backend.start()
    try:
        prompt = backend.text_tokenizer.encode_prompt("hello")
        stream = backend.generate(LMRequest(prompt, SamplingParams(temperature=0.0), 5, ""))
        return [token async for token in stream], backend.engine.config.max_slots
    finally:
        await backend.close()

ids, max_slots = asyncio.run(one_turn())
print(json.dumps({"glmvoice": glmvoice.__file__, "services": services.__file__, "templates": str(templates_dir()),
                  "version": version, "ids": ids, "max_slots": max_slots}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with only the wheel installed; the pinned dependencies come from this venv's site-packages
    through a path entry (a plain path: the editable install's finder in there is not activated)."""
    work = tmp_path_factory.mktemp("packaging")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(work / "dist")], check=True, cwd=work)
    [wheel] = (work / "dist").glob("glmvoice-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_wheel_runs_outside_the_checkout(installed, tmp_path, tiny_speech_tokenizer_dir, tiny_llm_dir,
                                         tiny_speech_decoder_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GLMVOICE_MODEL_REPO_TEMPLATES")}
    repository = tmp_path / "repository"
    out = subprocess.run(
        [str(installed / "bin" / "python"), "-c", PROBE, str(tiny_speech_tokenizer_dir), str(tiny_llm_dir),
         str(tiny_speech_decoder_dir), str(repository)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for package in ("glmvoice", "services"):
        assert report[package].startswith(str(installed)), report  # not this checkout's copy
    assert report["templates"] == str(installed / "share" / "glmvoice" / "model_repo")
    served = repository / "llm"
    assert report["version"] == 1
    assert (served / "config.pbtxt").read_text() == (REPO / "model_repo" / "llm" / "config.pbtxt").read_text()
    assert (served / "1" / "model.py").read_text() == (REPO / "model_repo" / "llm" / "1" / "model.py").read_text()
    assert len(report["ids"]) >= 1 and report["max_slots"] > 0

    # Commands registered by services and training (entry points), and training's data files.
    help_text = subprocess.run([str(installed / "bin" / "glmvoice"), "--help"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, check=True).stdout
    for command in ("promote", "rollback", "jobs"):
        assert command in help_text
    data = subprocess.run([str(installed / "bin" / "python"), "-c",
                           "import training, pathlib; r = pathlib.Path(training.__file__).parent; "
                           "print((r / 'eval_gate.yaml').is_file(), (r / 'data' / 'sentences_en.txt').is_file())"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert data == ["True", "True"]
