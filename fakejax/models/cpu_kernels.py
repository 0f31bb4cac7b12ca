"""How convolutions and max pools run: XLA's own ops, or formulations that are faster on XLA:CPU.

The architecture files say what a network is; this module says how its convolutions and pools
run. One switch, read when a function is *traced* (not when a model is built), picks for every
convolution (through nnx.Conv's `conv_general_dilated` hook, so parameters look like any
nnx.Conv) and every max pool:

  'xla'   XLA's grouped convolutions and reduce_window pooling: what a GPU or TPU runs.
  'cpu'   XLA:CPU's slow cases rewritten (below), the rest XLA's.
  'auto'  (default) chosen by the platform the function is lowered for (lax.platform_dependent):
          'cpu' on CPU, 'xla' elsewhere. So exporting for CUDA from a CPU host
          (jax.export(..., platforms=['cuda'])) gives the GPU graph, not the CPU kernels.

Set it for a block with `with cpu_kernels.use("xla"): ...`, for a process with the environment
variable FAKEJAX_KERNELS, and read it with `kernels()`. The setting is part of jit's cache key,
so one built model traced under each setting gives each formulation, never a stale trace.

The CPU formulations, each tested equal to XLA's with gradients (docs/performance.md has the
measurements):
- Depthwise convolution (feature_group_count == channels): XLA:CPU's is ~50x slower than
  PyTorch's (jax issue 23713). Here kh*kw shifted multiply-adds over the padded input, with its
  own filter gradient that walks cache-sized blocks.
- 1x1 convolution: XLA:CPU's is 2-4x slower than its matrix multiply of the same sums (its filter
  gradient more), so a reshape and one 2-D matrix multiply.
- Max pooling: XLA:CPU's gradient (select-and-scatter) is 5x slower; here reduce_window forward
  and a gradient routed by the index of the tap that held the maximum.
"""

import contextlib
import functools
import os

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp

FORMULATIONS = ("auto", "cpu", "xla")



def _initial_setting():
  setting = os.environ.get("FAKEJAX_KERNELS", "auto")
  if setting not in FORMULATIONS:
    raise ValueError(f"FAKEJAX_KERNELS={setting!r}; known: {', '.join(FORMULATIONS)}")
  return setting


# A jax user context rather than a module global: its value is part of the trace context and the
# jit cache key, so a function traced under 'cpu' is traced again under 'xla'.
_SETTING = jax.make_user_context(_initial_setting())


def kernels():
  """The formulation functions traced now get: 'cpu', 'xla' or, for 'auto', that of the default
  backend (what a function lowered for it gets; lowered for another platform, that one's)."""
  setting = _SETTING.value
  if setting == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "xla"
  return setting


def _by_platform(cpu_fn, xla_fn, *args):
  """cpu_fn(*args) or xla_fn(*args) as the setting says; for 'auto', the one of the platform
  the computation is lowered for (decided at lowering, nothing at run time)."""
  setting = _SETTING.value
  if setting == "auto":
    return lax.platform_dependent(*args, cpu=cpu_fn, default=xla_fn)
  return (cpu_fn if setting == "cpu" else xla_fn)(*args)


@contextlib.contextmanager
def use(formulation):
  """Within the block, functions are traced with `formulation` ('auto', 'cpu' or 'xla').

  Args:
    formulation: one of FORMULATIONS.

  Yields:
    None.
  """
  if formulation not in FORMULATIONS:
    raise ValueError(f"Unknown kernel formulation {formulation!r}; known: {', '.join(FORMULATIONS)}")
  with _SETTING(formulation):
    yield


# ---------------------------------------------------------------------------
# Convolution.
# ---------------------------------------------------------------------------
_NHWC = ("NHWC", "HWIO", "NHWC")


def conv(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
         dimension_numbers=None, feature_group_count=1, precision=None, preferred_element_type=None,
         **kwargs):
  """lax.conv_general_dilated, with the CPU formulations of depthwise and 1x1 convolutions under 'cpu'
  (what follows `padding` by keyword, as nnx.Conv passes it)."""
  xla = lambda lhs, rhs: lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, precision=precision, preferred_element_type=preferred_element_type, **kwargs)
  fast = _cpu_formulation(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count)
  if fast is None:
    return xla(lhs, rhs)
  cpu = lambda lhs, rhs: fast(lhs, rhs, window_strides, padding, precision, preferred_element_type)
  return _by_platform(cpu, xla, lhs, rhs)


def _cpu_formulation(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, groups):
  """The CPU formulation for this convolution, or None where XLA's own is kept."""
  if not _nhwc_undilated(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers):
    return None
  if rhs.shape[2] == 1 and groups == rhs.shape[3] == lhs.shape[3]:
    return shifted_depthwise_conv
  if rhs.shape[:2] == (1, 1) and groups == 1:
    return matmul_pointwise_conv
  return None


def _nhwc_undilated(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers):
  undilated = all(d is None or all(v == 1 for v in d) for d in (lhs_dilation, rhs_dilation))
  return undilated and lhs.ndim == 4 and (
      lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))


def _pad(x, rhs, strides, padding):
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], rhs.shape[:2], strides, padding)
  return jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))


def shifted_depthwise_conv(lhs, rhs, window_strides, padding, precision=None,
                           preferred_element_type=None):
  """Depthwise convolution (NHWC, HWIO with I == 1) as kh*kw shifted multiply-adds."""
  del precision  # Element-wise products: there is no lower-precision path to opt out of.
  strides = tuple(window_strides)
  return _depthwise(_pad(lhs, rhs, strides, padding), rhs, strides, preferred_element_type)


def _shifted_sums(x, rhs, strides, acc_dtype):
  kh, kw, _, c = rhs.shape
  sh, sw = strides
  oh = (x.shape[1] - kh) // sh + 1
  ow = (x.shape[2] - kw) // sw + 1
  out_dtype = acc_dtype or x.dtype
  # Sums in at least float32, rounded once at the end: what XLA's convolutions do with bf16
  # operands (cuDNN and the CPU backend accumulate in float32), instead of rounding each of the
  # kh*kw partial sums to bf16.
  acc = jnp.promote_types(out_dtype, jnp.float32)
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = lax.slice(x, (0, i, j, 0), (x.shape[0], i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
                      (1, sh, sw, 1))
      term = tap.astype(acc) * rhs[i, j, 0].astype(acc)
      out = term if out is None else out + term
  return out.astype(out_dtype)


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


def matmul_pointwise_conv(lhs, rhs, window_strides, padding, precision=None,
                          preferred_element_type=None):
  """1x1 convolution (NHWC, HWIO) as one 2-D matrix multiply."""
  sh, sw = window_strides
  x = _pad(lhs, rhs, (sh, sw), padding)
  if (sh, sw) != (1, 1):
    x = x[:, ::sh, ::sw, :]
  n, h, w, cin = x.shape
  y = lax.dot(x.reshape(n * h * w, cin), rhs.reshape(cin, -1), precision=precision,
              preferred_element_type=preferred_element_type)
  return y.reshape(n, h, w, -1)


# ---------------------------------------------------------------------------
# Max pooling.
# ---------------------------------------------------------------------------
def max_pool(x, window, stride, padding):
  """Square max pooling over NHWC; `padding` is 'SAME', 'VALID' or ((top, bottom), (left, right)).

  Under 'cpu' the forward is still reduce_window, but the gradient is routed tap by tap
  (XLA:CPU's select-and-scatter takes 5x longer); under 'xla' it is XLA's own.
  """
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], (window, window), (stride, stride), padding)
  padding = tuple(tuple(p) for p in padding)
  return _by_platform(lambda x: _tap_max_pool(x, window, stride, padding),
                      lambda x: nnx.max_pool(x, (window, window), (stride, stride), padding=padding), x)


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
