# glmvoice: one verb per task. `make help` lists them.
# Set-up steps are file targets, so each runs once and again only when its inputs change.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
APT_STAMP := build/.apt-installed
PROTO_SRC := $(wildcard protos/glmvoice/v1/*.proto)
PROTO_OUT := $(patsubst protos/%.proto,%_pb2.py,$(PROTO_SRC))
CKPT := build/checkpoints/tiny
# Committed, small: `make train-demo` rebuilds them (training/checkpoints/demo/README.md says how they were made).
DEMO_CKPT := training/checkpoints/demo
DEMO_QUESTION ?= what is four plus five
# A voice no training data uses: piper's neural joe-us (also flite:awb, flite:rms; training.demo_eval measures all three).
DEMO_VOICE ?= piper:joe-us
PYTEST_ARGS ?=

APT_PACKAGES := redis-server espeak-ng sox pocketsphinx-testdata flite
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: help setup lint import-graph protos tiny train-tiny train-demo info engines demo up down test test-slow test-gpu mutate test-k8s bench bench-gpu loadtest capacity soak promote rollback chart-tools kube-assets chart images clean

help:  ## list the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: $(APT_STAMP) $(VENV_STAMP) protos  ## install system packages, the pinned venv and generated gRPC code

$(APT_STAMP): Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; fi
	@mkdir -p $(@D) && touch $@

$(VENV_STAMP): pyproject.toml
	[ -x $(PY) ] || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,triton]"
	touch $@

protos: $(PROTO_OUT)  ## generate gRPC code from protos/ into glmvoice/v1 (a build output, ignored)

# Protos live at protos/glmvoice/v1/, so generated code imports `glmvoice.v1.*` and lands inside the package.
$(PROTO_OUT): $(PROTO_SRC) $(VENV_STAMP)
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)
	touch glmvoice/v1/__init__.py

tiny: setup  ## build the tiny checkpoints with our own training code into build/checkpoints/tiny
	$(PY) -m training.tiny --out $(CKPT)

info: setup  ## parameter counts and vocabulary facts of the real-size presets
	.venv/bin/glmvoice info --preset glm-4-voice

train-tiny: setup  ## the tiny checkpoints trained longer (~1.5 h on 2 cores), evaluated with faster-whisper
	$(PY) -m training.tiny --plan train-tiny --asr --out $(CKPT)

engines: tiny  ## ONNX exports, then TensorRT plans into build/engines (GPU nodes; stops with a message elsewhere)
	$(PY) -m training.export.tensorrt --checkpoints $(CKPT) --out build/engines

demo: setup  ## README's first command: a spoken question (a voice training never heard) through the whole stack, answered aloud
	$(PY) -m training.whisper_init --restore $(DEMO_CKPT)/glm-4-voice-tokenizer
	$(PY) -m training.demo_eval --say "$(DEMO_QUESTION)" --voices $(DEMO_VOICE) --wav build/demo/question.wav
	$(PY) -m services.demo --checkpoints $(DEMO_CKPT) --clip build/demo/question.wav --question "$(DEMO_QUESTION)"
	$(PY) -m training.demo_eval --hear build/demo

train-demo: setup  ## the committed demo checkpoints again (plan "demo", one thread), then their evaluation in unseen voices
	$(PY) -m training.tiny --plan demo --out $(DEMO_CKPT) --threads 1
	$(PY) -m training.whisper_init --split $(DEMO_CKPT)/glm-4-voice-tokenizer
	$(PY) -m training.demo_eval --checkpoints $(DEMO_CKPT) --out $(DEMO_CKPT)/demo_eval

up: tiny  ## Redis, Triton, orchestrator and gateway in the background; prints their addresses (kept in build/stack/stack.json for `glmvoice chat`)
	$(PY) -m services.local_stack up --checkpoints $(CKPT)

down:  ## stop what `make up` started
	$(PY) -m services.local_stack down

lint: setup  ## ruff (lint + import order), the layering contracts (import-linter, model_repo/ruff.toml), mypy on glmvoice/
	.venv/bin/ruff check .
	.venv/bin/lint-imports
	.venv/bin/mypy

import-graph: setup  ## the import graph and the layering contracts before the moves (bea534a) and at HEAD
	.venv/bin/python .ci/import_graph.py $(REVS)

test: setup chart-tools kube-assets lint  ## README's second command: lint, then the test suite (slow and GPU suites excluded)
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup  ## training-quality and other long suites
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-gpu: setup  ## CUDA suites (on a GPU node; elsewhere each test is skipped with that reason and make exits 0)
	@$(PY) -c "import torch; print(f'CUDA: {torch.cuda.get_device_name(0)}' if torch.cuda.is_available() else 'no CUDA device here: the gpu tests are collected and skipped; run make test-gpu on a GPU node')"
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

MUTATE ?=
MUTATE_BUDGET_S ?= 900
mutate: setup  ## mutation testing (mutmut) of the critical modules: score and survivors per target; MUTATE=a,b picks targets (not in CI)
	$(PY) -m tests.mutation.run $(MUTATE) --budget-s $(MUTATE_BUDGET_S)

LOADTEST_ARGS ?=
bench: tiny  ## the ratios the project is held to (one run each), then the per-network benchmarks (loadtest/bench)
	$(PY) -m loadtest.bench.ratios --checkpoints $(CKPT)
	@set -e; for b in decoder_stream speech_tokenizer llm_engine triton_cost bench_affinity; do \
	  echo "== loadtest.bench.$$b"; $(PY) -m loadtest.bench.$$b; done

loadtest: tiny  ## a local stack (tiny checkpoints) under 8 sessions x 3 turns, ours vs baseline; report in build/loadtest
	$(PY) -m loadtest --local --checkpoints $(CKPT) --out build/loadtest $(LOADTEST_ARGS)

capacity: tiny  ## the most concurrent real-time calls (p95 TTFA SLO, underrun) and replies under load vs alone
	$(PY) -m loadtest --local --checkpoints $(CKPT) --skip-workload --find-capacity --quality --out build/loadtest/capacity $(LOADTEST_ARGS)

test-k8s: setup chart-tools kube-assets  ## chart and API-server tests only
	$(PY) -m pytest tests/k8s $(PYTEST_ARGS)

chart-tools:  ## pinned helm and kubectl into build/tools (cached in ~/.cache/glmvoice)
	charts/tools/install-helm.sh

kube-assets:  ## kube-apiserver 1.20 and etcd for tests/k8s (built once, cached in ~/.cache/glmvoice)
	tests/k8s/build-kube-assets.sh

RELEASE ?= glmvoice
IMAGE ?= glmvoice
VERSION ?= 0.1.0
chart: setup chart-tools  ## lint, validate (Kubernetes 1.28 and 1.33) and package the Helm chart
	build/tools/helm lint --strict charts/glmvoice
	set -e; for f in charts/glmvoice/ci/*-values.yaml; do for k in 1.28.0 1.33.0; do \
	  build/tools/helm template $(RELEASE) charts/glmvoice -f $$f --kube-version $$k \
	    --api-versions admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy | .venv/bin/kubernetes-validate --strict --quiet -k $$k -; done; done
	build/tools/helm package charts/glmvoice -d build/charts

CUDA_TORCH := --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
images:  ## the app and Triton images (Dockerfile targets), CPU and CUDA variants (needs a container engine)
	docker build -f charts/image/Dockerfile -t $(IMAGE):$(VERSION) .
	docker build -f charts/image/Dockerfile --target triton -t $(IMAGE):$(VERSION)-triton .
	docker build -f charts/image/Dockerfile $(CUDA_TORCH) -t $(IMAGE):$(VERSION)-cuda .
	docker build -f charts/image/Dockerfile $(CUDA_TORCH) --target triton -t $(IMAGE):$(VERSION)-cuda-triton .

bench-gpu: setup  ## real-size presets, random weights, bf16 on CUDA: roofline, TTFA at 1/8/32 calls, capacity (a GPU node)
	$(PY) -m loadtest.bench.real_size --device cuda --preset glm-4-voice
	$(PY) -m loadtest.gpu --out build/loadtest/gpu

SOAK_S ?= 600
SOAK_ARGS ?=
soak: tiny  ## bounded soak (SOAK_S, default 600 s) of `make up`'s stack at steady load over loopback: RSS of every process, leaked streams, then `make down` leaves nothing
	$(PY) -m loadtest.soak --checkpoints $(CKPT) --duration-s $(SOAK_S) $(SOAK_ARGS)

MODEL ?= llm
promote: setup  ## make promote MODEL=llm CANDIDATE=<id> (env: REDIS_ADDR, GLMVOICE_MODEL_REPOSITORY, GLMVOICE_STORE, TRITON_ADDRS)
	.venv/bin/glmvoice promote $(MODEL) --candidate $(CANDIDATE)

rollback: setup  ## make rollback MODEL=llm: serve the previous checkpoint again
	.venv/bin/glmvoice rollback $(MODEL)

clean:  ## remove build outputs (checkpoints, generated code)
	rm -rf build glmvoice/v1
