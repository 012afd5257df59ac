# storeflow: `make demo` and `make test` are the two commands a newcomer needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench compile check-manifests clean

install: $(STAMP)

# Reinstall only when the dependency list changes; uv resolves and installs in seconds.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(BIN)/pip install --quiet --disable-pip-version-check uv
	$(UV) pip install --python $(BIN)/python --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/storeflow demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/run.py

compile: install
	$(BIN)/storeflow compile

clean:
	rm -rf .storeflow .pytest_cache
