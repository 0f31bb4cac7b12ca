"""Views: how an image becomes model inputs, from its size alone (plan) and from its pixels (cut).

  full        the run's evaluation crop: [resize to eval_resize] then a centre crop of image_size.
  whole       the image at its native size (or resized to eval_resize x eval_resize) through the
              fully convolutional model: CNNDetection's "no crop" evaluation. So that hundreds of
              image sizes compile a handful of programs, an image is padded (edge pixels) to its
              size bucket, each side rounded up to the next of 32, 48, 64, 96, 128, 192, 256, ...
              (at most 1.5x), and the global pooling averages only the feature cells over its
              own pixels (the forward's `valid`). The padding still reaches the border cells
              through the convolutions: measured against the exact per-size forward, the logits
              differ by at most BUCKET_RELATIVE_BOUND of their scale (tests/test_evaluate.py);
              `exact_sizes` compiles one program per size instead, with no difference.
  tiles       image_size-independent tiles of `tile` px covering the image (the last ones overlap),
              probabilities averaged: for photos too large to run whole.
  auto        whole, or tiles above `max_whole_pixels` (what `predict` uses by default).
  grid        non-overlapping PxP patches (a remainder strip smaller than P is left out);
              majority vote, a tie counts as fake.
  random      K random PxP crops, K odd, seeded per image; majority vote.
  confident   vote among grid patches with |p_fake - p_real| >= theta; all patches if none.
  mean_logit  grid patches, logits averaged (Chai et al. 2020).
  mean_prob   grid patches, probabilities averaged.
  five_crops  B-Free's test (grip-unina/B-Free, networks/wrapper5crops.py): on the grid of
              `align` px tokens (a ViT's patches), five crop x crop windows (centre, then the four
              corners), logits averaged; an image smaller than the window is first tiled
              (their replicate_wrap: the token grid repeated, then its first crop x crop cut).

PRESETS are each repository's own test transform as View settings (`evaluate --preset`).
"""

import dataclasses

import numpy as np

from fakejax import augment
from fakejax import cli

MODES = ("full", "whole", "tiles", "auto", "grid", "random", "confident", "mean_logit", "mean_prob", "five_crops")
VOTING = ("grid", "random", "confident")  # The rules that vote (scoring.rules).
MIN_WHOLE = 32  # The models down-sample by 32: smaller images give no feature map.
# The largest |logit difference| of a bucketed whole image against its exact-size forward, as a
# fraction of the largest |logit| (tests/test_evaluate.py; docs/evaluation.md has measurements).
BUCKET_RELATIVE_BOUND = 0.1


def bucket_side(n):
  """The side a whole image of side n is padded to: the next of 32, 48, 64, 96, 128, 192, ..."""
  side = 32
  while True:
    for m in (side, side * 3 // 2):
      if n <= m:
        return m
    side *= 2


def grid_patches(img, size):
  """Non-overlapping size x size patches, row-major; a remainder smaller than `size` is dropped."""
  h, w = img.shape[:2]
  if h < size or w < size:
    raise augment.TooSmall(f"image is {w}x{h}, smaller than the {size}x{size} patch")
  ny, nx = h // size, w // size
  p = img[:ny * size, :nx * size].reshape(ny, size, nx, size, 3).swapaxes(1, 2)
  return p.reshape(ny * nx, size, size, 3), (ny, nx)


def five_crops(img, size, align):
  """B-Free's Wrapper5crops.forward in pixels: (5, size, size, 3) windows of `img` on its grid of
  align x align tokens (the remainder strips dropped, as the stride-`align` patch embedding
  drops them), centre, top-left, bottom-left, bottom-right, top-right. A grid smaller than the
  window in either direction is repeated in both (at least once) and cut to its first window
  (their replicate_wrap), so the five are then the same."""
  g = size // align
  gh, gw = img.shape[0] // align, img.shape[1] // align
  if min(gh, gw) == 0:
    raise augment.TooSmall(f"image is {img.shape[1]}x{img.shape[0]}, smaller than one {align} px token")
  img = img[:gh * align, :gw * align]
  if gh < g or gw < g:
    img = np.tile(img, (max(-(-g // gh), 1), max(-(-g // gw), 1), 1))[:size, :size]
    gh, gw = img.shape[0] // align, img.shape[1] // align
  h, w = gh * align, gw * align
  y, x = max((gh - g) // 2, 0) * align, max((gw - g) // 2, 0) * align
  return np.stack([img[y:y + size, x:x + size], img[:size, :size], img[h - size:, :size],
                   img[h - size:, w - size:], img[:size, w - size:]])


def _tile_starts(length, tile):
  n = -(-length // tile)
  return np.round(np.linspace(0, length - tile, n)).astype(int) if n > 1 else np.zeros(1, int)


# Each repository's own test transform (`evaluate --preset`), as View settings: published numbers
# depend on them. Resizes are PIL bilinear to N x N (torchvision's Resize((N, N)) on PIL images),
# crops torchvision's CenterCrop (augment.center_crop; images smaller than the crop zero-padded).
PRESETS = {
    # NPR test.py: ForenSynths (and DiffusionForensics, UniversalFakeDetect) Resize((256, 256)),
    # no crop; GANGen-Detection at native size.
    "npr_forensynths": dict(mode="whole", resize=256),
    "npr_gangen": dict(mode="whole", resize=0, exact_sizes=True),
    # SAFE data/datasets.py: CenterCrop(256), no resize.
    "safe": dict(mode="full", crop=256, resize=0, too_small="zero"),
    # UniversalFakeDetect validate.py: CenterCrop(224), no resize.
    "univfd": dict(mode="full", crop=224, resize=0, too_small="zero"),
    # CNNDetection: CenterCrop(224), or the whole image (no_crop).
    "cnndetection": dict(mode="full", crop=224, resize=0, too_small="zero"),
    "cnndetection_nocrop": dict(mode="whole", resize=0, exact_sizes=True),
    # DDA Inference/inference.py: CenterCrop(336), no resize.
    "dda": dict(mode="full", crop=336, resize=0, too_small="zero"),
    # B-Free code/main_bfree.py: the whole image through Wrapper5crops(model, 504): five 504 windows
    # on the 14 px token grid, logits averaged.
    "bfree": dict(mode="five_crops", crop=504, align=14, resize=0),
}


@dataclasses.dataclass(frozen=True)
class View:
  """How an image becomes model inputs (see the module docstring)."""
  mode: str = "full"
  crop: int = 64
  resize: int = 0
  too_small: str = "error"
  patch_size: int = 32
  k: int = 5
  seed: int = 0
  theta: float = 0.5
  tile: int = 1024
  max_whole_pixels: int = 1 << 22
  exact_sizes: bool = False
  align: int = 14

  def __post_init__(self):
    if self.mode not in MODES:
      raise cli.UserError(f"Unknown mode {self.mode!r}; known: {', '.join(MODES)}")
    if self.mode == "five_crops" and self.crop % self.align:
      raise cli.UserError(f"five_crops: the crop {self.crop} is not a multiple of the token size {self.align} "
                          "(B-Free's: 504 and 14, --preset bfree)")
    if self.mode == "random" and self.k % 2 == 0:
      raise cli.UserError(f"random mode needs an odd number of patches (no ties), got k={self.k}")
    if self.mode in VOTING + ("mean_logit", "mean_prob") and self.patch_size not in (16, 32, 64, 128):
      raise cli.UserError(f"patch_size must be 16, 32, 64 or 128, got {self.patch_size}")

  def kind(self, h, w):
    """The concrete view for an h x w image ('auto' picks whole or tiles)."""
    if self.mode == "auto":
      return "whole" if h * w <= self.max_whole_pixels or min(h, w) < self.tile else "tiles"
    return self.mode

  def grid(self, h, w):
    """(rows, cols) of the inputs of an h x w image laid out as a grid (grid-patch modes,
    tiles), else None: what a patch heatmap is drawn on."""
    kind = self.kind(h, w)
    if kind == "tiles":
      return len(_tile_starts(h, self.tile)), len(_tile_starts(w, self.tile))
    if kind in ("grid", "confident", "mean_logit", "mean_prob"):
      return h // self.patch_size, w // self.patch_size
    return None

  def pads(self, h, w):
    """Whether an h x w image's input is padded to a larger size bucket (whole view, no resize):
    only those go through `forward(x, valid)`; an image of its bucket's size is scored as is."""
    return (self.kind(h, w) == "whole" and not self.resize and not self.exact_sizes
            and (bucket_side(h), bucket_side(w)) != (h, w))

  def plan(self, h, w):
    """(input shape (H, W), number of inputs) for an h x w image, from its size alone.

    Raises:
      augment.TooSmall: when the image cannot give the view's inputs.
    """
    kind = self.kind(h, w)
    if kind == "full":
      rh, rw = (self.resize, self.resize) if self.resize else (h, w)
      if min(rh, rw) < self.crop and self.too_small not in ("pad", "zero"):
        raise augment.TooSmall(f"image is {rw}x{rh}, smaller than the {self.crop}x{self.crop} crop "
                               "(use --mode whole, or a run with data.too_small='pad')")
      return (self.crop, self.crop), 1
    if kind == "whole":
      if self.resize:
        return (self.resize, self.resize), 1
      if min(h, w) < MIN_WHOLE:
        raise augment.TooSmall(f"image is {w}x{h}, smaller than {MIN_WHOLE} px")
      return ((h, w) if self.exact_sizes else (bucket_side(h), bucket_side(w))), 1
    if kind == "tiles":
      return (self.tile, self.tile), len(_tile_starts(h, self.tile)) * len(_tile_starts(w, self.tile))
    if kind == "five_crops":
      if min(h, w) < self.align:
        raise augment.TooSmall(f"image is {w}x{h}, smaller than one {self.align} px token")
      return (self.crop, self.crop), 5
    if min(h, w) < self.patch_size:
      raise augment.TooSmall(f"image is {w}x{h}, smaller than the {self.patch_size}x{self.patch_size} patch")
    if kind == "random":
      return (self.patch_size, self.patch_size), self.k
    return (self.patch_size, self.patch_size), (h // self.patch_size) * (w // self.patch_size)

  def cut(self, img, image_id):
    """(inputs (n, H, W, 3) uint8, patch grid (rows, cols) or None) of one decoded image."""
    h, w = img.shape[:2]
    kind = self.kind(h, w)
    if kind == "full":
      if self.resize:
        img = augment.resize(img, self.resize)
      return augment.center_crop(augment.fit(img, self.crop, self.too_small), self.crop)[None], None
    if kind == "whole":
      if self.resize:
        return augment.resize(img, self.resize)[None], None
      (bh, bw), _ = self.plan(h, w)
      return np.pad(img, ((0, bh - h), (0, bw - w), (0, 0)), mode="edge")[None], None
    if kind == "tiles":
      ys, xs = _tile_starts(h, self.tile), _tile_starts(w, self.tile)
      t = self.tile
      return np.stack([img[y:y + t, x:x + t] for y in ys for x in xs]), (len(ys), len(xs))
    if kind == "five_crops":
      return five_crops(img, self.crop, self.align), None
    if kind == "random":
      rng = np.random.default_rng([self.seed, image_id])
      return augment.random_patches(img, self.patch_size, self.k, rng), None
    return grid_patches(img, self.patch_size)

  @property
  def rule(self):
    """The decision rule of this view's inputs (see `decide`)."""
    if self.mode == "five_crops":
      return "mean_logit"
    return "mean_prob" if self.mode in ("full", "whole", "tiles", "auto") else self.mode
