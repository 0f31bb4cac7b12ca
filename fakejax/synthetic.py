"""Embedded synthetic benchmark: procedural "real" images and GAN-like fakes.

Real images are procedural scenes with natural-image statistics (dead leaves with
textures, rectangles, 1/f clouds) plus a little sensor noise. A fake is made the
way AutoGAN (Zhang et al. 2019) simulates a generator: fake = G(downsample(real)),
where G's last stage up-samples like a GAN generator does. The content of a fake
matches its real twin; only the up-sampling fingerprint differs, so a detector has
to look at high frequencies, which is what real GAN detectors learn.

Trivial cues are removed on purpose: each fake gets its real twin's per-channel
mean and standard deviation, both receive the same sensor noise, both are
quantised the same way and stored through the same (lossless PNG) builder.

Everything is numpy and deterministic from a seed; no download.
"""

import functools

import numpy as np

from fakejax import cli

# Content categories, each with its own statistics (spectral slope, edges, colour, contrast).
# The first three are the default benchmark; the content-diversity study uses all of them.
CATEGORIES = ("leaves", "blocks", "clouds", "stripes", "bokeh", "rings", "mosaic", "grain", "sky")
DEFAULT_CATEGORIES = CATEGORIES[:3]
FAMILIES = ("tconv", "nn_conv", "bilinear_conv", "pixel_shuffle")
SENSOR_NOISE = 2.0  # std of the sensor noise, in 8-bit levels, added to real and fake alike.


# ---------------------------------------------------------------------------
# Real images.
# ---------------------------------------------------------------------------
def _texture(rng, h, w):
  """A random oriented grating: leaves are not flat colours in natural images."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  theta = rng.uniform(0, np.pi)
  freq = rng.uniform(0.05, 0.6)
  phase = rng.uniform(0, 2 * np.pi)
  return np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)


def _dead_leaves(rng, size, shape):
  """Occluding disks (or rectangles) with power-law radii: a ~1/f spectrum."""
  img = np.empty((size, size, 3), np.float32)
  img[:] = rng.uniform(0, 255, 3)
  rmin, rmax = 1.5, size / 2.5
  n = int(3 * size)
  # Radii with density ~ r^-3 (scale invariance) by inverse-CDF sampling.
  u = rng.uniform(size=n)
  radii = 1.0 / np.sqrt(u / rmin**2 + (1 - u) / rmax**2)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  for r in radii:
    cy, cx = rng.uniform(-r, size + r, 2)
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, size)
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, size)
    if y0 >= y1 or x0 >= x1:
      continue
    sy, sx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
    if shape == "disk":
      mask = sy**2 + sx**2 <= r**2
    else:
      a = rng.uniform(0, np.pi)
      u_, v_ = np.cos(a) * sx + np.sin(a) * sy, -np.sin(a) * sx + np.cos(a) * sy
      mask = (np.abs(u_) <= r) & (np.abs(v_) <= r * rng.uniform(0.3, 1.0))
    colour = rng.uniform(0, 255, 3)
    tex = _texture(rng, y1 - y0, x1 - x0)[..., None] * rng.uniform(0, 40)
    img[y0:y1, x0:x1][mask] = (colour + tex)[mask]
  return img


def _clouds(rng, size):
  """Coloured 1/f^alpha noise fields, the spectrum of natural scenes."""
  f = np.fft.fftfreq(size)
  fr = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
  fr[0, 0] = 1.0
  alpha = rng.uniform(1.8, 2.6)  # power-spectrum exponent
  out = []
  for _ in range(3):
    spec = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / fr ** (alpha / 2)
    spec[0, 0] = 0
    field = np.real(np.fft.ifft2(spec))
    out.append(field / (field.std() + 1e-8))
  mix = rng.normal(size=(3, 3)) * 0.5 + np.eye(3)
  img = np.stack(out, -1) @ mix.T
  return (img * rng.uniform(25, 50) + rng.uniform(60, 190, 3)).astype(np.float32)


def _stripes(rng, size):
  """Man-made regular structure: a few oriented gratings, each in its own band of the image."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  img = np.empty((size, size, 3), np.float32)
  img[:] = rng.uniform(40, 215, 3)
  edges = np.sort(rng.uniform(0, size, rng.integers(1, 4)))
  band = np.searchsorted(edges, yy if rng.uniform() < 0.5 else xx)
  for b in range(len(edges) + 1):
    g = _texture(rng, size, size)[..., None] * rng.uniform(30, 90) + rng.uniform(40, 215, 3)
    img = np.where((band == b)[..., None], g, img)
  return img


def _bokeh(rng, size):
  """Defocused light: overlapping soft Gaussian discs, almost no high frequencies."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  img = np.zeros((size, size, 3), np.float32) + rng.uniform(0, 60, 3)
  for _ in range(rng.integers(6, 16)):
    cy, cx = rng.uniform(0, size, 2)
    r = rng.uniform(size / 16, size / 4)
    img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))[..., None] * rng.uniform(20, 140, 3)
  return np.clip(img, 0, 255)


def _rings(rng, size):
  """Concentric rings around a few centres: radial structure, chirp-like spectra."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  img = np.zeros((size, size, 3), np.float32)
  for _ in range(rng.integers(1, 4)):
    cy, cx = rng.uniform(0, size, 2)
    rad = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    img += np.sin(rad * rng.uniform(0.15, 0.8) + rng.uniform(0, 2 * np.pi))[..., None] * rng.uniform(15, 45, 3)
  return img + rng.uniform(70, 185, 3)


def _mosaic(rng, size):
  """Voronoi cells of flat colour: sharp edges between constant regions."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  n = int(rng.integers(8, 40))
  pts = rng.uniform(0, size, (n, 2))
  d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
  return rng.uniform(0, 255, (n, 3)).astype(np.float32)[d.argmin(-1)]


def _grain(rng, size):
  """Fine isotropic texture (sand, foliage at a distance): a nearly flat spectrum."""
  base = rng.uniform(60, 190, 3)
  noise = rng.normal(size=(size, size, 1)) * rng.uniform(15, 40)
  tint = rng.normal(size=(size, size, 3)) * rng.uniform(2, 8)
  return (base + noise + tint).astype(np.float32)


def _sky(rng, size):
  """A smooth vertical gradient with faint clouds: low contrast, steep spectrum."""
  t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
  top, bottom = rng.uniform(80, 230, 3), rng.uniform(80, 230, 3)
  img = top * (1 - t) + bottom * t + np.zeros((size, size, 3), np.float32)
  return img + 0.25 * (_clouds(rng, size) - 128)


def real_image(rng, size, category):
  """A clean (noise-free, float) real image of one content category."""
  if category == "leaves":
    return _dead_leaves(rng, size, "disk")
  if category == "blocks":
    return _dead_leaves(rng, size, "rect")
  if category == "clouds":
    return _clouds(rng, size)
  makers = {"stripes": _stripes, "bokeh": _bokeh, "rings": _rings, "mosaic": _mosaic,
            "grain": _grain, "sky": _sky}
  if category in makers:
    return makers[category](rng, size)
  raise cli.UserError(f"Unknown synthetic category {category!r}; known: {', '.join(CATEGORIES)}")


# ---------------------------------------------------------------------------
# Generator families: how each one up-samples by 2.
# ---------------------------------------------------------------------------
def _conv(x, k):
  """'Same' 2-D correlation of an HxWxC image with a per-channel kernel k (kh, kw)."""
  kh, kw = k.shape
  py, px = kh // 2, kw // 2
  xp = np.pad(x, ((py, kh - 1 - py), (px, kw - 1 - px), (0, 0)), mode="reflect")
  out = np.zeros_like(x)
  h, w = x.shape[:2]
  for i in range(kh):
    for j in range(kw):
      out += k[i, j] * xp[i:i + h, j:j + w]
  return out


def _bilinear_up(x):
  """Bilinear x2 up-sampling (half-pixel centres): each output is 3/4 near + 1/4 far."""
  def up(a, axis):
    a_prev = np.concatenate([np.take(a, [0], axis), np.take(a, range(a.shape[axis] - 1), axis)], axis)
    a_next = np.concatenate([np.take(a, range(1, a.shape[axis]), axis), np.take(a, [-1], axis)], axis)
    even, odd = 0.75 * a + 0.25 * a_prev, 0.75 * a + 0.25 * a_next
    return np.stack([even, odd], axis + 1).reshape(
        a.shape[:axis] + (2 * a.shape[axis],) + a.shape[axis + 1:])
  return up(up(x, 0), 1)


class Family:
  """One generator family: fixed random up-sampling weights drawn from its seed."""

  def __init__(self, name, seed=0):
    if name not in FAMILIES:
      raise cli.UserError(f"Unknown generator family {name!r}; known: {', '.join(FAMILIES)}")
    self.name = name
    rng = np.random.default_rng([seed, FAMILIES.index(name)])
    self.mix = np.eye(3) + 0.08 * rng.normal(size=(3, 3))
    if name == "tconv":
      base = np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25])
      self.kernel = base * (1 + 0.25 * rng.normal(size=(4, 4)))
    elif name == "pixel_shuffle":
      # One 3x3 low-resolution kernel per output phase: the ideal interpolator
      # for that phase plus a learned-looking perturbation.
      self.kernels = np.zeros((2, 2, 3, 3))
      for py in range(2):
        for px in range(2):
          wy = np.array([0.25, 0.75, 0]) if py == 0 else np.array([0, 0.75, 0.25])
          wx = np.array([0.25, 0.75, 0]) if px == 0 else np.array([0, 0.75, 0.25])
          self.kernels[py, px] = np.outer(wy, wx) + 0.05 * rng.normal(size=(3, 3))
    else:
      k = np.exp(-0.5 * (np.arange(-1, 2)[:, None] ** 2 + np.arange(-1, 2)[None] ** 2) / 0.7**2)
      k = k / k.sum() + 0.05 * rng.normal(size=(3, 3))
      self.kernel = k / k.sum()

  def upsample(self, x):
    """Up-samples an HxWx3 float image by 2 the way this family does."""
    h, w, _ = x.shape
    if self.name == "tconv":
      z = np.zeros((2 * h, 2 * w, 3), np.float32)
      z[::2, ::2] = x
      y = _conv(z, self.kernel)
    elif self.name == "nn_conv":
      y = _conv(np.repeat(np.repeat(x, 2, 0), 2, 1), self.kernel)
    elif self.name == "bilinear_conv":
      y = _conv(_bilinear_up(x), self.kernel)
    else:  # pixel_shuffle
      y = np.empty((2 * h, 2 * w, 3), np.float32)
      for py in range(2):
        for px in range(2):
          y[py::2, px::2] = _conv(x, self.kernels[py, px])
    return y @ self.mix.T

  def __call__(self, real):
    """fake = G(downsample(real)), matched to the real twin's colour statistics."""
    h, w, c = real.shape
    low = real.reshape(h // 2, 2, w // 2, 2, c).mean((1, 3))
    fake = self.upsample(low)
    mu, sd = real.mean((0, 1)), real.std((0, 1))
    fmu, fsd = fake.mean((0, 1)), fake.std((0, 1))
    return (fake - fmu) / (fsd + 1e-6) * sd + mu


def finish(img, rng):
  """Adds sensor noise and quantises to uint8: the same for real and fake."""
  img = img + rng.normal(0, SENSOR_NOISE, img.shape)
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=64)
def _family(name, seed):
  return Family(name, seed)


def generate_one(split_counts, size, seed, families, item):
  """The i-th real image of a split and category (`item` = (split, category, i)), then its fake
  from each family.

  Each real image has its own seed, so any image can be made alone (in any process).

  Returns:
    [dict(image=uint8 HxWx3, source=family or 'real', category=..., name=...)].
  """
  if size % 2:
    raise cli.UserError(f"synthetic image size must be even, got {size}")
  split, category, i = item
  s_idx = sorted(split_counts).index(split)
  rng = np.random.default_rng([seed, s_idx, CATEGORIES.index(category), i])
  real = real_image(rng, size, category)
  name = f"{split}/{category}/{i:06d}"
  out = [dict(image=finish(real, rng), source="real", category=category, name=f"{name}_real")]
  for f in families:
    out.append(dict(image=finish(_family(f, seed)(real), rng), source=f, category=category,
                    name=f"{name}_{f}"))
  return out


def generate(split_counts, size=64, seed=0, categories=DEFAULT_CATEGORIES, families=FAMILIES):
  """Yields (split, example) pairs of the synthetic benchmark.

  Args:
    split_counts: {split: number of real images per category}. Each real image
      comes with one fake per family, made from that same real image.
    size: image side in pixels (even).
    seed: everything is a function of it.
    categories: content categories.
    families: generator families.

  Yields:
    (split, dict(image=uint8 HxWx3, source=family or 'real', category=..., name=...)).
  """
  for split, count in sorted(split_counts.items()):
    for cat in categories:
      for i in range(count):
        for ex in generate_one(split_counts, size, seed, tuple(families), (split, cat, i)):
          yield split, ex
