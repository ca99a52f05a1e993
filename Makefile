# `make run` and `make test` work on a fresh clone: they create .venv and install from the lock.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit quick train bench serve-bench lock clean

$(STAMP): requirements/dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

run: $(STAMP)
	$(BIN)/chargecast serve

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

# Everything but the podman image tests, for a quick loop while editing.
quick: $(STAMP)
	$(BIN)/pytest -m "not container"

train: $(STAMP)
	$(BIN)/chargecast train --data ../shared/data/insurance.csv --out models/current

# Issue #2 and #7 figures beside same-run baselines (about 2-3 min on 2 cores); prints, asserts nothing.
bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/batch_bench.py

# Serving throughput/latency/memory/start-up against a bare Starlette floor; needs wrk (apt-get install wrk).
serve-bench: $(STAMP)
	$(BIN)/python bench/serve_bench.py

# Re-pin after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/pip-compile -q --allow-unsafe --strip-extras --generate-hashes --extra train --extra batch --extra dev -o requirements/dev.lock pyproject.toml
	$(BIN)/pip-compile -q --allow-unsafe --strip-extras --generate-hashes -o requirements/serve.lock pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
