# Observer: `make up` starts everything, `make test` runs the test suite. Both install what they
# need first (uv, then the locked dependencies into .venv) on a machine with Python 3.11 and make.

PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
RUN := $(UV) run --frozen --no-sync

.PHONY: up webhook test lint format bench install postgres chromium clean

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

# tests/test_postgres.py runs Prefect on a PostgreSQL server it starts itself, from the server
# binaries of Debian's package. Where they are missing, as root with apt-get (CI), they are installed
# without the package's default cluster, so nothing is left running; elsewhere the test says why it
# is skipped.
PG_INITDB = $(strip $(wildcard /usr/lib/postgresql/*/bin/initdb) $(shell command -v initdb 2>/dev/null))

postgres:
ifeq ($(PG_INITDB),)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing PostgreSQL with apt-get (for tests/test_postgres.py)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq >/dev/null && \
	  apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null && \
	  pg_conftool /etc/postgresql-common/createcluster.conf set create_main_cluster false && \
	  apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	else \
	  echo "PostgreSQL is not installed and cannot be installed here (needs root and apt-get):" \
	    "tests/test_postgres.py will be skipped"; \
	fi
endif

# tests/test_browser.py opens the run pages in headless Chromium, from Debian's package. Where it
# is missing, as root with apt-get (CI), it is installed; elsewhere that test says why it is skipped.
CHROMIUM = $(strip $(shell command -v chromium 2>/dev/null))

chromium:
ifeq ($(CHROMIUM),)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Chromium with apt-get (for tests/test_browser.py)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq >/dev/null && \
	  apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else \
	  echo "Chromium is not installed and cannot be installed here (needs root and apt-get):" \
	    "tests/test_browser.py will be skipped"; \
	fi
endif

test: install postgres chromium ## lint, then the whole test suite (on two processes)
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) pytest -n 2 --dist loadgroup

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
