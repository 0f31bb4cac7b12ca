"""Input front-ends: fixed transforms between the normalised image and a backbone.

Any registered backbone can take one (`model.front`): `models.preprocess` applies it after the
normalisation, so training, evaluation, Grad-CAM and serving all see the same input. None has
parameters. Each is written from its method's official code:

  npr       NPR (Tan et al., CVPR 2024; chuangchuangtan/NPR-DeepfakeDetection, networks/resnet.py):
            x - up(down(x)) with PyTorch's nearest interpolation at factor 2 both ways (each 2x2
            block minus its top-left pixel), times 2/3, on the ImageNet-normalised image.
  safe_dwt  SAFE (Li et al., KDD 2025; Ouxiang-Li/SAFE): the HH (diagonal detail) band of a
            one-level 'bior1.3' DWT in symmetric mode, per RGB channel, resized bilinearly back
            to the input size; on the [0, 1] image, no mean/std normalisation.
"""

import jax.numpy as jnp
import numpy as np

from fakejax import cli

FRONTS = ("none", "npr", "safe_dwt")

# pywt.Wavelet('bior1.3').dec_hi (the decomposition high-pass filter); tests compare the band
# with pywt.dwt2 itself.
BIOR13_DEC_HI = np.array([0.0, 0.0, -0.7071067811865476, 0.7071067811865476, 0.0, 0.0])


def check(name):
  if name not in FRONTS:
    raise cli.UserError(f"Unknown model.front {name!r}; known: {', '.join(FRONTS)}")
  return name


def npr(x):
  """NPR's input: (x - nearest_up(nearest_down(x))) * 2/3 of NHWC `x` with even sides.

  PyTorch's `interpolate(scale_factor=0.5, mode='nearest', recompute_scale_factor=True)` keeps
  pixel (2i, 2j), and up-sampling by 2 repeats it: each 2x2 block minus its top-left pixel. The
  official module fails on odd sides (the two sizes differ), so this refuses them too.
  """
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"NPR needs even image sides (as its official code), got {h}x{w}")
  top_left = x.reshape(n, h // 2, 2, w // 2, 2, c)[:, :, :1, :, :1]
  return ((x.reshape(n, h // 2, 2, w // 2, 2, c) - top_left) * (2.0 / 3.0)).reshape(n, h, w, c)


def _dwt_axis(x, filt, axis):
  """pywt's one-level analysis along `axis` (1 or 2 of NHWC) in 'symmetric' mode.

  pywt convolves the half-sample-symmetric extended signal with the filter and keeps the odd
  samples of the full convolution: y[k] = sum_j f[j] x_ext[2k + 1 - j], floor((N + F - 1) / 2)
  outputs.
  """
  f = len(filt)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (f - 1, f - 1)
  xe = jnp.pad(x, pad, mode="symmetric")
  n_out = (x.shape[axis] + f - 1) // 2
  out = 0.0
  for j, coef in enumerate(filt):
    if coef == 0.0:
      continue
    # Full-convolution index k' = 2k + 1 reads x_ext at k' - j + (F - 1).
    start = 1 - j + f - 1
    idx = start + 2 * np.arange(n_out)
    out = out + coef * jnp.take(xe, idx, axis=axis)
  return out


def dwt_hh(x, dec_hi=BIOR13_DEC_HI):
  """The HH band (pywt.dwt2's cD) of each channel of NHWC `x`: the high-pass along rows and
  columns, ((H + F - 1) // 2) x ((W + F - 1) // 2)."""
  return _dwt_axis(_dwt_axis(x, dec_hi, 1), dec_hi, 2)


def resize_bilinear(x, hw):
  """PyTorch's `interpolate(mode='bilinear', align_corners=False)` (no antialiasing) of NHWC
  `x` to `hw`: half-pixel centres, the source index clamped at 0 below."""
  out = x
  for axis, size in ((1, hw[0]), (2, hw[1])):
    n_in = out.shape[axis]
    src = np.maximum((np.arange(size) + 0.5) * (n_in / size) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (src - lo).astype(np.float32)
    shape = [1] * out.ndim
    shape[axis] = size
    frac = jnp.asarray(frac).reshape(shape)
    out = jnp.take(out, lo, axis=axis) * (1 - frac) + jnp.take(out, hi, axis=axis) * frac
  return out


def safe_dwt(x):
  """SAFE's input: the bior1.3 HH band of each channel, resized bilinearly to x's size."""
  return resize_bilinear(dwt_hh(x), x.shape[1:3]).astype(x.dtype)


def apply(name, x):
  """`x` through front `name` ('none' returns it as it is)."""
  if check(name) == "none":
    return x
  fn = {"npr": npr, "safe_dwt": safe_dwt}[name]
  return fn(x.astype(jnp.float32)).astype(x.dtype) if x.dtype != jnp.float32 else fn(x)

