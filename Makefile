# `make run` and `make test` work on a fresh clone: they create .venv and install from a lock.
# `make run` installs only what serving needs (serve.lock, ~20 packages); `make test` and the other
# targets add the development lock (dev.lock, a superset at the same pins) to the same .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet
SERVE_STAMP := $(VENV)/.serve-installed
STAMP := $(VENV)/.installed
# Browser tests drive Debian's Chromium through Playwright (executable_path): never download one.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: run test lint typecheck unit quick train bench serve-bench lock image push-signed clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The package itself is installed editable with no dependencies; build.lock brings the setuptools it builds with.
$(SERVE_STAMP): requirements/serve.lock requirements/build.lock pyproject.toml | $(BIN)/python
	$(PIP) --require-hashes -r requirements/serve.lock -r requirements/build.lock
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

# dev.lock holds serve.lock's and build.lock's pins, so it also satisfies `make run`.
$(STAMP): requirements/dev.lock pyproject.toml | $(BIN)/python
	$(PIP) --require-hashes -r requirements/dev.lock
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@ $(SERVE_STAMP)

# The audit log goes to var/audit.sqlite3 unless CHARGECAST_AUDIT_URL says otherwise (docs/audit.md).
run: $(SERVE_STAMP)
	@echo "The chargecast command is $(BIN)/chargecast (or 'source $(BIN)/activate', then chargecast --help)."
	@echo "Serving $${CHARGECAST_MODEL_DIR:-models/current} at http://$${CHARGECAST_HOST:-127.0.0.1}:$${CHARGECAST_PORT:-8080}/ (API under /api/v1, docs at /docs); Ctrl-C stops it."
	CHARGECAST_AUDIT_URL=$${CHARGECAST_AUDIT_URL:-sqlite:///var/audit.sqlite3} $(BIN)/chargecast serve

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

# The image, with its CycloneDX SBOM copied to dist/sbom.cdx.json (docs/supply-chain.md).
IMAGE ?= localhost/chargecast:dev
image:
	deploy/image.sh build --tag $(IMAGE) --out dist

# Push $(IMAGE) to $(DEST) signed with the GPG key $(SIGN_BY), e.g.
#   make push-signed DEST=registry.example/chargecast:1.0 SIGN_BY=FINGERPRINT
push-signed:
	@test -n "$(DEST)" || { echo "make push-signed: DEST=registry/repository:tag is required" >&2; exit 2; }
	@test -n "$(SIGN_BY)" || { echo "make push-signed: SIGN_BY=GPG-key-fingerprint is required" >&2; exit 2; }
	deploy/image.sh push $(IMAGE) $(DEST) --sign-by $(SIGN_BY)

# Re-pin after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/pip-compile -q --allow-unsafe --strip-extras --generate-hashes --extra train --extra batch --extra dev -o requirements/dev.lock pyproject.toml
	$(BIN)/pip-compile -q --allow-unsafe --strip-extras --generate-hashes -o requirements/serve.lock pyproject.toml
	$(BIN)/pip-compile -q --allow-unsafe --strip-extras --generate-hashes -o requirements/sbom.lock requirements/sbom.in

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
