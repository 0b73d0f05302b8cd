# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint format bench clean

$(BIN)/tocsin: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11+)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(BIN)/tocsin

demo: $(BIN)/tocsin
	$(BIN)/tocsin demo $(DEMO_ARGS)

lint: $(BIN)/tocsin
	$(BIN)/ruff check bot tests bench
	$(BIN)/ruff format --check bot tests bench
	$(BIN)/mypy --strict bot

format: $(BIN)/tocsin
	$(BIN)/ruff format bot tests bench
	$(BIN)/ruff check --fix bot tests bench

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(BIN)/tocsin
	$(BIN)/python bench/fanout.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-output
