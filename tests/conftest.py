"""Test setup: 8 simulated CPU devices (before any JAX call) and small shared data."""

import os

# LLVM at -O0: the tests' models are tiny, so compiling dominates their time, and -O0 compiles
# ~3x faster (a tiny Xception's init: 8.7 -> 2.2 s) with the same operations.
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}")
# On a GPU box the tests still run on the CPU: two xdist workers (and their subprocesses, which
# inherit this) would otherwise each preallocate 75 % of the GPU's memory.
os.environ["JAX_PLATFORMS"] = "cpu"

from absl import flags  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

jax.config.update("jax_num_cpu_devices", 8)
# Many tests compile the same tiny train step: share compiled programs between them, their
# subprocesses and pytest-xdist workers.
_CACHE = os.path.join(os.environ.get("TMPDIR", "/tmp"), "fakejax-test-xla-cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags, as under app.run.

from fakejax import datasets  # pylint: disable=g-import-not-at-top
from fakejax import defaults  # pylint: disable=g-import-not-at-top

TINY_COUNTS = (("train", 8), ("val", 4), ("test", 3))


def subprocess_env(devices=8, fast_compile=True, **extra):
  """The environment of a `python -m fakejax...` the tests start: `devices` CPU devices, and
  LLVM -O0 unless `fast_compile` is False (XLA's default optimisation, as users run it)."""
  flags = f"--xla_force_host_platform_device_count={devices}" + (f" {FAST_COMPILE}" if fast_compile else "")
  return dict(os.environ, XLA_FLAGS=flags, **extra)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_synthetic(data_root):
  """32x32 synthetic benchmark: per split n reals per category, each with 4 fakes."""
  return datasets.synthetic_dataset(data_root, size=32, counts=TINY_COUNTS)


def tiny_config(data_root, **overrides):
  """A config whose model and data are as small as a real run can be."""
  c = defaults.get_config()
  c.model.width = 0.125
  c.model.middle_blocks = 1
  c.model.dropout = 0.0
  c.data.cache_dir = data_root
  c.data.synthetic.size = 32
  c.data.synthetic.train, c.data.synthetic.val, c.data.synthetic.test = (n for _, n in TINY_COUNTS)
  c.data.image_size = 32
  c.batch_size = 16
  c.total_steps = 4
  c.log_every_steps = 1
  c.eval_every_steps = 2
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


@pytest.fixture
def make_config(data_root, tiny_synthetic):
  del tiny_synthetic  # Built once, before any config points at it.
  return lambda **kw: tiny_config(data_root, **kw)


@pytest.fixture(scope="session")
def tiny_run(data_root, tiny_synthetic, tmp_path_factory):
  """A run trained for 2 steps (enough to test loading, evaluating and predicting)."""
  del tiny_synthetic
  from fakejax import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("runs") / "tiny")
  train.train_and_evaluate(tiny_config(data_root, total_steps=2), workdir)
  return workdir


def assert_bf16_like_amp(ours, amp, want, factor=2.0):
  """Our bfloat16 output is at most `factor` times as far from the float32 reference `want` as
  the reference's own mixed precision (`amp`: torch.autocast to bfloat16 or Keras's
  'mixed_bfloat16', same weights and inputs) is: the bound is what the field's AMP gives on that
  network, not a number chosen here."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  scale = max(float(np.abs(want).max()), 1e-6)
  err = lambda got: float(np.abs(np.asarray(got, np.float64) - want).max()) / scale
  print(f"bf16 error {err(ours):.2e}, the reference AMP's {err(amp):.2e}")  # Shown with pytest -s.
  assert err(ours) <= factor * err(amp), f"bf16 error {err(ours):.2e} vs the reference AMP's {err(amp):.2e}"
  return err(ours), err(amp)
