# streamscore: every target a developer runs is the one CI runs (.ci/run calls `make test`).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTHON ?= python3

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,train]"
	touch $@

install: $(VENV)/.installed ## Create .venv and install the package with dev and train extras

kafka-jars: install ## Fetch the Kafka 3.9.2 jars with Maven (once, cached)
	$(BIN)/streamscore infra install

lint: install ## ruff and mypy --strict
	$(BIN)/ruff check streams tests models benchmarks
	$(BIN)/ruff format --check streams tests models benchmarks
	$(BIN)/mypy

# Every test's captured output (JUnit XML), pytest's log file and the run's temporary files
# (workers' logs) land under $(LOGS)/<suite>; tests.planted then fails the run if any of them
# shows the password the tests plant in their settings and error paths.
LOGS := .streamscore/test-logs
PYTEST_LOGS = --junitxml=$(LOGS)/$(1)/junit.xml -o junit_logging=all \
	--log-file=$(LOGS)/$(1)/pytest.log --log-file-level=DEBUG --basetemp=$(LOGS)/$(1)/tmp

unit: install ## Unit tests (no network)
	$(BIN)/pytest -m "not integration" tests $(call PYTEST_LOGS,unit)
	$(PY) -m tests.planted $(LOGS)/unit

integration: kafka-jars ## Integration tests against a real local broker, chDB, dbt and Feast
	$(BIN)/pytest -m integration tests $(call PYTEST_LOGS,integration)
	$(PY) -m tests.planted $(LOGS)/integration

test: lint unit integration ## Everything CI runs: lint, unit, integration

demo: kafka-jars ## The main job end to end on local defaults (starts and stops the broker)
	$(BIN)/streamscore demo

up: kafka-jars ## Start the local broker and apply topics
	$(BIN)/streamscore infra up && $(BIN)/streamscore topics apply

down: ## Stop the local broker
	$(BIN)/streamscore infra down

clean: ## Remove local state (broker data, lake, chDB) but keep the venv
	rm -rf .streamscore

.PHONY: help install kafka-jars lint unit integration test demo up down clean
