# Observer: `make up` starts everything, `make test` runs the test suite. Both install what they
# need first (uv, then the locked dependencies into .venv) on a machine with Python 3.11 and make.

PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
RUN := $(UV) run --frozen --no-sync

.PHONY: up webhook test lint format bench install clean

install: .venv/.installed

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==0.13.9"

.venv/.installed: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

up: install ## Prefect server + UI (127.0.0.1:4200), worker, deployments and the webhook
	$(RUN) observer up

webhook: install ## the webhook alone, no Prefect
	$(RUN) observer webhook

test: install ## lint, then the whole test suite
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) pytest

lint: install
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: install
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

bench: install ## benchmarks against the original and raw baselines (see bench/README.md)
	$(RUN) python -m bench

clean:
	rm -rf .venv .tools .pytest_cache .ruff_cache
