# Two commands for a new user: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test soak lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ledger demo

test: $(STAMP)
	$(BIN)/pytest

# 50 SIGKILLs of a worker under a flowing stream (`make test` runs 10)
soak: $(STAMP)
	LEDGER_SOAK_KILLS=50 $(BIN)/pytest tests/integration/test_exactly_once.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy events ledger projections workers

bench: $(STAMP)
	$(BIN)/python -m bench.pipeline

clean:
	rm -rf $(VENV) .ledger .pytest_cache .mypy_cache .ruff_cache
