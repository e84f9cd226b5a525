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

.PHONY: help install test test-unit lint demo clean kafka-up kafka-down kafka-status

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

test: install  ## run the whole test suite (starts and stops a local Kafka broker itself)
	$(BIN)/python -m pytest

test-unit: install  ## only the tests that need no broker
	$(BIN)/python -m pytest tests/unit

kafka-up: install  ## start a local Kafka broker on 127.0.0.1:9092 in the background (KAFKA_ARGS="--scram")
	$(BIN)/tagstream-worker kafka up $(KAFKA_ARGS)

kafka-down: install  ## stop the background broker
	$(BIN)/tagstream-worker kafka down

kafka-status: install  ## show the background broker and whether it answers
	$(BIN)/tagstream-worker kafka status

lint: install  ## ruff and mypy
	$(BIN)/ruff check worker model tests bench
	$(BIN)/mypy worker model

clean:  ## remove the virtual environment and caches (not the shared uv/Maven caches)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
