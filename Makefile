# Two commands for a new user: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test soak lint bench bench-full clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ledger demo

# three test processes: the integration tests mostly wait on a broker's group joins and
# on killed workers, so three share two cores well (~3-4 min; one process took ~9)
test: $(STAMP)
	$(BIN)/pytest -n 3 --dist worksteal

# 50 SIGKILLs of a worker under a flowing stream (`make test` runs 10)
soak: $(STAMP)
	LEDGER_SOAK_KILLS=50 $(BIN)/pytest tests/integration/test_exactly_once.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy events ledger projections workers bench

# The Quix Streams peer of `make bench` lives in its own venv: it pins its own pydantic
QUIX := .venv-quix/.installed
$(QUIX): pyproject.toml
	$(PYTHON) -m venv .venv-quix
	.venv-quix/bin/python -m pip install --quiet 'quixstreams>=3.28,<4'
	.venv-quix/bin/python -m pip install --quiet --no-deps -e .
	touch $(QUIX)

# the ledger against a Quix Streams peer and a bare consumer, then every other target of
# issue 11 (queries, replay, memory, cold start, alerts); rewrites bench/README.md's table
bench: $(STAMP) $(QUIX)
	$(BIN)/python -m bench.run --targets --write

# the same at ~1 M events (replays at ~1 M on RocksDB and on the memory store)
bench-full: $(STAMP) $(QUIX)
	$(BIN)/python -m bench.run --full --targets --write

clean:
	rm -rf $(VENV) .venv-quix .ledger .pytest_cache .mypy_cache .ruff_cache
