# propagator: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KAFKA_PORT ?= 9092
REDIS_PORT ?= 6379
export KAFKA_PORT REDIS_PORT

.PHONY: help venv services services-down run test test-unit lint schemas clean test-reliability

help:
	@echo "make run            venv, dependencies, local Kafka and Redis, ingest and worker (Ctrl-C stops)"
	@echo "make test           the whole suite against the real local broker and Redis"
	@echo "make test-unit      the tests that need no broker or Redis"
	@echo "make test-reliability  fault injection and fuzzing; writes docs/reliability.md"
	@echo "make lint           ruff and mypy"
	@echo "make browser        Debian's chromium, for the dashboard's browser test (make test runs it)"
	@echo "make promtool       Debian's prometheus (promtool), to check the alert rules (likewise)"
	@echo "make services       start (or reuse) the local Kafka broker and Redis"
	@echo "make services-down  stop the broker and Redis that these scripts started"
	@echo "make schemas        regenerate schemas/json/ from the models"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

services:
	deploy/local/redis.sh up
	deploy/local/kafka.sh up

services-down:
	deploy/local/kafka.sh down
	deploy/local/redis.sh down

run: venv services
	deploy/local/run.sh

test: venv services browser promtool
	TEST_KAFKA_BOOTSTRAP=127.0.0.1:$(KAFKA_PORT) TEST_REDIS_URL=redis://127.0.0.1:$(REDIS_PORT)/15 \
		$(BIN)/pytest -m "not reliability"

test-unit: venv
	$(BIN)/pytest tests/unit

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

schemas: venv
	$(BIN)/python -m schemas

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Fault injection (worker, broker, Redis and ingest crashes) and fuzzing: about 15 minutes.
# Outages use a private broker and Redis on other ports; the report is docs/reliability.md.
test-reliability: venv services
	TEST_KAFKA_BOOTSTRAP=127.0.0.1:$(KAFKA_PORT) TEST_REDIS_URL=redis://127.0.0.1:$(REDIS_PORT)/15 \
		RELIABILITY_REPORT=docs/reliability.md $(BIN)/pytest tests/reliability

# Benchmarks (bench/README.md): every figure beside a baseline measured in the same run.
# `make bench` takes under 10 minutes, `make bench-quick` (or ARGS=--quick) under 2; the JSON
# and Markdown results go to bench/results/.
.PHONY: bench bench-quick
bench: venv services
	$(BIN)/python -m bench $(ARGS)

bench-quick: venv services
	$(BIN)/python -m bench --quick $(ARGS)

# The dashboard's browser test drives the system Chromium with Playwright (which cannot download
# a browser here), and the alert rules are checked by promtool. Installed from Debian when
# missing: about 90 s and 20 s on a fresh machine, nothing when already there.
.PHONY: browser promtool
APT_GET = DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get
browser:
	@command -v chromium >/dev/null || { $(APT_GET) update -qq && $(APT_GET) install -y -qq chromium fonts-liberation; }

promtool:
	@command -v promtool >/dev/null || { $(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends prometheus; }
