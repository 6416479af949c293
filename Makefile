# propagator: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KAFKA_PORT ?= 9092
REDIS_PORT ?= 6379
export KAFKA_PORT REDIS_PORT

.PHONY: help venv services services-down run test test-unit lint schemas clean

help:
	@echo "make run            venv, dependencies, local Kafka and Redis, ingest and worker (Ctrl-C stops)"
	@echo "make test           the whole suite against the real local broker and Redis"
	@echo "make test-unit      the tests that need no broker or Redis"
	@echo "make lint           ruff and mypy"
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

test: venv services
	TEST_KAFKA_BOOTSTRAP=127.0.0.1:$(KAFKA_PORT) TEST_REDIS_URL=redis://127.0.0.1:$(REDIS_PORT)/15 \
		$(BIN)/pytest

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
