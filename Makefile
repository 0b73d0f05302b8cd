# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO_ARGS ?=
PYTEST_ARGS ?=

LOCK    = --generate-hashes --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
          --custom-compile-command "make lock" --quiet

.PHONY: demo test lint format bench clean lock

# The locked versions (requirements/dev.txt: runtime + dev + the demo's stand-ins, with hashes),
# then tocsin and its stand-ins (sandbox/, the `demo` extra) from this checkout, editable.
# (The stand-ins' __init__.py is a prerequisite too: an editable install maps the packages it
# found when it ran.)
$(BIN)/tocsin: pyproject.toml sandbox/pyproject.toml requirements/dev.txt \
               $(wildcard sandbox/tocsin_sandbox/__init__.py)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11+)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . -e ./sandbox
	@touch $(BIN)/tocsin

# Refresh the lock files from pyproject.toml (upper bounds there, exact pins and hashes here).
lock: $(BIN)/tocsin
	$(BIN)/python -m pip install --quiet 'uv>=0.9,<1'
	$(BIN)/uv pip compile $(LOCK) pyproject.toml -o requirements/runtime.txt
	$(BIN)/uv pip compile $(LOCK) pyproject.toml sandbox/pyproject.toml --extra dev \
	    -o requirements/dev.txt
	$(BIN)/uv pip compile $(LOCK) requirements/build.in -o requirements/build.txt

demo: $(BIN)/tocsin
	$(BIN)/tocsin demo $(DEMO_ARGS)

lint: $(BIN)/tocsin
	$(BIN)/ruff check bot tests bench sandbox
	$(BIN)/ruff format --check bot tests bench sandbox
	$(BIN)/mypy --strict bot $(wildcard sandbox/tocsin_sandbox)

format: $(BIN)/tocsin
	$(BIN)/ruff format bot tests bench sandbox
	$(BIN)/ruff check --fix bot tests bench sandbox

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# `make bench MILLION=1` adds a million deliveries on PostgreSQL (tens of minutes, GB of disk).
bench: $(BIN)/tocsin
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/engine_alone.py
	$(BIN)/python bench/loop_idle.py
	$(BIN)/python bench/priority.py
	$(BIN)/python bench/ratelimited.py
	$(BIN)/python bench/telegram_broadcast.py
	$(BIN)/python bench/declare_latency.py
	$(if $(MILLION),$(BIN)/python bench/million.py)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-output
