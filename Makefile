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
API_REFERENCE := docs/api-reference.md

.PHONY: help install lint fmt crds test unit integration quickstart tools cluster-up cluster-down clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(CACHE)/uv-$(UV_VERSION)
	$(CACHE)/uv-$(UV_VERSION)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.installed: uv.lock pyproject.toml api/pyproject.toml operator/pyproject.toml trainer-image/pyproject.toml | $(UV)
	$(UV) sync --locked --all-packages
	touch $@

install: $(VENV)/.installed ## create .venv with the pinned dependencies (uv.lock)

lint: install ## ruff (lint + format check) and mypy on the API package
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install ## format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

crds: install ## regenerate crds/ and the API reference from the pydantic models
	$(BIN)/finetune-crd -o $(CRD)
	$(BIN)/python -m ftapi.reference -o $(API_REFERENCE)

unit: install ## unit tests only (no cluster)
	$(BIN)/pytest tests/unit

integration: install tools ## tests against the local control plane and S3 server
	$(BIN)/pytest tests/integration

test: install lint tools ## lint + the whole test suite (unit, then integration on a local cluster)
	$(BIN)/pytest

tools: ## build etcd, Kubernetes, kwok, helm and MinIO from their Go modules (cached, pinned)
	hack/build.sh

cluster-up: tools ## start the local control plane, fake GPU nodes and S3 on 127.0.0.1
	hack/cluster-up.sh

cluster-down: ## stop everything cluster-up started
	hack/cluster-down.sh

quickstart: install ## fine-tune a tiny model locally on CPU (about a minute)
	@test -f .quickstart/tiny-llama/config.json || $(BIN)/python -m fttrainer.tiny --arch llama --output .quickstart/tiny-llama
	$(BIN)/finetune validate examples/quickstart-cpu.yaml
	$(BIN)/finetune run examples/quickstart-cpu.yaml --output results/quickstart

clean: ## remove the virtualenv and caches inside the clone
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
