# FineTune Operator: every developer and CI entry point.
#   make quickstart   set up, then fine-tune a tiny model locally on CPU
#   make test         set up, then lint and run the whole test suite (what CI runs)
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
# Tools and builds are cached outside the clone, keyed by version, so a fresh clone on the
# same machine (CI) reuses them.
CACHE ?= $(HOME)/.cache/finetune-operator
UV_VERSION := 0.13.9
UV := $(CACHE)/uv-$(UV_VERSION)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := hardlink

CRD := crds/finetune.dev_finetunejobs.yaml
PROGRESS_CRD := crds/finetune.dev_finetunejobprogresses.yaml
API_REFERENCE := docs/api-reference.md

.PHONY: help install lint fmt crds test unit integration e2e quickstart quickstart-cluster run-operator tools cluster-up cluster-down clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-19s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(CACHE)/uv-$(UV_VERSION)
	$(CACHE)/uv-$(UV_VERSION)/bin/pip install --quiet uv==$(UV_VERSION)

# --compile-bytecode: the libraries' .pyc are written once, here. Python writes them on first
# import otherwise, but not where PYTHONDONTWRITEBYTECODE is set, as it is on this project's
# development machines (where hack/ci-fresh.sh measures CI): there every process compiled
# torch, transformers and peft again, and `import fttrainer.recipe` took 22 CPU-s, not 11.
$(VENV)/.installed: uv.lock pyproject.toml api/pyproject.toml operator/pyproject.toml trainer-image/pyproject.toml client/pyproject.toml \
		testkit/pyproject.toml | $(UV)
	$(UV) sync --locked --all-packages --compile-bytecode
	touch $@

install: $(VENV)/.installed ## create .venv with the pinned dependencies (uv.lock)

lint: install ## ruff (lint + format check), the import layers, mypy --strict (API, operator, trainer, test kit), hadolint, helm lint, actionlint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(MAKE) lint-docker
	hack/build.sh helm >/dev/null
	"$$(hack/bin-path.sh helm)" lint --strict helm/finetune-operator
	$(MAKE) lint-workflows

lint-workflows: ## actionlint on .github/workflows (built from its Go module)
	@hack/build.sh actionlint >/dev/null
	"$$(hack/bin-path.sh actionlint)" .github/workflows/*.yaml

fmt: install ## format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

crds: install ## regenerate crds/ and the API reference from the pydantic models
	$(BIN)/finetune-crd -o $(CRD)
	$(BIN)/finetune-crd --kind progress -o $(PROGRESS_CRD)
	cp $(CRD) $(PROGRESS_CRD) helm/finetune-operator/crds/
	$(BIN)/python -m ftapi.reference -o $(API_REFERENCE)

unit: install ## unit tests only (no cluster), the Helm chart's included
	$(BIN)/pytest tests/unit tests/helm

integration: install ## tests against the local control plane and S3 server (builds the control plane, Kueue, Kubeflow Trainer)
	hack/build.sh control-plane platform
	$(BIN)/pytest tests/integration

e2e: install ## the built images on the local cluster's real node (root; builds what is missing)
	FTO_E2E_REQUIRED=1 $(BIN)/pytest tests/e2e

# hack/test.sh builds the Go tools in the background while lint and the tiers without a
# cluster run, then the integration tier; FTO_TEST_WORKERS / FTO_INTEGRATION_WORKERS set the
# pytest-xdist workers. `$(BIN)/pytest` alone still runs every tier in one process.
test: ## set up, lint, and run every test tier (what CI runs; prints each step's time)
	hack/test.sh

# Not in `make test` (its own control plane build would take CI past its budget): run it when
# the CRD, its CEL rules or the chart change. PLAN=1 prints what it would build and run.
test-kube-oldest: install ## the CRD's rules, the chart and an operator smoke on the oldest supported Kubernetes (about 10 min)
	hack/test-kube-oldest.sh $(if $(PLAN),--plan)

# Each target builds only what it runs (hack/build.sh skips what is cached): cluster-up the
# control plane (and, as root, the real node's tools), not Kueue or Kubeflow Trainer.
tools: ## build every Go tool: control plane, real node, Kueue, Kubeflow Trainer (cached, pinned)
	hack/build.sh

cluster-up: ## start the local control plane, fake GPU nodes and S3 (builds what it needs first)
	hack/cluster-up.sh

cluster-down: ## stop everything cluster-up started
	hack/cluster-down.sh

QUICKSTART_OUTPUT ?= results/quickstart
RUN_OPERATOR_ARGS ?= --no-leader-election

quickstart: install ## fine-tune a tiny model locally on CPU (about a minute)
	@test -f .quickstart/tiny-llama/config.json || $(BIN)/python -m fttrainer.tiny --arch llama --output .quickstart/tiny-llama
	$(BIN)/finetune validate examples/quickstart-cpu.yaml
	$(BIN)/finetune run examples/quickstart-cpu.yaml --output $(QUICKSTART_OUTPUT)

quickstart-cluster: install ## the quick start as a real pod on the local cluster's node (root; builds the images, installs the operator)
	hack/quickstart-cluster.sh

run-operator: install ## the operator against your current kubeconfig (RUN_OPERATOR_ARGS, e.g. --namespace team-a)
	$(BIN)/python -m ftoperator $(RUN_OPERATOR_ARGS)

clean: ## remove the virtualenv and caches inside the clone
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# --- container images ---------------------------------------------------------------------
# Both images build from the repository root (they need uv.lock and the workspace's
# pyproject files); BuildKit is required (RUN --mount). Extra flags, e.g.
#   make images DOCKER_BUILD_ARGS="--build-arg FLASH_ATTN_VERSION=2.8.3"
TRAINER_IMAGE ?= finetune-trainer:dev
OPERATOR_IMAGE ?= finetune-operator:dev
DOCKER ?= docker
DOCKER_BUILD_ARGS ?=
DOCKERFILES := trainer-image/Dockerfile operator/Dockerfile

.PHONY: lint-docker lint-workflows images release bench bench-trainer bench-data bench-storage bench-create-cost bench-operator bench-realnode

lint-docker: install ## hadolint both Dockerfiles (rules and their exceptions: .hadolint.yaml)
	$(BIN)/hadolint --config .hadolint.yaml $(DOCKERFILES)

# With a Docker engine: `docker build`, as users build. Without one (this project's CI): the
# same Dockerfiles with BuildKit into the local cluster's containerd, on bases made from
# Debian's archive when no registry is reachable (hack/images.sh; needs root). Either way a
# failure is an error, never a skip: someone who asked for images must not believe they exist.
images: ## build the trainer and operator images (docker build, else BuildKit into the local node: hack/images.sh)
	@if $(DOCKER) info >/dev/null 2>&1; then \
	  DOCKER_BUILDKIT=1 $(DOCKER) build -f trainer-image/Dockerfile -t $(TRAINER_IMAGE) $(DOCKER_BUILD_ARGS) . && \
	  DOCKER_BUILDKIT=1 $(DOCKER) build -f operator/Dockerfile -t $(OPERATOR_IMAGE) $(DOCKER_BUILD_ARGS) .; \
	else \
	  echo "make images: no Docker engine ('$(DOCKER) info' failed): building with BuildKit into the local node (hack/images.sh)" >&2; \
	  TRAINER_IMAGE=$(TRAINER_IMAGE) OPERATOR_IMAGE=$(OPERATOR_IMAGE) hack/images.sh; \
	fi

# The release a platform team installs: both images and the chart (its images pinned by
# digest) pushed to REGISTRY (hack/release.sh; with the local cluster up, REGISTRY=$FTO_REGISTRY
# is its registry: hack/registry.sh). Prints each artifact's digest and size.
release: ## build and push both images and the chart: make release VERSION=0.2.0 REGISTRY=registry.internal/ml
	@VERSION=$(VERSION) REGISTRY=$(REGISTRY) hack/release.sh

# --- benchmarks ---------------------------------------------------------------------------
# `make bench` runs every benchmark in BENCH_TARGETS one after another (never in parallel:
# they measure throughput). Add a bench-<thing> target below and append it here.
BENCH_TARGETS := bench-trainer bench-data bench-storage bench-create-cost bench-operator bench-realnode
BENCH_TRAINER_ARGS ?=
BENCH_STORAGE_ARGS ?=
BENCH_CREATE_COST_ARGS ?=
BENCH_OPERATOR_ARGS ?=
BENCH_REALNODE_ARGS ?=

gpu-kit: install ## wheels a lent GPU machine lacks (.gpu-kit/) for hack/gpu/run.sh: GPU tier + benchmarks
	UV=$(UV) hack/gpu/kit.sh

bench: ## run every benchmark (BENCH_TARGETS), one at a time
	@for target in $(BENCH_TARGETS); do $(MAKE) $$target; done

bench-trainer: install ## our trainer vs plain TRL SFTTrainer: tokens/s, peak memory, MFU (docs/benchmarks.md)
	$(BIN)/python bench/trainer.py $(BENCH_TRAINER_ARGS)

bench-data: install ## 500,000 chat rows: our data path (1 rank, 2 ranks, a restart) vs TRL SFTTrainer: time, memory (docs/benchmarks.md)
	$(BIN)/python bench/data.py $(BENCH_DATA_ARGS)

bench-storage: install ## checkpoint upload: our storage layer vs a plain boto3 loop vs a raw copy (docs/storage.md)
	hack/cluster-up.sh >/dev/null
	. "$${FTO_STATE:-$$HOME/.cache/finetune-operator/cluster}/env" && $(BIN)/python bench/storage.py $(BENCH_STORAGE_ARGS)

bench-create-cost: install ## where a FineTuneJob create's time goes: CRD variants (no CEL, no defaults, ...) and TrainJob's (docs/benchmarks.md)
	hack/cluster-up.sh >/dev/null
	. "$${FTO_STATE:-$$HOME/.cache/finetune-operator/cluster}/env" && $(BIN)/python bench/create_cost.py $(BENCH_CREATE_COST_ARGS)

bench-operator: install ## 1000 FineTuneJobs at 10/s on 128 fake GPU nodes: operator vs a plain client and Kubeflow Trainer (docs/benchmarks.md)
	hack/cluster-up.sh >/dev/null
	. "$${FTO_STATE:-$$HOME/.cache/finetune-operator/cluster}/env" && $(BIN)/python bench/operator_load.py $(BENCH_OPERATOR_ARGS)

bench-realnode: install ## 20 CPU jobs on the real node: apply -> first step and -> done, operator vs Kubeflow Trainer tuned (docs/benchmarks.md; root)
	hack/cluster-up.sh >/dev/null
	. "$${FTO_STATE:-$$HOME/.cache/finetune-operator/cluster}/env" && $(BIN)/python bench/realnode_latency.py $(BENCH_REALNODE_ARGS)
