# wsss_lightning: install, test, demo, lint, bench.  Everything runs inside .venv (created on demand).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WSSS := $(VENV)/bin/wsss
METHOD ?= auxseg
DEMO_DIR ?= demo_data
PYTEST_ARGS ?=

export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_SILENT := true
export PYTHONUNBUFFERED := 1

.PHONY: install test test-fast demo figures lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

# The full suite (CPU; includes the `slow` and `ddp` tests, skips `gpu`).
test: install
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

# The quick inner loop: unit tests only.
test-fast: install
	$(PY) -m pytest -m "not gpu and not slow and not ddp" $(PYTEST_ARGS)

# Generate the synthetic dataset, run the whole pipeline of METHOD (auxseg | ssnet), print the results table.
demo: install
	$(WSSS) data demo --out $(DEMO_DIR)
	$(WSSS) fit --config configs/demo_$(METHOD).yaml --data.root $(DEMO_DIR)/VOCdevkit/VOC2012
	$(WSSS) test --config configs/demo_$(METHOD).yaml --data.root $(DEMO_DIR)/VOCdevkit/VOC2012 --ckpt_path last

# Regenerate docs/figures from the `make demo` run (the notebooks, executed in place of a reader).
figures: install
	WSSS_NB_CONFIG=configs/demo_auxseg.yaml WSSS_NB_DATA_ROOT=$(DEMO_DIR)/VOCdevkit/VOC2012 \
	WSSS_NB_CHECKPOINT=runs/demo_auxseg/checkpoints/last.ckpt WSSS_NB_RUN_DIR=runs/demo_auxseg \
	WSSS_NB_FIGURES=docs/figures $(VENV)/bin/jupyter execute notebooks/01_pipeline_walkthrough.ipynb
	WSSS_NB_FIGURES=docs/figures $(VENV)/bin/jupyter execute notebooks/02_results_report.ipynb

lint: install
	$(VENV)/bin/ruff check wsss_lightning tests benchmarks
	$(VENV)/bin/ruff format --check wsss_lightning tests benchmarks

format: install
	$(VENV)/bin/ruff check --fix wsss_lightning tests benchmarks
	$(VENV)/bin/ruff format wsss_lightning tests benchmarks

# Benchmarks (docs/benchmarks.md). Default: quick mode (tiny backbone, small images; a few minutes). The papers'
# setting (ResNet-38, 321x321 / 500x375 images; about 20 minutes on 2 cores): `make bench BENCH_ARGS= METRICS_ARGS=`.
# Take timings on an otherwise idle machine. GPU: `$(PY) benchmarks/gpu_train.py` (needs CUDA).
BENCH_ARGS ?= --quick
METRICS_ARGS ?= --num 100 --loading_images 50
# Fresh runs go to runs/bench; benchmarks/results/ holds the figures quoted in docs/benchmarks.md.
BENCH_OUT ?= runs/bench
bench: install
	@mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/metrics.py $(METRICS_ARGS)
	$(PY) benchmarks/train_step.py $(BENCH_ARGS) --json $(BENCH_OUT)/train_step.json
	$(PY) benchmarks/pseudo_refresh.py $(BENCH_ARGS) --json $(BENCH_OUT)/pseudo_refresh.json
	$(PY) benchmarks/crf_pool.py $(BENCH_ARGS) --json $(BENCH_OUT)/crf_pool.json
	$(PY) benchmarks/affinity_memory.py $(BENCH_ARGS) --json $(BENCH_OUT)/affinity_memory.json
	$(PY) benchmarks/inference_modes.py $(BENCH_ARGS) --json $(BENCH_OUT)/inference_modes.json

# Issue 13's GPU measurements in one run (benchmarks/gpu_session.sh, about 9 minutes; needs CUDA and the wheel folder
# that ../shared/gpu/fetch_wheels.sh writes, WHEELS). Results in $$OUT, else runs/gpu_session (docs/benchmarks.md).
WHEELS ?= .offline
.PHONY: gpu-session
gpu-session:
	bash benchmarks/gpu_session.sh $(WHEELS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
