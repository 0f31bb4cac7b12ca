"""What every command-line entry point shares: flag parsing with clear errors, logging."""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags


def _bad_override(argv):
  """The first `--config.a.b=v` naming a key the config does not have, with the valid keys."""
  config_file = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if config_file is None and "--config" in argv:
    config_file = argv[argv.index("--config") + 1]
  if not config_file:
    return None
  try:
    config = config_flags.config_flags._LoadConfigModule("config", config_file.split(":")[0])  # pylint: disable=protected-access
    config = config.get_config(*config_file.split(":")[1:2])
  except Exception:  # pylint: disable=broad-except  (the normal parser reports it)
    return None
  for a in argv:
    if not a.startswith("--config."):
      continue
    node, path = config, a[len("--config."):].split("=", 1)[0].split(".")
    for i, key in enumerate(path):
      if not hasattr(node, "keys") or key not in node:
        valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(none: not a group)"
        where = ".".join(["config"] + path[:i])
        return f"unknown config key {'.'.join(path[:i + 1])!r}; valid keys of {where}: {valid}"
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
  """--coordinator_address/--num_processes/--process_id for jax.distributed (sharding.initialize)."""
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for jax.distributed "
                      "(default: JAX_COORDINATOR_ADDRESS, or SLURM / Open MPI detection).")
  flags.DEFINE_integer("num_processes", None, "Processes of a multi-host run (default: from the environment).")
  flags.DEFINE_integer("process_id", None, "This process's index (default: from the environment).")


def define_dtype_flag():
  """--dtype of the commands that load a run (evaluate, predict, explain, serve)."""
  return flags.DEFINE_enum("dtype", "", ["", "auto", "float32", "bfloat16"],
                           "Compute dtype: '' the run's own, 'auto' bfloat16 on GPU/TPU and float32 "
                           "on CPU, or float32 / bfloat16.")


def _compilation_cache(path):
  """JAX's persistent compilation cache in `path` ('' : off): a rerun, a resumed run or another
  command on the same model reuses the compiled programs instead of compiling again."""
  if path and "jax" in sys.modules:  # A command that never loads JAX (prepare) does not pay ~100 MB for it.
    sys.modules["jax"].config.update("jax_compilation_cache_dir", os.path.expanduser(path))


def run(main):
  """absl app.run with one-line errors for bad input, quiet library logging by default and the
  persistent compilation cache (--compilation_cache_dir)."""
  flags.DEFINE_string("compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                              "~/.cache/fakejax/jax"),
                      "JAX's persistent compilation cache ('' : off; default: "
                      "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/fakejax/jax).")

  def wrapped(argv):
    _compilation_cache(flags.FLAGS.compilation_cache_dir)
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # orbax and grain log every step at INFO.
    try:
      return main(argv)
    except USER_ERRORS as e:
      sys.exit(f"{argv[0]}: error: {e}")
  app.run(wrapped, flags_parser=_parse)
