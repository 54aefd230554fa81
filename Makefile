# One task runner. CI calls `make test` through .ci/run.
SHELL := /bin/bash
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export GX_ANALYTICS_ENABLED := false

UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
DEMO_CHILDREN ?= 20000
DEMO_SEED ?= 42
DEMO_DATA ?= data/demo
DEMO_RUN ?= runs/demo

.PHONY: uv sync run test lint typecheck pytest test-slow test-spark bench clean

uv:
	@command -v uv >/dev/null 2>&1 || test -x "$(HOME)/.local/bin/uv" || python3 -m pip install --user --quiet uv || python3 -m pip install --quiet uv

sync: uv
	@UV=$$(command -v uv || echo $(HOME)/.local/bin/uv); $$UV sync --locked

## make run: generate the demo world and run the whole pipeline end to end (embedded default).
run: sync
	@UV=$$(command -v uv || echo $(HOME)/.local/bin/uv); \
	$$UV run --locked cohort synth --children $(DEMO_CHILDREN) --seed $(DEMO_SEED) --scenario default --out $(DEMO_DATA) && \
	COHORT_PSEUDONYM_SECRET=$${COHORT_PSEUDONYM_SECRET:-demo-only-secret} \
	$$UV run --locked cohort run --data $(DEMO_DATA) --out $(DEMO_RUN) --demo

## make test: sync, lint, type-check and run the test suite (what CI runs).
test: sync lint typecheck pytest

## make lint: ruff, and the import contract (pyproject.toml [tool.importlinter]).
lint:
	@UV=$$(command -v uv || echo $(HOME)/.local/bin/uv); $$UV run --locked ruff check . && $$UV run --locked ruff format --check . && $$UV run --locked lint-imports

typecheck:
	@UV=$$(command -v uv || echo $(HOME)/.local/bin/uv); $$UV run --locked mypy

## The suite runs on PYTEST_WORKERS pytest-xdist workers. Tests that share a module fixture
## are grouped on one worker (tests/conftest.py), and the session fixtures (worlds, the full
## run) are built once for all workers (tests/e2e.py `built_once`); the tests that need the full
## run go last, in collection order (--no-loadscope-reorder). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
PYTEST_XDIST = -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder

pytest:
	@UV=$$(command -v uv || echo $(HOME)/.local/bin/uv); $$UV run --locked pytest -q --durations=15 $(PYTEST_XDIST)

## make test-slow: statistical coverage suites and other slow tests.
test-slow: sync
	@UV=$$(command -v uv || echo $(HOME)/.local/bin/uv); $$UV run --locked pytest -q --durations=15 -m slow $(PYTEST_XDIST)

## make test-spark: Splink on Spark (needs Java; installs the spark extra).
test-spark: uv
	@UV=$$(command -v uv || echo $(HOME)/.local/bin/uv); $$UV sync --locked --extra spark && $$UV run --locked --extra spark pytest -q -m spark

## make bench: every stage and the end-to-end run at 100k, 300k and 1M children; tables into README.
BENCH_SIZES ?= 100000,300000,1000000
BENCH_SEEDS ?= 1,2,3
bench: sync
	@UV=$$(command -v uv || echo $(HOME)/.local/bin/uv); $$UV run --locked python benchmarks/run_all.py --sizes $(BENCH_SIZES) --seeds $(BENCH_SEEDS) --readme

clean:
	rm -rf data runs .prefect .pytest_cache .mypy_cache .ruff_cache
