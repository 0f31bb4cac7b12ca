"""What every command-line entry point shares: flag parsing with clear errors, logging, and the
process settings JAX reads when it starts a backend (XLA flags, device memory, compilation cache).

Importing fakejax sets nothing; `run` sets these as a command starts, before any device is touched.
"""

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
import types

from absl import app
from absl import flags
from absl import logging


def config_arg(argv):
  """The value of --config in `argv` ('file.py[:variant]'), or None."""
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _bad_override(argv):
  """The first `--config.a.b=v` naming a key the config does not have, with the valid keys."""
  config_file = config_arg(argv)
  if not config_file:
    return None
  from fakejax import defaults  # pylint: disable=g-import-not-at-top  (only when a flag was refused)
  path, _, variant = config_file.partition(":")
  try:
    config = defaults.from_file(path, variant or None)
  except Exception:  # pylint: disable=broad-except  (the normal parser reports it)
    return None
  for a in argv:
    if not a.startswith("--config."):
      continue
    node, keys = config, a[len("--config."):].split("=", 1)[0].split(".")
    for i, key in enumerate(keys):
      if not hasattr(node, "keys") or key not in node:
        valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(none: not a group)"
        where = ".".join(["config"] + keys[:i])
        return f"unknown config key {'.'.join(keys[:i + 1])!r}; valid keys of {where}: {valid}"
      node = node[key]
  return None


def _parse(argv):
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    msg = _bad_override(argv[1:]) or str(e).strip().splitlines()[-1]
    sys.exit(f"{argv[0]}: error: {msg}")


class UserError(ValueError):
  """A problem with the user's input, reported as one line without a traceback.

  Only these (and missing or existing paths) are shortened: any other exception, a
  ValueError from a library included, is a bug and keeps its traceback.
  """


USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, NotADirectoryError)


def define_distributed_flags():
  """--coordinator_address/--num_processes/--process_id for jax.distributed (processes.initialize)."""
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for jax.distributed "
                      "(default: JAX_COORDINATOR_ADDRESS, or SLURM / Open MPI detection).")
  flags.DEFINE_integer("num_processes", None, "Processes of a multi-host run (default: from the environment).")
  flags.DEFINE_integer("process_id", None, "This process's index (default: from the environment).")


# What each command that scores with a trained run judges by default. evaluate and explain score
# test sets with the field's protocol: the run's evaluation crop. predict and serve judge photos
# of any size: whole, or tiles for the largest (scoring.View's 'auto').
MODE_DEFAULTS = {"evaluate": "full", "explain": "full", "predict": "auto", "serve": "auto"}


def define_run_flags():
  """The flags that load a trained run (evaluate, predict, explain, serve): --workdir,
  --checkpoint, --dtype, --threshold, --threads. Returns their FlagHolders as attributes."""
  f = types.SimpleNamespace()
  f.workdir = flags.DEFINE_string("workdir", None, "Run folder written by fakejax.train.")
  f.checkpoint = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
  f.dtype = flags.DEFINE_enum("dtype", "", ["", "auto", "float32", "bfloat16"],
                              "Compute dtype: '' the run's own, 'auto' bfloat16 on GPU/TPU and float32 "
                              "on CPU, or float32 / bfloat16.")
  f.threshold = flags.DEFINE_float("threshold", None, "p_fake threshold (default: the run's config).")
  f.threads = flags.DEFINE_integer("threads", 0, "Image-decoding threads (default: the run's eval_threads, "
                                   "0: one per core).")
  return f


def define_mode_flag(command, modes=None):
  """--mode, whose default is the command's (MODE_DEFAULTS) among `modes` (default: every one)."""
  from fakejax import scoring  # pylint: disable=g-import-not-at-top  (only the scoring commands)
  return flags.DEFINE_enum("mode", MODE_DEFAULTS[command], list(modes or scoring.MODES),
                           "View and image-level decision rule (fakejax.scoring.views).")


def define_scoring_flags(command):
  """define_run_flags' flags, --mode, and the View's: --patch_size, --k, --theta, --tta,
  --exact_sizes (evaluate, predict, serve), defined here once: one name, one help and one
  default each (--mode's is the command's). `view_settings` reads them."""
  f = define_run_flags()
  f.mode = define_mode_flag(command)
  f.patch_size = flags.DEFINE_integer("patch_size", 32, "Patch side for the patch modes (16/32/64/128).")
  f.k = flags.DEFINE_integer("k", 5, "Random patches per image in 'random' mode (odd).")
  f.theta = flags.DEFINE_float("theta", 0.5, "Confidence margin |p_fake - p_real| of 'confident' mode.")
  f.tta = flags.DEFINE_multi_string("tta", [], "Test-time copies: flip, rot=DEG (+-DEG), rand=RANGE:N.")
  f.exact_sizes = flags.DEFINE_bool("exact_sizes", None, "Whole images: one compiled program per image "
                                    "size, no padding; --noexact_sizes pads them to size buckets "
                                    "(scoring.views). Default: exact for --mode whole (reported numbers), "
                                    "buckets for auto (photos of many sizes).")
  return f


def view_settings(f):
  """The View keywords of define_scoring_flags' flags (--exact_sizes unset: exact for 'whole')."""
  exact = f.exact_sizes.value
  return dict(patch_size=f.patch_size.value, k=f.k.value, theta=f.theta.value,
              exact_sizes=(f.mode.value == "whole") if exact is None else exact)


def threshold(f, run):
  """--threshold, else the run's own."""
  return run.config.threshold if f.threshold.value is None else f.threshold.value


# ---------------------------------------------------------------------------
# Process settings, read by XLA when a backend starts.
# ---------------------------------------------------------------------------
# XLA:CPU hands convolutions to YNNPACK by default. In jaxlib 0.10 its own convolution kernels
# were faster for these models on x86 (ResNet-50 train +6 %, eval +10 %); from 0.12 YNNPACK's are
# as fast or faster (eval -6 % with this flag): docs/performance.md. A user's own setting wins.
CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# The jaxlib series this flag is set for: where it was measured to help (0.11 was not measured).
CPU_CONV_FLAG_JAXLIB = ("0.10.",)
# What a command does with accelerators: 'train' takes them as JAX does by default (it preallocates
# 75 % of each GPU's memory: the fastest for one training process); 'shared' allocates as it goes,
# so it can run beside a training run on the same GPU (evaluate, predict, explain, serve); 'none'
# never starts CUDA (prepare: it only reads and writes files).
DEVICE_USES = ("train", "shared", "none")


def only_jaxlib_reads_xla_flags():
  """True when no XLA but jaxlib's own (CPU) can start in this process: a CPU-only process.

  Every XLA that starts parses XLA_FLAGS and aborts on a flag it does not know. A GPU or TPU
  plugin carries its own XLA, possibly of another version, and jax loads every installed plugin
  (the `jax_plugins` package or entry points, PJRT_NAMES_AND_LIBRARY_PATHS, libtpu) even when
  JAX_PLATFORMS says cpu; so with any of them present the CPU-only flag is left out. jax
  offers no CPU-only way to pass it (compiler_options is per jit call).
  """
  try:
    importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return False
  if os.environ.get("PJRT_NAMES_AND_LIBRARY_PATHS") or os.environ.get("TPU_LIBRARY_PATH"):
    return False
  if importlib.util.find_spec("libtpu") is not None:
    return False
  if importlib.metadata.entry_points(group="jax_plugins"):
    return False
  plugins = importlib.util.find_spec("jax_plugins")
  return plugins is None or not any(pkgutil.iter_modules(plugins.submodule_search_locations))


def keep_freed_host_memory():
  """glibc keeps the memory XLA:CPU frees, for its next allocations, instead of returning it.

  XLA:CPU allocates a step's temporaries (2 GiB for a ResNet-50 train step at batch 16) anew at
  every step; glibc serves such sizes with fresh mmaps and unmaps them when freed, so the kernel
  zeroes ~500k new pages every step. Without mmap, with one arena and no trimming, the freed
  heap is reused: ResNet-50 training +25 % on the 2-core CPU (docs/performance.md). The heap
  stays at its peak. Settings made later (here, at a command's start) apply to later allocations.

  Returns:
    True when glibc took the settings.
  """
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:  # Not glibc.
    return False
  m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # malloc.h
  return all([libc.mallopt(m_mmap_max, 0), libc.mallopt(m_trim_threshold, 2**31 - 1),
              libc.mallopt(m_arena_max, 1)])


def set_process_defaults(devices="train"):
  """The settings a command wants before JAX starts a backend; a user's own setting wins.

  Args:
    devices: one of DEVICE_USES.
  """
  if devices not in DEVICE_USES:
    raise ValueError(f"Unknown device use {devices!r}; known: {', '.join(DEVICE_USES)}")
  env = os.environ
  cpu_only = only_jaxlib_reads_xla_flags()
  if cpu_only and not any(k == "GLIBC_TUNABLES" or k.startswith("MALLOC_") for k in env):
    keep_freed_host_memory()
  if "xla_cpu_experimental_ynn_fusion_type" not in env.get("XLA_FLAGS", "") and cpu_only and \
      importlib.metadata.version("jaxlib").startswith(CPU_CONV_FLAG_JAXLIB):
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {CPU_CONV_FLAG}".strip()
  if devices == "shared":
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  if devices == "none" and "JAX_PLATFORMS" not in env:
    env["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # jax read its environment on import: tell it too (no backend yet).
      sys.modules["jax"].config.update("jax_platforms", "cpu")


def _compilation_cache(path, max_gb):
  """JAX's persistent compilation cache in `path` ('' : off), at most `max_gb` GB (least recently
  used programs go first): a rerun, a resumed run or another command on the same model reuses the
  compiled programs instead of compiling again."""
  if path and "jax" in sys.modules:  # A command that never loads JAX (prepare) does not pay ~100 MB for it.
    config = sys.modules["jax"].config
    config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    config.update("jax_compilation_cache_max_size", int(max_gb * 2**30) if max_gb > 0 else -1)


def run(main, devices="train"):
  """absl app.run with one-line errors for bad input, quiet library logging by default, the
  process settings of `set_process_defaults(devices)` and the persistent compilation cache
  (--compilation_cache_dir, --compilation_cache_max_gb)."""
  set_process_defaults(devices)
  flags.DEFINE_string("compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                              "~/.cache/fakejax/jax"),
                      "JAX's persistent compilation cache ('' : off; default: "
                      "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/fakejax/jax).")
  flags.DEFINE_float("compilation_cache_max_gb", 4.0, "Size bound of the compilation cache: the least "
                     "recently used programs are removed beyond it (<= 0: unbounded).")

  def wrapped(argv):
    _compilation_cache(flags.FLAGS.compilation_cache_dir, flags.FLAGS.compilation_cache_max_gb)
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # orbax and grain log every step at INFO.
    try:
      return main(argv)
    except USER_ERRORS as e:
      sys.exit(f"{argv[0]}: error: {e}")
  app.run(wrapped, flags_parser=_parse)
