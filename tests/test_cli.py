"""What a command sets as it starts (fakejax.cli): XLA's CPU flag where only jaxlib's XLA can
start, device-memory defaults by what the command does, and nothing at import."""

import importlib.metadata
import os
import subprocess
import sys

from fakejax import cli


def _xla_flags_after_start(env, then=""):
  """XLA_FLAGS after a command's start (cli.set_process_defaults), in a fresh process."""
  code = f"import os; from fakejax import cli; cli.set_process_defaults(); print(os.environ.get('XLA_FLAGS', '')); {then}"
  return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        check=True).stdout.strip()


def test_cpu_only_xla_flag_is_set_only_when_no_other_xla_can_start(tmp_path):
  """An XLA that does not know a flag in XLA_FLAGS aborts the process; plugins carry their own XLA."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "PJRT_NAMES_AND_LIBRARY_PATHS", "TPU_LIBRARY_PATH")}
  # This venv has jaxlib's CPU XLA only: the flag is set where that jaxlib is one it helps (make
  # test-oldest's jaxlib 0.10), and that XLA accepts it (runs, no abort); not on a newer one.
  flags = _xla_flags_after_start(env, then="import jax; jax.numpy.ones(2).block_until_ready()")
  measured = importlib.metadata.version("jaxlib").startswith(cli.CPU_CONV_FLAG_JAXLIB)
  assert flags == (cli.CPU_CONV_FLAG if measured else "")
  # The user's own setting of the flag wins.
  own = "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"
  assert _xla_flags_after_start({**env, "XLA_FLAGS": own}) == own
  # A PJRT plugin named in the environment, a TPU library, or a plugin package installed under
  # jax_plugins (what jax[cuda] installs): jax loads it even under JAX_PLATFORMS=cpu.
  assert _xla_flags_after_start({**env, "PJRT_NAMES_AND_LIBRARY_PATHS": "gpu:/x/pjrt.so"}) == ""
  assert _xla_flags_after_start({**env, "TPU_LIBRARY_PATH": "/x/libtpu.so", "XLA_FLAGS": "--a"}) == "--a"
  (tmp_path / "jax_plugins" / "xla_cuda99").mkdir(parents=True)
  (tmp_path / "jax_plugins" / "xla_cuda99" / "__init__.py").write_text("")
  path = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
  assert _xla_flags_after_start({**env, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu"}) == ""


def test_importing_fakejax_changes_no_process_setting():
  """Every module imported, nothing in the environment XLA or JAX read has changed: only a
  command's start sets them."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  code = ("import importlib, os, pkgutil, fakejax\nbefore = dict(os.environ)\n"
          "for m in pkgutil.walk_packages(fakejax.__path__, 'fakejax.'):\n"
          "  importlib.import_module(m.name)\n"
          "print(sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)))")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
  assert out.stdout.strip().splitlines()[-1] == "[]"


def _after_start(devices, env):
  code = ("import os, jax; from fakejax import cli; cli.set_process_defaults(%r); "
          "print(os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE'), jax.config.jax_platforms)" % devices)
  clean = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_PYTHON_CLIENT_PREALLOCATE")}
  return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                        check=True).stdout.split()


def test_device_memory_defaults_follow_what_the_command_does():
  """A training process takes JAX's defaults (75 % of a GPU preallocated); evaluate, predict,
  explain and serve allocate as they go, so they fit beside it on one GPU; prepare never starts
  an accelerator. The user's own settings win."""
  assert _after_start("train", {}) == ["None", "None"]
  assert _after_start("shared", {}) == ["false", "None"]
  assert _after_start("shared", {"XLA_PYTHON_CLIENT_PREALLOCATE": "true"}) == ["true", "None"]
  assert _after_start("none", {}) == ["None", "cpu"]
  assert _after_start("none", {"JAX_PLATFORMS": "cuda,cpu"}) == ["None", "cuda,cpu"]
