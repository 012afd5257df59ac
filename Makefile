# storeflow: `make demo` and `make test` are the two commands a newcomer needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
STAMP  := $(VENV)/.installed

.PHONY: install lock demo test bench compile check-manifests clean image

install: $(STAMP)

# Reinstall only when the dependencies change; uv installs in seconds. Every version comes from
# requirements.lock, so a clean clone installs what CI tested (the compiled manifests name the kfp SDK).
# --compile-bytecode: uv writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE is set every process
# compiled pymc, mlflow & co. from source on import (import pymc_marketing.clv, mlflow: 32 s -> 10 s here).
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(BIN)/pip install --quiet --disable-pip-version-check 'uv==0.13.9'
	$(UV) pip install --python $(BIN)/python --quiet --compile-bytecode -c requirements.lock -e '.[test]'
	touch $(STAMP)

# After changing dependencies in pyproject.toml: re-resolve the lock, then `make compile`.
lock:
	test -x $(UV) || $(MAKE) install
	$(UV) pip compile pyproject.toml --extra test --python-version 3.11 --universal -q --custom-compile-command "make lock" -o requirements.lock

demo: install
	$(BIN)/storeflow demo

# Test files run on $(TEST_WORKERS) workers (pytest-xdist), a file's tests together in one worker: most
# of the suite waits on servers, containers and model fits, so two workers on two cores nearly halve it.
# tests/conftest.py starts the long end-to-end files first. `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/model.py

compile: install
	$(BIN)/storeflow compile

# The project image, tagged image.repository:image.tag from the config; prints that reference.
# BASE=auto|debootstrap|<image>: see docker/build-image.sh (auto falls back to a debootstrap base offline).
BASE ?= auto
image: install
	@BASE="$(BASE)" STOREFLOW_PYTHON="$(BIN)/python" bash docker/build-image.sh

clean:
	rm -rf .storeflow .pytest_cache
