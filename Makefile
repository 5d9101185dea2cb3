# Every target works from a fresh clone: the virtualenv is made and filled when missing.
.DEFAULT_GOAL := all

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: all install run test test-object-store lint audit bench clean

all: lint test

$(INSTALLED): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=68" wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

install: $(INSTALLED)

# The API, workers on high, normal and low, and an embedded Redis when REDIS_URL is unset.
# `make run BIND=0.0.0.0:9000` chooses the address (or PREVIEW_BIND).
run: $(INSTALLED)
	$(BIN)/preview-worker run $(if $(BIND),--bind $(BIND))

# The tests start their own private redis-server (see tests/conftest.py), and moto's S3
# server for the object store (see tests/object_store.py).
test: $(INSTALLED)
	$(BIN)/pytest
	$(MAKE) --no-print-directory test-object-store

# The tests marked both_stores (they render, store or serve artifacts), again on an S3 API.
test-object-store: $(INSTALLED)
	PREVIEW_TEST_STORE=s3 $(BIN)/pytest -m both_stores

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/mypy

# pip-audit on the installed dependencies; a known vulnerability fails it.
audit: $(INSTALLED)
	$(BIN)/python .ci/audit.py

bench: $(INSTALLED)
	$(BIN)/python bench/validate.py
	$(BIN)/python bench/render.py
	$(BIN)/python bench/worker.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/slow_clients.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
