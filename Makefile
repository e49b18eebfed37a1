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

.PHONY: install test test-fast demo lint format bench clean

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

lint: install
	$(VENV)/bin/ruff check wsss_lightning tests benchmarks
	$(VENV)/bin/ruff format --check wsss_lightning tests benchmarks

format: install
	$(VENV)/bin/ruff check --fix wsss_lightning tests benchmarks
	$(VENV)/bin/ruff format wsss_lightning tests benchmarks

bench: install
	$(PY) benchmarks/metrics.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
