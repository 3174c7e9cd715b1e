# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint check-format format clean

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
	$(BIN)/ruff format --check broker sideband emulator migrations tests
	$(BIN)/ruff check broker sideband emulator migrations tests
	$(BIN)/mypy
	$(BIN)/python -c "import broker, sideband, emulator"

format: $(STAMP)
	$(BIN)/ruff format broker sideband emulator migrations tests
	$(BIN)/ruff check --fix broker sideband emulator migrations tests

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
