"""fakejax: train and evaluate detectors of GAN-generated images with JAX and Flax NNX."""

import importlib.metadata
import importlib.util
import os
import pkgutil

# XLA:CPU (jaxlib 0.10) hands convolutions to YNNPACK by default; its own convolution kernels
# are faster for these models on x86 (ResNet-50 train +10%, eval +13%, Xception eval +15%:
# docs/performance.md). XLA reads XLA_FLAGS when a backend starts, so it is set on import; a
# user's own setting of this flag wins.
_CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
_FLAG_JAXLIB = "0.10."  # The jaxlib series whose XLA:CPU has this flag (and was measured with it).


def _only_jaxlib_reads_xla_flags():
  """True when no XLA but jaxlib's own (CPU) can start in this process.

  Every XLA that starts parses XLA_FLAGS and aborts on a flag it does not know. A GPU or TPU
  plugin carries its own XLA, possibly of another version, and jax loads every installed plugin
  (the `jax_plugins` package or entry points, PJRT_NAMES_AND_LIBRARY_PATHS, libtpu) even when
  JAX_PLATFORMS says cpu; so with any of them present the CPU-only flag is left out. jax
  offers no CPU-only way to pass it (compiler_options is per jit call).
  """
  try:
    jaxlib = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return False
  if not jaxlib.startswith(_FLAG_JAXLIB):
    return False
  if os.environ.get("PJRT_NAMES_AND_LIBRARY_PATHS") or os.environ.get("TPU_LIBRARY_PATH"):
    return False
  if importlib.util.find_spec("libtpu") is not None:
    return False
  if importlib.metadata.entry_points(group="jax_plugins"):
    return False
  plugins = importlib.util.find_spec("jax_plugins")
  return plugins is None or not any(pkgutil.iter_modules(plugins.submodule_search_locations))


if ("xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", "")
    and _only_jaxlib_reads_xla_flags()):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_CPU_CONV_FLAG}".strip()
