"""Shared layers: conv+BN blocks, separable convolutions, pooling, activation taps.

These say what the networks are. How a convolution or a pool runs on a backend (XLA's own op
or a CPU formulation) is chosen when it is traced, in fakejax.models.cpu_kernels.
"""


from flax import nnx
import jax.numpy as jnp

from fakejax.models import cpu_kernels
from fakejax.models import inits


def relu6(x):
  return jnp.clip(x, 0.0, 6.0)


def tapper(taps):
  """`taps` (a callable `taps(name, activation) -> activation`), or a pass-through for None."""
  return taps if taps is not None else lambda name, x: x


def keep_dtypes(arrays, dtype=None):
  """A normalisation layer's `promote_dtype` that casts nothing: the input keeps the compute
  dtype, the statistics, scale and bias keep float32, so the layer computes in float32 and only
  its output is cast to the compute dtype (as torch.autocast and Keras's mixed precision do).
  Flax's default casts the statistics, scale and bias to bfloat16 first, which rounds every
  normalisation: 1.6x to 2.5x the bf16 error of Keras's mixed MobileNetV2 and Xception."""
  del dtype
  return tuple(arrays)


def batch_norm(features, *, dtype, rngs, **kwargs):
  """nnx.BatchNorm computing in float32 whatever the compute dtype (output in `dtype`)."""
  return nnx.BatchNorm(features, dtype=dtype, promote_dtype=keep_dtypes, rngs=rngs, **kwargs)


def conv(cin, cout, kernel, stride=1, padding="SAME", *, groups=1, use_bias=False, dtype, rngs,
         kernel_init=inits.FLAX_KERNEL):
  """A square nnx.Conv whose convolution runs as cpu_kernels chooses at trace time."""
  return nnx.Conv(cin, cout, (kernel, kernel), (stride, stride), padding=padding,
                  feature_group_count=groups, use_bias=use_bias, dtype=dtype, rngs=rngs,
                  kernel_init=kernel_init, conv_general_dilated=cpu_kernels.conv)


class ConvBN(nnx.Module):
  """Conv (no bias) -> BatchNorm -> activation (`act`; None for none).

  groups == cin == cout makes it a depthwise convolution.
  """

  # (convolution, the BatchNorm applied directly to its output): what models.fold folds.
  FOLDS = (("conv", "bn"),)

  def __init__(self, cin, cout, kernel, stride=1, padding="SAME", *, act=nnx.relu, groups=1, bn,
               dtype, rngs, kernel_init=inits.FLAX_KERNEL):
    self.conv = conv(cin, cout, kernel, stride, padding, groups=groups, dtype=dtype, rngs=rngs,
                     kernel_init=kernel_init)
    self.bn = batch_norm(cout, dtype=dtype, rngs=rngs, **bn)
    self.act = act

  def __call__(self, x):
    x = self.bn(self.conv(x))
    return self.act(x) if self.act is not None else x


class SeparableConv(nnx.Module):
  """Keras SeparableConv2D without bias: depthwise 3x3 then pointwise 1x1."""

  def __init__(self, cin, cout, *, dtype, rngs, kernel_init=inits.FLAX_KERNEL):
    kw = dict(dtype=dtype, rngs=rngs, kernel_init=kernel_init)
    self.depthwise = conv(cin, cin, 3, groups=cin, **kw)
    self.pointwise = conv(cin, cout, 1, **kw)

  def __call__(self, x):
    return self.pointwise(self.depthwise(x))


def region(valid, input_hw):
  """What `global_avg_pool` needs to average only each image's own pixels: None (every cell), or
  (valid (B, 2) int array, each input's (height, width) before padding, the padded (H, W)).

  For whole images padded to a size bucket (scoring.View): the padded border must not count in
  the pooled features. A model's forward takes `valid` and passes region(valid, x.shape[1:3]).
  """
  return None if valid is None else (valid, tuple(input_hw))


def global_avg_pool(x, valid_region=None):
  """Mean over H, W of NHWC; with a `valid_region` (region()), over the cells that cover each
  image's valid pixels (ceil(h * Hf / H) rows and ceil(w * Wf / W) columns of an Hf x Wf map)."""
  if valid_region is None:
    return jnp.mean(x, axis=(1, 2))
  valid, (h_in, w_in) = valid_region
  hf, wf = x.shape[1:3]
  rows = -(-valid[:, 0] * hf // h_in)
  cols = -(-valid[:, 1] * wf // w_in)
  mask = ((jnp.arange(hf)[None, :, None] < rows[:, None, None])
          & (jnp.arange(wf)[None, None, :] < cols[:, None, None]))[..., None].astype(x.dtype)
  return jnp.sum(x * mask, axis=(1, 2)) / jnp.sum(mask, axis=(1, 2))


def max_pool(x, window=3, stride=2, padding="SAME"):
  """Square max pooling over NHWC (formulation: cpu_kernels.max_pool)."""
  return cpu_kernels.max_pool(x, window, stride, padding)


def call_block(block, x, remat=False):
  """`block(x)`; with `remat`, under nnx.remat.

  Rematerialised, a block keeps only its input for the backward pass and recomputes its
  activations there: less memory for larger batches or images, at about one more forward pass.
  The gradients are the same.
  """
  return _remat_call(block, x) if remat else block(x)


_remat_call = nnx.remat(lambda block, x: block(x))
