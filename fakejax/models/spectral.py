"""The spectral detector: logistic regression on the log-spectrum of the high-pass residual.

The features (`log_spectrum`) are Durall et al.'s and Frank et al.'s cue, the one explain
--spectrum draws: the grey level of the centre `size` x `size` crop, minus its 3x3 binomial blur
(reflect-padded), through the orthonormal 2-D FFT, 20 log10 |F| in dB, DC in the centre; the
size x size map flattened row by row. The head (`Standardized`) standardises each feature with
the training records' mean and standard deviation and applies a linear layer: scikit-learn's
`LogisticRegression` on `StandardScaler`-like inputs, which is how the recipe trains
(configs/spectral.py: model.cached_features with probe.solver='logistic', training.probe).

The features have no parameters, so the model is its head: it trains in seconds on cached
features, and `evaluate`, `predict`, `explain` and `serve` run its whole forward like any other
model's (also on a GPU: the FFT is jnp's). Layer names for `taps` / Grad-CAM: `residual` (the
high-pass residual, spatial) and `spectrum`.
"""

from flax import nnx
import jax.numpy as jnp

from fakejax import cli
from fakejax.models import layers


def highpass(gray):
  """(..., H, W) grey levels minus their 3x3 binomial blur (reflect-padded): the response
  1 - cos^2(pi fy) cos^2(pi fx)."""
  pad = [(0, 0)] * (gray.ndim - 2) + [(1, 1), (1, 1)]
  p = jnp.pad(gray, pad, mode="reflect")
  rows = 0.25 * p[..., :-2, :] + 0.5 * p[..., 1:-1, :] + 0.25 * p[..., 2:, :]
  blur = 0.25 * rows[..., :, :-2] + 0.5 * rows[..., :, 1:-1] + 0.25 * rows[..., :, 2:]
  return gray - blur


def centre_crop(x, size):
  """The centre size x size crop of (N, H, W, C) images (offsets rounded down)."""
  h, w = x.shape[1:3]
  if h < size or w < size:
    raise cli.UserError(f"The spectral model reads a {size}x{size} crop (model.spectrum_size); got {h}x{w} "
                     "inputs: set data.image_size >= model.spectrum_size")
  y0, x0 = (h - size) // 2, (w - size) // 2
  return x[:, y0:y0 + size, x0:x0 + size]


def residual(x, size):
  """(N, size, size) high-pass residual of the grey level (channel mean) of the centre crop."""
  return highpass(centre_crop(x, size).astype(jnp.float32).mean(-1))


def log_spectrum(res):
  """20 log10 |orthonormal FFT| of (..., S, S) residuals in dB, DC in the centre (fftshift)."""
  f = jnp.fft.fftshift(jnp.fft.fft2(res, norm="ortho"), axes=(-2, -1))
  return 20 * jnp.log10(jnp.abs(f) + 1e-6)


class Standardized(nnx.Module):
  """A linear layer on standardised inputs: fc((x - mean) / scale). `mean` and `scale` are
  statistics of the training features (set by the solver, never trained by gradients)."""

  def __init__(self, features, outputs, *, rngs):
    self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
    self.scale = nnx.BatchStat(jnp.ones((features,), jnp.float32))
    self.fc = nnx.Linear(features, outputs, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

  def __call__(self, x):
    return self.fc((x.astype(jnp.float32) - self.mean[...]) / self.scale[...])


class Spectral(nnx.Module):
  """log_spectrum of the centre `spectrum_size` crop -> Standardized linear head -> logits.

  `single_logit`: one output z returned as [0, z] (scikit-learn's binary coefficients). The
  generic keys (dropout, width, init, remat, dtype) have nothing to act on: the features are
  computed in float32 and have no parameters."""

  LAYERS = ("residual", "spectrum")
  CAM_LAYER = "residual"

  def __init__(self, num_classes, *, spectrum_size=64, single_logit=False, rngs, dtype=jnp.float32,
               **unused):
    del dtype, unused
    if single_logit and num_classes != 2:
      raise ValueError(f"single_logit is a binary head, got {num_classes} classes")
    self.spectrum_size, self.single_logit = spectrum_size, single_logit
    self.head = Standardized(spectrum_size**2, 1 if single_logit else num_classes, rngs=rngs)

  def features(self, x, taps=None):
    """(N, spectrum_size**2) float32 log-spectra of preprocessed NHWC images."""
    tap = layers.tapper(taps)
    res = tap("residual", residual(x, self.spectrum_size)[..., None])[..., 0]
    spec = tap("spectrum", log_spectrum(res)[..., None])[..., 0]
    return spec.reshape(spec.shape[0], -1)

  def __call__(self, x, *, rngs=None, taps=None, valid=None):
    """Logits (float32) of preprocessed NHWC images (`rngs`, `valid`: the interface's; unused)."""
    del rngs, valid
    logits = self.head(self.features(x, taps))
    return jnp.concatenate([jnp.zeros_like(logits), logits], -1) if self.single_logit else logits
