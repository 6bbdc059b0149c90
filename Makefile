# Baton developer commands. `make demo` and `make test` install what they need first.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.8
# The template's Runtime is python3.13: find that interpreter portably (PATH, then pyenv).
PYTHON313 ?= $(shell for c in python3.13 "$$HOME/.pyenv/versions/3.13.0/bin/python3.13" $$(ls -d $$HOME/.pyenv/versions/3.13*/bin/python3.13 /usr/local/bin/python3.13 2>/dev/null); do \
	if PYENV_VERSION=3.13.0 "$$c" -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1; then echo "$$c"; break; fi; done)

.PHONY: help install demo dev openapi test test-unit test-integration chaos lint typecheck lint-template lock layer-lock clean bench build tools

help:
	@echo "make demo    start the local stack, submit real jobs, show them finish"
	@echo "make test    lint, type-check and run every test suite"
	@echo "make chaos   the fault-injection suite at full size (2000 jobs; CHAOS_JOBS=N to change)"
	@echo "make dev     run the local stack (API on http://127.0.0.1:3000) until Ctrl-C"
	@echo "make build   sam build (SAM CLI pinned in .tools/sam): .aws-sam/build, what sam deploy ships"

$(VENV)/.installed: requirements.lock pyproject.toml
	@if [ -z "$(PYTHON313)" ]; then echo "error: Python 3.13 not found (the Lambda runtime is python3.13). Install it (e.g. 'pyenv install 3.13') or set PYTHON313=/path/to/python3.13" >&2; exit 1; fi
	@echo "Creating $(VENV) with $(PYTHON313)"
	PYENV_VERSION=3.13.0 "$(PYTHON313)" -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	@# compiled bytecode: every `baton dev`, test and function process imports it (PYTHONDONTWRITEBYTECODE may be set)
	$(VENV)/bin/uv pip install -q --python $(PY) --require-hashes --compile-bytecode -r requirements.lock
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	@touch $@

install: $(VENV)/.installed

# The SAM CLI lives in its own venv: its dependency tree (and its own boto3) stays out of the dev lock.
# A stdlib venv, so it carries pip, which the layer's Makefile runs (`python3 -m pip`) under `sam build`.
SAM_CLI_VERSION := 1.170.0
TOOLS := .tools/sam
SAM := $(TOOLS)/bin/sam

$(TOOLS)/.installed-$(SAM_CLI_VERSION): | $(VENV)/.installed
	@echo "Installing aws-sam-cli==$(SAM_CLI_VERSION) in $(TOOLS)"
	rm -rf $(TOOLS)
	PYENV_VERSION=3.13.0 "$(PYTHON313)" -m venv $(TOOLS)
	$(VENV)/bin/uv pip install -q --python $(TOOLS)/bin/python aws-sam-cli==$(SAM_CLI_VERSION)
	@touch $@

tools: $(TOOLS)/.installed-$(SAM_CLI_VERSION)

# `sam build` without a container or AWS credentials. The tools venv goes first on PATH: SAM looks for
# `python3.13` (the functions' runtime) and the layer's Makefile runs `python3 -m pip`.
build: tools
	@rm -rf .aws-sam/build
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" SAM_CLI_TELEMETRY=0 $(SAM) build --template-file template.yaml --no-cached

demo: install
	$(VENV)/bin/baton demo

dev: install
	$(VENV)/bin/baton dev

# The OpenAPI document, generated from the API's routes and models (a unit test fails on drift).
openapi: install
	$(PY) -m baton_dev.openapi

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy layers/baton/baton devtools/baton_dev tests
	@# every handler is functions/<name>/app.py: one module name, so check them one by one
	@for f in functions/*/app.py; do $(VENV)/bin/mypy "$$f" || exit 1; done

lint-template: install
	$(VENV)/bin/cfn-lint template.yaml

test-unit: install
	$(PY) -m pytest tests/unit --disable-socket --allow-unix-socket -q

test-integration: install
	$(PY) -m pytest tests/integration tests/e2e -q

test: lint typecheck lint-template build
	$(PY) -m pytest tests/unit --disable-socket --allow-unix-socket -q
	@# the Lambda runtime's packages and the layer's, for this machine: once, before any stack starts
	$(PY) -m baton_dev.runtime.lambda_sites template.yaml
	$(PY) -m pytest tests/build -q
	$(PY) -m pytest tests/integration tests/e2e -q
	$(PY) -m pytest tests/chaos -q --chaos-jobs 50

# Faults, duplicates, a runtime SIGKILL and failing webhooks over many jobs; logs in .baton/chaos/.
chaos: install
	$(PY) -m pytest tests/chaos -q -s --chaos-jobs $${CHAOS_JOBS:-2000}

bench: install
	$(PY) -m bench

lock:
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.13 \
		--python-platform x86_64-manylinux_2_28 -o requirements.lock

# The Lambda layer's pins (arm64, python3.13), installed by `sam build` through layers/baton/Makefile
# with `pip --no-deps --require-hashes`: so this lock must hold the layer's whole dependency closure,
# minus what the python3.13 runtime already provides (boto3 and everything it needs), which the layer
# must not shadow. tests/build/test_artifact.py checks the closure of what was actually built.
RUNTIME_PROVIDED := boto3 botocore s3transfer jmespath python-dateutil six urllib3
layer-lock: install
	$(VENV)/bin/uv pip compile layers/baton/requirements.in --generate-hashes --python-version 3.13 \
		--python-platform aarch64-manylinux_2_28 $(foreach p,$(RUNTIME_PROVIDED),--no-emit-package $(p)) \
		-o layers/baton/requirements.txt

clean:
	rm -rf $(VENV) .tools .aws-sam .baton .pytest_cache .mypy_cache .ruff_cache
