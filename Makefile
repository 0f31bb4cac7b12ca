# fakejax: `make train` (quick run on the embedded synthetic benchmark) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
# On CPU, simulate 8 devices for the tests so data parallelism is exercised; LLVM -O0 because
# the tests' tiny models spend their time compiling (tests/conftest.py).
TEST_ENV := JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"

.PHONY: train test test-slow test-studies test-torch venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

train: venv
	$(PY) -m fakejax.train --config configs/quick.py --workdir runs/quick
	$(PY) -m fakejax.evaluate --workdir runs/quick

test: venv
	$(PY) -m ruff check --quiet fakejax tests scripts configs
	$(TEST_ENV) $(PY) -m pytest -q -n 2 --dist worksteal --durations=25 -m "not study and not slow" tests

# End-to-end chains of real processes, several minutes each (kill/resume, two processes on
# loopback, DeepFD's stages): CI runs them after make test.
test-slow: venv
	$(TEST_ENV) $(PY) -m pytest -q -n 2 --dist worksteal --durations=10 -m slow tests

# The study scripts' --quick smoke runs (scripts/study_*.py), ~5 minutes: CI runs them too.
test-studies: venv
	$(TEST_ENV) $(PY) -m pytest -q -n 2 --dist worksteal -m study tests

# Parity with the PyTorch references (torchvision, timm's BiT, open_clip's CLIP, NPR's resampling)
# that `make test` skips, in a venv of their own (.venv-torch, ~6 GB: torch's CUDA build, run on
# the CPU), and the whole UnivFD ViT-L/14 chain (convert, predict) against open_clip.
TORCH_VENV := .venv-torch
$(TORCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(TORCH_VENV)/bin/python -m pip install -q -e '.[test,torch]'
	touch $@

test-torch: $(TORCH_VENV)/.installed
	$(TEST_ENV) $(TORCH_VENV)/bin/python -m pytest -q -n 2 --dist worksteal --durations=10 -m torch tests

clean:
	rm -rf runs $(VENV) $(TORCH_VENV)
