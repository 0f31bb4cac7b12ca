"""Initial parameters as the framework each architecture comes from ('reference'), or flax's.

From-scratch studies compare with Keras (Xception, MobileNetV2), torchvision (ResNet) and
big_vision (BiT) runs, whose initial weights are not flax's lecun-normal defaults:

- Keras: glorot uniform, limit sqrt(6 / (fan_in + fan_out)), for Conv2D, DepthwiseConv2D,
  both SeparableConv2D kernels and Dense; zero biases. A Keras depthwise kernel is
  (kh, kw, C, 1), ours (kh, kw, 1, C): the fans swap and their sum, hence the limit, is the same.
- torchvision ResNet: convolutions kaiming normal, mode fan_out, ReLU gain: an untruncated
  normal of std sqrt(2 / (kh kw cout)); the classifier keeps nn.Linear's default, kernel and
  bias uniform in +-1/sqrt(fan_in) (kaiming uniform with a = sqrt(5)).
- big_vision BiT: lecun normal convolutions (as flax; their scale is standardised away) and a
  zero-initialised head.

BatchNorm and GroupNorm start at scale 1, bias 0 (and statistics 0 and 1) in all of them, as in
flax. 'flax' is nnx's defaults everywhere: lecun normal kernels (truncated), zero biases.
"""

import math

from flax import nnx
import jax
import jax.numpy as jnp

INITS = ("reference", "flax")
FRAMEWORKS = ("keras", "torchvision", "big_vision")
FLAX_KERNEL = nnx.initializers.lecun_normal()  # nnx.Conv's and nnx.Linear's default.

_CONV = {"keras": nnx.initializers.glorot_uniform(),
         "torchvision": nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
         "big_vision": FLAX_KERNEL}


def _check(init, framework):
  if init not in INITS:
    raise ValueError(f"Unknown init {init!r}; known: {', '.join(INITS)}")
  if framework not in FRAMEWORKS:
    raise ValueError(f"Unknown framework {framework!r}; known: {', '.join(FRAMEWORKS)}")


def conv(init, framework):
  """The convolution kernel initialiser (HWIO; depthwise kernels (kh, kw, 1, C)).

  Args:
    init: 'reference' (the framework's) or 'flax'.
    framework: 'keras', 'torchvision' or 'big_vision'.

  Returns:
    a jax initialiser `(key, shape, dtype) -> array`.
  """
  _check(init, framework)
  return _CONV[framework] if init == "reference" else FLAX_KERNEL


def _uniform(bound):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def dense(init, framework, fan_in):
  """nnx.Linear keyword arguments for the classifier: {} for flax's defaults.

  Args:
    init: 'reference' (the framework's) or 'flax'.
    framework: 'keras', 'torchvision' or 'big_vision'.
    fan_in: input features (torch's bias bound depends on them).

  Returns:
    {'kernel_init': ..., 'bias_init': ...} or {}.
  """
  _check(init, framework)
  if init == "flax":
    return {}
  if framework == "keras":
    return {"kernel_init": nnx.initializers.glorot_uniform(), "bias_init": nnx.initializers.zeros}
  if framework == "torchvision":
    bound = 1 / math.sqrt(fan_in)
    return {"kernel_init": _uniform(bound), "bias_init": _uniform(bound)}
  return {"kernel_init": nnx.initializers.zeros, "bias_init": nnx.initializers.zeros}
