# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint check-format format settings-table clean bench bench-smoke bench-report

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,postgres]'
	touch $(STAMP)

## Set up, migrate and serve the broker with the built-in provider on SQLite
## (`make run PORT=9000` for another port).
# Only a PORT given on make's command line counts: an exported PORT often belongs to some other
# tool, and the environment's way is BROKER_PORT.
RUN_PORT := $(if $(filter command line,$(origin PORT)),--port $(PORT))
run: $(STAMP)
	$(BIN)/broker serve --dev $(RUN_PORT)

## Lint, type-check and run the whole test suite.
test: $(STAMP) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff format --check broker sideband emulator migrations tests bench clients
	$(BIN)/ruff check broker sideband emulator migrations tests bench clients
	$(BIN)/mypy
	$(BIN)/mypy clients/python/src/broker_client
	$(BIN)/mypy -p bench
	$(BIN)/python -c "import broker, sideband, emulator"

## Rewrite the README's settings table from broker/settings/model.py (a test fails on drift).
settings-table: $(STAMP)
	$(BIN)/python -m broker.settings.doc --write README.md

format: $(STAMP)
	$(BIN)/ruff format broker sideband emulator migrations tests bench clients
	$(BIN)/ruff check --fix broker sideband emulator migrations tests bench clients

BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,postgres,bench]'
	touch $(BENCH_STAMP)

## The six benchmarks at full size (under 30 minutes on 2 cores; best on a quiet machine),
## with the broker profiled; rewrites bench/RESULTS.md, bench/dispatch.png, bench/talking.png,
## bench/results/. The talking-calls benchmark pins the broker to core 0 and its stand-in
## provider to core 1 (taskset).
bench: $(BENCH_STAMP)
	BENCH_VIA="make bench" $(BIN)/python -m bench --profile

## The same six at tiny sizes (also run by `make test`, as tests/bench).
bench-smoke: $(STAMP)
	$(BIN)/pytest tests/bench

## Rebuild bench/RESULTS.md and the plot from bench/results/*.json.
bench-report: $(BENCH_STAMP)
	$(BIN)/python -m bench.report

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
