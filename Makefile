# Two commands a fresh clone needs: `make demo` (main job on the embedded default) and
# `make test`. Each creates .venv and installs the pinned stack on first use; a stamp keyed on
# the dependency files' hash makes later calls skip the install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_HASH := $(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= runs/demo

export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM=false

.PHONY: install demo test lint bench-cat bench-data bench-train bench-ab bench-gpu clean

install: $(STAMP)

$(STAMP):  # the name carries the dependency files' hash: a change means a new stamp
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(PY) -m infer.demo output_dir=$(DEMO_DIR)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 --durations=10

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench-cat: $(STAMP)
	$(PY) -m cat.bench --json runs/bench/cat.json

bench-data: $(STAMP)
	$(PY) -m data.bench --json runs/bench/data.json

bench-train: $(STAMP)
	$(PY) -m train.bench --json runs/bench/train.json

bench-ab: $(STAMP)
	$(PY) -m infer.bench --json runs/bench/ab.json

bench-gpu: $(STAMP)  # one CUDA GPU (H100/H200 class, ~8 min); without CUDA it says so and exits 0
	$(PY) -m train.bench_gpu --json runs/bench/gpu.json

clean:
	rm -rf runs wandb
