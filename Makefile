# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint check-format format clean bench bench-smoke bench-report

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,postgres]'
	touch $(STAMP)

## Set up, migrate and serve the broker with the built-in provider on SQLite.
run: $(STAMP)
	$(BIN)/broker serve --dev

## Lint, type-check and run the whole test suite.
test: $(STAMP) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff format --check broker sideband emulator migrations tests bench
	$(BIN)/ruff check broker sideband emulator migrations tests bench
	$(BIN)/mypy
	$(BIN)/mypy -p bench
	$(BIN)/python -c "import broker, sideband, emulator"

format: $(STAMP)
	$(BIN)/ruff format broker sideband emulator migrations tests bench
	$(BIN)/ruff check --fix broker sideband emulator migrations tests bench

BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,postgres,bench]'
	touch $(BENCH_STAMP)

## The four benchmarks at full size (under 15 minutes on 2 cores; best on a quiet machine),
## with the broker profiled; rewrites bench/RESULTS.md, bench/dispatch.png, bench/results/.
bench: $(BENCH_STAMP)
	BENCH_VIA="make bench" $(BIN)/python -m bench --profile

## The same four at tiny sizes (also run by `make test`, as tests/bench).
bench-smoke: $(STAMP)
	$(BIN)/pytest tests/bench

## Rebuild bench/RESULTS.md and the plot from bench/results/*.json.
bench-report: $(BENCH_STAMP)
	$(BIN)/python -m bench.report

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
