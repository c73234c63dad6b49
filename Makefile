# emseg: the two commands of the README are `make demo` and `make test`.
# Both create/update the virtualenv themselves; nothing needs installing by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch is enough for the demo and the tests; on a GPU host install the
# CUDA build you want into the venv first (any torch >= 2.4 works) and it is kept.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test lint typecheck pytest browser clean

# torch comes through pip, which finds the CPU wheel of TORCH_SPEC where the machine's pip
# configuration points (find-links), instead of a multi-GB CUDA build; uv installs the rest (torch
# already there is kept), faster than pip and from its own cache once it has one.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	test -x $(VENV)/bin/uv || $(PY) -m pip install -q uv || true
	$(VENV)/bin/uv pip install -q --python $(PY) --compile-bytecode -e ".[dev]" \
	  || $(PY) -m pip install -q -e ".[dev]"  # uv reads no pip.conf: pip's own indexes if it fails
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/emseg demo

# Debian's Chromium drives the browser test of the Prefect UI (no browser download works
# on a closed network); installed once, as root, when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: install Debian's chromium package (sudo apt-get install chromium)"; exit 1; fi; }

lint: $(STAMP)
	$(VENV)/bin/ruff check storage unet tasks flows tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy storage unet tasks flows

# pytest-xdist: PYTEST_WORKERS processes (0: none, one process). Tests that share a session
# server stay in one worker and the long groups start first (tests/conftest.py).
# 3 on the 2-core machine: 4 measured 20 s faster but loads it to ~6, closer to the
# timing-sensitive tests' margins.
PYTEST_WORKERS ?= 3
pytest: $(STAMP) browser
	$(VENV)/bin/pytest -m "not gpu" -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test: lint typecheck pytest

# The workspace holds the demo's outputs and its Prefect database (workspace/.prefect).
clean:
	rm -rf $(VENV) workspace
