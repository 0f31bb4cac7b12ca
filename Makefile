# fakejax: `make train` (quick run on the embedded synthetic benchmark) and `make test`.
# The newest Python the machine runs among 3.13, 3.12 and 3.11 (pyenv's versions included).
PYTHON ?= $(shell scripts/find_python.sh)
VENV   := .venv
PY     := $(VENV)/bin/python
# On CPU, simulate 8 devices for the tests so data parallelism is exercised; LLVM -O0 because
# the tests' tiny models spend their time compiling (tests/conftest.py).
TEST_ENV := JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
PYTEST   := -m pytest -q -n 2 --dist worksteal

.PHONY: train test test-slow test-studies test-torch test-oldest gpu-wheels gpu-rehearsal venv clean

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
	$(TEST_ENV) $(PY) $(PYTEST) --durations=25 -m "not study and not slow" tests

# End-to-end chains of real processes (kill/resume, two processes on loopback, DeepFD's stages,
# the served model over HTTP, the convert/evaluate/predict/explain commands on a run), several
# minutes: CI runs them after make test.
test-slow: venv
	$(TEST_ENV) $(PY) $(PYTEST) --durations=10 -m slow tests

# The study scripts' --quick smoke runs (scripts/study_*.py), ~5 minutes: CI runs them too.
test-studies: venv
	$(TEST_ENV) $(PY) $(PYTEST) -m study tests

# A second venv, .venv-torch (~6 GB: torch's CUDA build, run on the CPU), on Python 3.11 (torch's
# wheels lie on the CI machines' disk for 3.11 only) and the oldest JAX stack fakejax supports
# (.ci/oldest.txt). make test-torch runs the parity tests against the PyTorch references
# (torchvision, timm's BiT and DINOv2, open_clip's CLIP, diffusers' autoencoder, NPR's resampling) that make test skips, and the whole
# UnivFD ViT-L/14 chain against open_clip; make test-oldest runs make test's tests on that stack.
TORCH_VENV   := .venv-torch
TORCH_PYTHON ?= $(shell scripts/find_python.sh 3.11)
$(TORCH_VENV)/.installed: pyproject.toml .ci/oldest.txt
	$(TORCH_PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(TORCH_VENV)/bin/python -m pip install -q -c .ci/oldest.txt -e '.[test,torch]'
	touch $@

test-torch: $(TORCH_VENV)/.installed
	$(TEST_ENV) $(TORCH_VENV)/bin/python $(PYTEST) --durations=10 -m torch tests

test-oldest: $(TORCH_VENV)/.installed
	$(TEST_ENV) $(TORCH_VENV)/bin/python $(PYTEST) --durations=10 -m "not study and not slow and not torch" tests

# The GPU check on a lent device machine (docs/performance.md, "GPU check"): the wheels its image
# lacks, for Python 3.12, into .whl/ (git-ignored; carried by the device command).
gpu-wheels:
	$(PYTHON) scripts/gpu_wheels.py download

# The device command rehearsed on this CPU: a Python 3.12 venv like the device image (jax 0.11.2
# for the CPU, the image's packages at the versions it lists), the .whl/ wheels installed as there
# (--no-index --no-deps --target), then the GPU check in its short CPU mode, the PyTorch peer
# from .venv-torch. Fails on any error row.
REHEARSAL_VENV := .venv-rehearsal
gpu-rehearsal: $(TORCH_VENV)/.installed
	$(PYTHON) scripts/gpu_wheels.py rehearse --venv $(REHEARSAL_VENV) --peer_python $(TORCH_VENV)/bin/python

clean:
	rm -rf runs $(VENV) $(TORCH_VENV) $(REHEARSAL_VENV) .whl
