"""Shared layers: convolutions that are fast on every backend, conv+BN blocks.

XLA's CPU depthwise convolution (feature_group_count == channels) is ~50x slower
than PyTorch's (jax issue 23713). On CPU we compute it as kh*kw shifted
multiply-adds over the padded input instead: the same sums, a few ms instead of
tens. XLA's CPU 1x1 convolution is 2-4x slower than its matrix multiply (its
filter gradient more), so on CPU a 1x1 convolution is a reshape and a matrix
multiply. On GPU/TPU XLA's convolutions (cuDNN) stay. All are exposed through
nnx.Conv's `conv_general_dilated` hook, so parameters look like any nnx.Conv.
Two gradients get their own CPU code for the same reason: the depthwise filter
gradient (cache-sized blocks) and max pooling (by tap index).
"""

import functools

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp


def _xla_unless(applies):
  """A fast NHWC/HWIO formulation behind the lax.conv_general_dilated API.

  The wrapped `fast(x, rhs, strides, precision, preferred_element_type)` gets the input
  already padded; anything `applies(lhs, rhs, feature_group_count)` rejects, or any
  dilation, goes to lax.conv_general_dilated unchanged.
  """
  def wrap(fast):
    @functools.wraps(fast)
    def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, precision=None,
             preferred_element_type=None, **unused):
      del unused
      undilated = all(d is None or all(v == 1 for v in d) for d in (lhs_dilation, rhs_dilation))
      if not (undilated and applies(lhs, rhs, feature_group_count)):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        precision=precision,
                                        preferred_element_type=preferred_element_type)
      if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
      x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
      return fast(x, rhs, tuple(window_strides), precision, preferred_element_type)
    return conv
  return wrap


@_xla_unless(lambda lhs, rhs, groups: rhs.shape[2] == 1 and groups == rhs.shape[3] == lhs.shape[3])
def shifted_depthwise_conv(x, rhs, strides, precision, preferred_element_type):
  """Depthwise convolution as kh*kw shifted multiply-adds over the padded input."""
  del precision
  return _depthwise(x, rhs, strides, preferred_element_type)


def _shifted_sums(x, rhs, strides, acc_dtype):
  kh, kw, _, c = rhs.shape
  sh, sw = strides
  oh = (x.shape[1] - kh) // sh + 1
  ow = (x.shape[2] - kw) // sw + 1
  acc_dtype = acc_dtype or x.dtype
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = lax.slice(x, (0, i, j, 0), (x.shape[0], i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
                      (1, sh, sw, 1))
      term = tap.astype(acc_dtype) * rhs[i, j, 0].astype(acc_dtype)
      out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x, rhs, strides, acc_dtype):
  return _shifted_sums(x, rhs, strides, acc_dtype)


def _depthwise_fwd(x, rhs, strides, acc_dtype):
  return _shifted_sums(x, rhs, strides, acc_dtype), (x, rhs)


def _depthwise_bwd(strides, acc_dtype, res, g):
  x, rhs = res
  _, input_vjp = jax.vjp(lambda x: _shifted_sums(x, rhs, strides, acc_dtype), x)
  dx, = input_vjp(g)
  return dx, depthwise_filter_grad(x, g, rhs.shape[:2], strides).astype(rhs.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)

# Bytes of input rows one step of depthwise_filter_grad reads: about what one core's L2 holds.
FILTER_GRAD_CHUNK_BYTES = 1 << 20


def depthwise_filter_grad(x, g, kernel, strides):
  """d(depthwise conv)/d(kernel) for padded input x and output gradient g, as (kh, kw, 1, C).

  The kh*kw per-channel sums of tap * g over N, H, W. Written as whole-tensor sums, XLA's CPU
  code streams both tensors through memory once per tap and is memory-bound (~45 ms at
  16x16x728, batch 16). Here a scan walks the batch, and within an image blocks of output rows
  whose input rows fit in FILTER_GRAD_CHUNK_BYTES, so the taps re-read x and g from cache:
  4-6x faster (docs/performance.md). Sums are accumulated in float32.
  """
  kh, kw = kernel
  sh, sw = strides
  n, oh, ow, c = g.shape
  row_bytes = x.shape[2] * c * x.dtype.itemsize
  fits = lambda r: r == 1 or ((r - 1) * sh + kh) * row_bytes <= FILTER_GRAD_CHUNK_BYTES
  r = max(d for d in range(1, oh + 1) if oh % d == 0 and fits(d))  # rows per block
  rows = (r - 1) * sh + kh

  def block(xb, gb):
    return jnp.stack([
        jnp.sum(lax.slice(xb, (i, j, 0), (i + (r - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
                          (sh, sw, 1)).astype(jnp.float32) * gb.astype(jnp.float32), axis=(0, 1))
        for i in range(kh) for j in range(kw)])

  def image(acc, xg):
    xi, gi = xg
    if r == oh:
      return acc + block(xi[:rows], gi), None

    def rows_block(acc, k):
      xb = lax.dynamic_slice_in_dim(xi, k * r * sh, rows, axis=0)
      return acc + block(xb, lax.dynamic_slice_in_dim(gi, k * r, r, axis=0)), None
    return lax.scan(rows_block, acc, jnp.arange(oh // r))[0], None

  acc = lax.scan(image, jnp.zeros((kh * kw, c), jnp.float32), (x, g))[0]
  return acc.reshape(kh, kw, 1, c)


@_xla_unless(lambda lhs, rhs, groups: rhs.shape[:2] == (1, 1) and groups == 1)
def matmul_pointwise_conv(x, rhs, strides, precision, preferred_element_type):
  """1x1 convolution as one 2-D matrix multiply."""
  sh, sw = strides
  if (sh, sw) != (1, 1):
    x = x[:, ::sh, ::sw, :]
  n, h, w, cin = x.shape
  y = lax.dot(x.reshape(n * h * w, cin), rhs.reshape(cin, -1), precision=precision,
              preferred_element_type=preferred_element_type)
  return y.reshape(n, h, w, -1)


def conv_impl(impl="auto"):
  """The conv function for ungrouped layers: 'matmul' (CPU default: 1x1 as a matrix multiply) or 'xla'.

  XLA's CPU convolution runs a 1x1 kernel 2-4x slower than its own matrix multiply of the same
  sums, and its filter gradient slower still; on GPU/TPU XLA's convolution stays.
  """
  if impl == "auto":
    impl = "matmul" if jax.default_backend() == "cpu" else "xla"
  if impl not in ("matmul", "xla"):
    raise ValueError(f"Unknown conv impl {impl!r}; known: auto, matmul, xla")
  return matmul_pointwise_conv if impl == "matmul" else lax.conv_general_dilated


def depthwise_impl(impl="auto"):
  """The conv function for depthwise layers: 'shift' (CPU default) or 'xla'."""
  if impl == "auto":
    impl = "shift" if jax.default_backend() == "cpu" else "xla"
  if impl not in ("shift", "xla"):
    raise ValueError(f"Unknown depthwise impl {impl!r}; known: auto, shift, xla")
  return shifted_depthwise_conv if impl == "shift" else lax.conv_general_dilated


def relu6(x):
  return jnp.clip(x, 0.0, 6.0)


class ConvBN(nnx.Module):
  """Conv (no bias) -> BatchNorm -> activation (`act`; None for none).

  groups == cin == cout makes it a depthwise convolution (fast per backend, see depthwise_impl).
  """

  def __init__(self, cin, cout, kernel, stride=1, padding="SAME", act=nnx.relu, groups=1,
               depthwise="auto", conv="auto", *, bn, dtype, rngs):
    fn = depthwise_impl(depthwise) if groups > 1 else conv_impl(conv)
    self.conv = nnx.Conv(cin, cout, (kernel, kernel), (stride, stride), padding=padding,
                         feature_group_count=groups, use_bias=False, dtype=dtype, rngs=rngs,
                         conv_general_dilated=fn)
    self.bn = nnx.BatchNorm(cout, dtype=dtype, rngs=rngs, **bn)
    self.act = act

  def __call__(self, x):
    x = self.bn(self.conv(x))
    return self.act(x) if self.act is not None else x


class SeparableConv(nnx.Module):
  """Keras SeparableConv2D without bias: depthwise 3x3 then pointwise 1x1."""

  def __init__(self, cin, cout, *, dtype, depthwise="auto", conv="auto", rngs):
    self.depthwise = nnx.Conv(cin, cin, (3, 3), padding="SAME", feature_group_count=cin,
                              use_bias=False, dtype=dtype, rngs=rngs,
                              conv_general_dilated=depthwise_impl(depthwise))
    self.pointwise = nnx.Conv(cin, cout, (1, 1), use_bias=False, dtype=dtype, rngs=rngs,
                              conv_general_dilated=conv_impl(conv))

  def __call__(self, x):
    return self.pointwise(self.depthwise(x))


def global_avg_pool(x):
  return jnp.mean(x, axis=(1, 2))


def max_pool(x, window=3, stride=2, padding="SAME"):
  """Square max pooling over NHWC.

  On CPU the forward outside training is XLA's reduce_window, and the gradient is computed tap by
  tap (below): XLA's CPU select-and-scatter takes 5x longer (docs/performance.md). Elsewhere
  XLA's own.
  """
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], (window, window), (stride, stride), padding)
  padding = tuple(tuple(p) for p in padding)
  if jax.default_backend() != "cpu":
    return nnx.max_pool(x, (window, window), (stride, stride), padding=padding)
  return _tap_max_pool(x, window, stride, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _tap_max_pool(x, window, stride, padding):
  return nnx.max_pool(x, (window, window), (stride, stride), padding=padding)


def _tap_max_pool_fwd(x, window, stride, padding):
  """The max over window*window strided taps, and which tap held it first (row-major).

  The gradient follows that index, XLA's select-and-scatter rule. It must not be found again by
  comparing the output with its input in the backward pass: XLA may compute the input twice, with
  different rounding, and the comparison would then drop gradients.
  """
  (top, bottom), (left, right) = padding
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
  oh = (xp.shape[1] - window) // stride + 1
  ow = (xp.shape[2] - window) // stride + 1
  y = first = None
  for k in range(window * window):
    i, j = divmod(k, window)
    v = lax.slice(xp, (0, i, j, 0), (x.shape[0], i + (oh - 1) * stride + 1,
                                     j + (ow - 1) * stride + 1, x.shape[3]), (1, stride, stride, 1))
    if y is None:
      y, first = v, jnp.zeros(v.shape, jnp.int8 if window * window < 128 else jnp.int32)
    else:
      later = v > y
      y, first = jnp.where(later, v, y), jnp.where(later, k, first)
  return y, (first, jnp.zeros(x.shape[1:3] + (0,), x.dtype))  # The second only carries H, W.


def _tap_max_pool_bwd(window, stride, padding, res, g):
  first, hw = res
  (top, bottom), (left, right) = padding
  hp, wp = hw.shape[0] + top + bottom, hw.shape[1] + left + right
  _, oh, ow, _ = g.shape
  zero = jnp.zeros((), g.dtype)
  dxp = None
  for k in range(window * window):  # Each tap's share, scattered back to its strided positions.
    i, j = divmod(k, window)
    part = lax.pad(jnp.where(first == k, g, zero), zero,
                   ((0, 0, 0), (i, hp - i - (oh - 1) * stride - 1, stride - 1),
                    (j, wp - j - (ow - 1) * stride - 1, stride - 1), (0, 0, 0)))
    dxp = part if dxp is None else dxp + part
  return (dxp[:, top:top + hw.shape[0], left:left + hw.shape[1]],)


_tap_max_pool.defvjp(_tap_max_pool_fwd, _tap_max_pool_bwd)
