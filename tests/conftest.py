"""Test setup: 8 simulated CPU devices (before any JAX call) and small shared data."""

import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import zlib

# LLVM at -O0: the tests' models are tiny, so compiling dominates their time, and -O0 compiles
# ~3x faster (a tiny Xception's init: 8.7 -> 2.2 s) with the same operations.
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}")
# On a GPU box the tests still run on the CPU: two xdist workers (and their subprocesses, which
# inherit this) would otherwise each preallocate 75 % of the GPU's memory.
os.environ["JAX_PLATFORMS"] = "cpu"

from absl import flags  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top
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
from fakejax import models  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def train_records(dataset, data_cfg):
  """The records a run with config block `data_cfg` trains on (runs.Selection.train)."""
  from fakejax import runs  # pylint: disable=g-import-not-at-top
  return runs.Selection.from_config(data_cfg, dataset).train(dataset)


@pytest.fixture
def make_config(data_root, tiny_synthetic):
  del tiny_synthetic  # Built once, before any config points at it.
  return lambda **kw: tiny_config(data_root, **kw)


@pytest.fixture(scope="session")
def tiny_run(data_root, tiny_synthetic, tmp_path_factory):
  """A run trained for 2 steps (enough to test loading, evaluating and predicting)."""
  del tiny_synthetic
  from fakejax import training  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("runs") / "tiny")
  training.train_and_evaluate(tiny_config(data_root, total_steps=2), workdir)
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


# ---------------------------------------------------------------------------------------------
# Tiny models (test_models, test_fold, test_cpu_kernels).
# ---------------------------------------------------------------------------------------------
# Tiny models of each kind, shared by the model, kernel and folding tests.
TINY_MODELS = {"xception": dict(width=0.0625, middle_blocks=1), "resnet50": dict(width=0.0625), "resnet_trunc": dict(width=0.0625),
               "mobilenet_v2": dict(width=0.25), "deepfd": dict(width=0.0625)}


def tiny_model(name, num_classes=3):
  """A tiny model of kind `name`, without dropout.

  Built with 'rbg' keys: its ~60 initialisers (one program per kernel shape) compile in about a
  third of the time threefry's take, most of what building a tiny model costs on CPU.
  """
  with jax.default_prng_impl("rbg"):
    return models.create(name, num_classes, dropout=0.0, **TINY_MODELS[name])


# ---------------------------------------------------------------------------------------------
# Image files (test_datasets, test_evaluate).
# ---------------------------------------------------------------------------------------------
def write_png(path, arr, **kw):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(arr).save(path, **kw)


def random_image(seed, h=24, w=20):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def bad_image_corpus(d):
  """Every kind of file a scraped dataset contains; returns {name: expected skip reason or None}."""
  os.makedirs(d, exist_ok=True)
  good = random_image(3, 16, 16)
  Image.fromarray(good).save(os.path.join(d, "good.png"))
  full = open(os.path.join(d, "good.png"), "rb").read()
  open(os.path.join(d, "truncated.png"), "wb").write(full[: len(full) // 2])
  open(os.path.join(d, "zero.png"), "wb").close()
  open(os.path.join(d, "text.png"), "w").write("this is not an image\n")
  Image.fromarray(good).convert("CMYK").save(os.path.join(d, "cmyk.jpg"), quality=95)
  Image.fromarray((np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)).save(
      os.path.join(d, "sixteen.png"))
  Image.fromarray(np.dstack([good, np.full((16, 16), 128, np.uint8)])).save(os.path.join(d, "rgba.png"))
  Image.fromarray(good).convert("P").save(os.path.join(d, "palette.png"))
  Image.fromarray(good[:1, :1]).save(os.path.join(d, "one.png"))
  # A valid PNG header that declares 100000 x 100000 pixels (a decompression bomb).
  ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
  chunk = lambda t, b: struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
  open(os.path.join(d, "bomb.png"), "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                                                 + chunk(b"IEND", b""))
  open(os.path.join(d, "notes.txt"), "w").write("ignored")
  return {"good.png": None, "truncated.png": "cannot decode", "zero.png": "empty file",
          "text.png": "not an image", "cmyk.jpg": None, "sixteen.png": None, "rgba.png": None,
          "palette.png": None, "one.png": "too small", "bomb.png": "decompression bomb"}


# ---------------------------------------------------------------------------------------------
# A tiny training run as a real process (test_train, test_deepfd).
# ---------------------------------------------------------------------------------------------
def train_command(data_root, workdir, steps=16, signal_at=None):
  """The tiny run's command line; signal_at=(step, 'SIGTERM'): the process sends itself that
  signal right after that step (tests/signal_at.py), so where it stops is known in advance."""
  flags = {"model.width": 0.125, "model.middle_blocks": 1, "model.dropout": 0.3,
           "data.cache_dir": data_root, "data.synthetic.size": 32, "data.synthetic.train": 8,
           "data.synthetic.val": 4, "data.synthetic.test": 3, "data.image_size": 32,
           "batch_size": 16, "total_steps": steps, "eval_every_steps": 4, "log_every_steps": 1,
           "keep_checkpoints": 10}
  module = ["tests.signal_at", str(signal_at[0]), signal_at[1]] if signal_at else []
  return ([sys.executable, "-m"] + module + ["fakejax.train", "--config", "configs/quick.py",
                                             "--workdir", workdir] + [f"--config.{k}={v}" for k, v in flags.items()])


def train_env():
  return subprocess_env(PYTHONUNBUFFERED="1")


def train_losses(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def run_to_end(cmd):
  """(exit status, stdout and stderr) of a command run to its end."""
  r = subprocess.run(cmd, cwd=ROOT, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                     text=True, timeout=300)
  return r.returncode, r.stdout


# ---------------------------------------------------------------------------------------------
# Several processes joined by jax.distributed on loopback (test_multihost, test_multihost_schedule).
# ---------------------------------------------------------------------------------------------
MULTIHOST_HEARTBEAT_S = 10
MULTIHOST_STEPS = 8


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def multihost_flags(data_root, workdir):
  c = {"model.width": 0.125, "model.middle_blocks": 1, "model.dropout": 0.3, "data.cache_dir": data_root,
       "data.synthetic.size": 32, "data.synthetic.train": 8, "data.synthetic.val": 4,
       "data.synthetic.test": 3, "data.image_size": 32, "batch_size": 16, "total_steps": MULTIHOST_STEPS,
       "eval_every_steps": 4, "checkpoint_every_steps": 1, "log_every_steps": 1, "keep_checkpoints": 20,
       "aug.jpg_prob": 0.5, "aug.blur_prob": 0.5,  # Augmentation draws must follow the global example.
       # SGD: Adam divides by the gradient's running RMS, which turns the last-bit differences of
       # another reduction order into visible ones on parameters whose gradient is ~0.
       "optim.name": "sgd", "optim.lr": 0.01}
  return ["--config", "configs/quick.py", "--workdir", workdir] + [f"--config.{k}={v}" for k, v in c.items()]


def start_processes(module_args, nproc, devices, signal_at=None):
  """nproc processes of `python -m ...` joined by jax.distributed on a fresh loopback port;
  signal_at=(step, 'SIGTERM'): the last process sends itself that signal right after that step
  (tests/signal_at.py)."""
  port, procs = free_port(), []
  for i in range(nproc):
    args = module_args
    if signal_at and i == nproc - 1:
      args = ["tests.signal_at", str(signal_at[0]), signal_at[1]] + module_args
    # XLA's default optimisation: at -O0 the in-process and the cross-process (gloo) gradient
    # all-reduce round differently enough to move BatchNorm biases by ~2e-4 in 8 steps.
    env = subprocess_env(devices, fast_compile=False, PYTHONUNBUFFERED="1",
                         FAKEJAX_HEARTBEAT_S=str(MULTIHOST_HEARTBEAT_S))
    if nproc > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(nproc),
                 JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen([sys.executable, "-m"] + args, cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True))
  return procs


def finish_processes(procs, timeout=300):
  """(exit codes, outputs); kills whatever is left at the deadline (the test then fails)."""
  deadline = time.time() + timeout
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=max(deadline - time.time(), 1))[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise AssertionError("processes did not stop: " + "".join(q.communicate()[0][-2000:] for q in procs))
  return [p.returncode for p in procs], outs


def checkpoint_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


# ---------------------------------------------------------------------------------------------
# Exported graphs (test_gpu_graph, test_benchmark).
# ---------------------------------------------------------------------------------------------
def head_dot(line):
  """A matmul of the classifier head (forward or backward), float32 by design (models.create):
  one of its tensors has the head's 1 or 2 outputs as its last dimension."""
  return "dot_general" in line and re.search(r"tensor<(\d+x)*[12]xf32>", line.rsplit(":", 1)[-1]) is not None
