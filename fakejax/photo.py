"""Embedded photo benchmark: crops of real photographs, and the fakes of generators trained here.

Reals are crops of the photographs that ship inside installed packages (scikit-image's data,
scikit-learn's sample images, matplotlib's sample data and, where Debian's `mate-backgrounds`
is installed, its nature photographs). Each photograph is first down-scaled (box filter) so
that its shorter side is at most 6 crop sides: JPEG blocks and demosaicing, which would give the
reals away, are averaged out. A photograph is cut along its longer side into three bands, one per split
(train, val, test), so no split sees another's pixels.

Fakes come from five small generator networks trained here, seeded, on the train band's
crops. They differ in how they up-sample, the trace a detector learns:

  nn_conv        encoder + nearest-neighbour up-sampling and 3x3 convolution (autoencoder), as
                 ProGAN up-samples: the family we train on by default.
  tconv          encoder + transposed-convolution decoder, trained adversarially (L1
                 pre-training, then a GAN loss from a patch discriminator plus L1).
  bilinear_conv  encoder + bilinear up-sampling and 3x3 convolution (autoencoder).
  pixel_shuffle  encoder + sub-pixel convolution (depth-to-space) decoder (autoencoder).
  sr             no latent: a real down-scaled by 2, bicubic up-scaled, refined by a residual
                 CNN (super-resolution).

A fake is the generator's output for a crop that is not one of the split's reals, so reals
and fakes share content statistics but never an image. train and val hold the reals and the
training family's fakes (the first of `families`: nn_conv by default); test holds every
family's fakes, each against its own reals (group = family), like CNNDetection's test tree.

The aligned family (`kl_vae`, first of `families`, with `aligned`): train and val hold pairs, each
real beside its own reconstruction through SD's autoencoder at CPU size (fakejax.aligned's
recipe: AlignedForensics, DDA), named {split}/kl_vae/0_real/i and {split}/kl_vae/1_fake/i; test
holds the five test families only. Without `aligned` its fakes are of other crops, as every
family's: the ablation.

Post-processing (`postprocess`), drawn per image from one distribution for both classes:
'jpeg:Q1-Q2' (JPEG at a quality drawn from [Q1, Q2], decoded again) and/or 'resize:A-B'
(bilinear up-scale by a factor drawn from [A, B], centre crop back to the side). Records are
stored losslessly after it, so file format and size never tell the classes apart.

Everything is a function of the seed and the photographs found; no download.
"""

import dataclasses
import io
import os

import numpy as np
from PIL import Image

from fakejax import cli

FAMILIES = ("nn_conv", "tconv", "bilinear_conv", "pixel_shuffle", "sr")  # The test families.
TRAIN_FAMILY = FAMILIES[0]  # ProGAN's up-sampling (nearest + conv), as CNNDetection trains on ProGAN.
# The aligned family: SD's KL autoencoder at CPU size (photo_generators). Trained on, never a test
# family; with `aligned`, each of its fakes is the reconstruction of a real of the split.
ALIGNED_FAMILY = "kl_vae"
ALL_FAMILIES = FAMILIES + (ALIGNED_FAMILY,)
# Each family's generator and test draws are seeded by its place here, not in `families`, so they
# do not depend on which family is trained on (this is the order docs/ records were made with).
_SEED_ORDER = ("tconv", "nn_conv", "bilinear_conv", "pixel_shuffle", "sr", ALIGNED_FAMILY)
GEN_STEPS = 300
GENERATION = 3  # In the cache key: bump when generate()'s output changes for the same arguments.
CATEGORIES = ("nature", "people", "objects", "science", "texture")
BANDS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}  # Row bands of a photo.


@dataclasses.dataclass(frozen=True)
class Photo:
  name: str
  path: str
  category: str


def _skimage(name, category):
  import skimage  # pylint: disable=g-import-not-at-top
  return Photo(f"skimage/{name}", os.path.join(os.path.dirname(skimage.__file__), "data", name), category)


def _sklearn(name, category):
  import sklearn.datasets  # pylint: disable=g-import-not-at-top
  return Photo(f"sklearn/{name}", os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", name),
               category)


def _matplotlib(name, category):
  import matplotlib  # pylint: disable=g-import-not-at-top
  return Photo(f"matplotlib/{name}", os.path.join(matplotlib.get_data_path(), "sample_data", name), category)


MATE_NATURE = "/usr/share/backgrounds/mate/nature"  # Debian's mate-backgrounds (GPL-2+).


def find_photos(debian=True):
  """The photographs this machine has, sorted by name (missing packages are skipped)."""
  found = []
  wanted = [
      (_skimage, "astronaut.png", "people"), (_skimage, "camera.png", "people"),
      (_skimage, "chelsea.png", "nature"), (_skimage, "coffee.png", "objects"),
      (_skimage, "rocket.jpg", "objects"), (_skimage, "motorcycle_left.png", "objects"),
      (_skimage, "coins.png", "objects"), (_skimage, "hubble_deep_field.jpg", "science"),
      (_skimage, "ihc.png", "science"), (_skimage, "retina.jpg", "science"),
      (_skimage, "moon.png", "science"), (_skimage, "brick.png", "texture"),
      (_skimage, "grass.png", "texture"), (_skimage, "gravel.png", "texture"),
      (_sklearn, "china.jpg", "objects"), (_sklearn, "flower.jpg", "nature"),
      (_matplotlib, "grace_hopper.jpg", "people"),
  ]
  for fn, name, cat in wanted:
    try:
      p = fn(name, cat)
    except ImportError:
      continue
    if os.path.exists(p.path):
      found.append(p)
  if debian and os.path.isdir(MATE_NATURE):
    found += [Photo(f"mate/{f}", os.path.join(MATE_NATURE, f), "nature")
              for f in sorted(os.listdir(MATE_NATURE)) if f.lower().endswith((".jpg", ".png"))]
  return sorted(found, key=lambda p: p.name)


def load_photo(photo, short_side):
  """float32 HxWx3 in [0, 1], box-down-scaled so that its shorter side is `short_side`."""
  with Image.open(photo.path) as im:
    im = im.convert("RGB")
    s = short_side / min(im.size)
    if s < 1:
      im = im.resize((max(round(im.width * s), 1), max(round(im.height * s), 1)), Image.BOX)
    return np.asarray(im, np.float32) / 255.0


# ---------------------------------------------------------------------------
# Crops.
# ---------------------------------------------------------------------------
class Crops:
  """Seeded random crops of the photographs' bands (one band per split)."""

  def __init__(self, photos, size, short_side):
    self.size = size
    self.images = [load_photo(p, short_side) for p in photos]
    self.photos = photos

  def band(self, i, split):
    """The split's band of photograph i, cut along its longer side."""
    img = self.images[i]
    if img.shape[1] > img.shape[0]:
      img = img.transpose(1, 0, 2)
    lo, hi = BANDS[split]
    n = img.shape[0]
    a = min(int(lo * n), n - self.size)
    return img[a:max(int(hi * n), a + self.size)]

  def draw(self, rng, split, n):
    """n crops (n x size x size x 3 float32) and their photos' indices."""
    out, which = np.empty((n, self.size, self.size, 3), np.float32), rng.integers(0, len(self.images), n)
    for k, i in enumerate(which):
      b = self.band(i, split)
      y = rng.integers(0, b.shape[0] - self.size + 1)
      x = rng.integers(0, b.shape[1] - self.size + 1)
      c = b[y:y + self.size, x:x + self.size]
      out[k] = c[:, ::-1] if rng.uniform() < 0.5 else c
    return out, which


# ---------------------------------------------------------------------------
# Post-processing, the same distribution for both classes.
# ---------------------------------------------------------------------------
def parse_postprocess(spec):
  """'jpeg:70-95,resize:1-1.5' -> {'jpeg': (70, 95), 'resize': (1.0, 1.5)} ('' : none)."""
  out = {}
  for part in filter(None, (s.strip() for s in spec.split(","))):
    kind, _, rng = part.partition(":")
    try:
      lo, hi = (float(v) for v in rng.split("-"))
    except ValueError:
      raise cli.UserError(f"postprocess {part!r}: expected KIND:LO-HI, e.g. jpeg:70-95 or resize:1-1.5") from None
    if kind == "jpeg" and 1 <= lo <= hi <= 100:
      out[kind] = (int(lo), int(hi))
    elif kind == "resize" and 1 <= lo <= hi:
      out[kind] = (lo, hi)
    else:
      raise cli.UserError(f"postprocess {part!r}: jpeg takes qualities 1-100, resize factors >= 1")
  return out


def postprocess(img, pp, rng):
  """uint8 HxWx3 after the drawn post-processing (resize, then JPEG), the same side."""
  if "resize" in pp:
    f = rng.uniform(*pp["resize"])
    h, w = img.shape[:2]
    big = np.asarray(Image.fromarray(img).resize((round(w * f), round(h * f)), Image.BILINEAR))
    y, x = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
    img = big[y:y + h, x:x + w]
  if "jpeg" in pp:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=int(rng.integers(pp["jpeg"][0], pp["jpeg"][1] + 1)))
    with Image.open(buf) as im:
      img = np.asarray(im.convert("RGB"))
  return np.ascontiguousarray(img)


def to_uint8(x):
  return np.clip(np.round(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# The benchmark.
# ---------------------------------------------------------------------------
def generate(counts, size=64, seed=0, families=FAMILIES, *, pp="", gen_steps=GEN_STEPS, photos=None,
             log=print, train_all=False, aligned=False):
  """Yields (split, dict(image=uint8, source, category, group, name)) of the photo benchmark.

  Args:
    counts: {split: number of reals}; train/val get as many fakes of families[0], test gets, per
      family, that many reals (group = family) and fakes.
    size: crop side (a multiple of 8).
    seed: everything is a function of it.
    families: generator families (FAMILIES); the first is trained on (train/val).
    pp: post-processing spec (parse_postprocess).
    gen_steps: training steps of each generator.
    photos: the photographs (default: find_photos()).
    log: progress messages.
    train_all: train/val hold every family too, each against its own reals (group = family),
      as test does: what training on each family in turn needs (scripts/cross_gan_matrix.py).
    aligned: the first family's train/val fakes are the reconstructions of the reals themselves
      (it must be ALIGNED_FAMILY).
  """
  from fakejax import photo_generators  # pylint: disable=g-import-not-at-top  (JAX only here)
  if size % 8:
    raise cli.UserError(f"photo image size must be a multiple of 8, got {size}")
  unknown = set(families) - set(ALL_FAMILIES)
  if unknown:
    raise cli.UserError(f"unknown photo families {sorted(unknown)}; known: {', '.join(ALL_FAMILIES)}")
  if aligned and families[:1] != (ALIGNED_FAMILY,):
    raise cli.UserError(f"aligned pairs are made by the {ALIGNED_FAMILY} family: put it first in families")
  photos = find_photos() if photos is None else photos
  if len(photos) < 2:
    raise cli.UserError("the photo benchmark found fewer than 2 photographs (pip install scikit-image)")
  pp = parse_postprocess(pp) if isinstance(pp, str) else pp
  crops = Crops(photos, size, short_side=6 * size)
  gens = {}
  for fam in families:
    k = _SEED_ORDER.index(fam)
    log(f"photo benchmark: training generator {fam} ({gen_steps} steps)")
    gens[fam] = photo_generators.train(fam, crops, np.random.default_rng([seed, 1, k]), gen_steps, seed + k)
    x = crops.draw(np.random.default_rng([seed, 3, k]), "train", 64)[0]  # Its own stream: data unchanged.
    y = gens[fam](x)
    # A collapsed generator's fakes are flat where its input is not.
    flat = float(((y.std(axis=(1, 2, 3)) < 0.02) & (x.std(axis=(1, 2, 3)) >= 0.02)).mean())
    log(f"photo benchmark: {fam}: L1 to its input {np.abs(y - x).mean():.3f}, flat fakes {flat:.0%}"
        + (" (collapsed? its fakes are not photographs)" if flat > 0.1 else ""))
  for s_idx, (split, n) in enumerate(sorted(counts.items())):
    per_family = split == "test" or train_all
    fams = families if per_family else families[:1]
    for fam in (f for f in fams if split != "test" or f in FAMILIES):
      yield from _family_split(gens[fam], crops, fam, split, n, pp=pp, group=fam if per_family else "",
                               rng=np.random.default_rng([seed, 2, s_idx, _SEED_ORDER.index(fam)]),
                               paired=aligned and fam == ALIGNED_FAMILY)


def _family_split(gen, crops, fam, split, n, *, pp, group, rng, paired):
  """(split, row) of n reals and n fakes of one family (generate); `paired`: each fake is the
  generator's output for the real of the same number, else for another crop."""
  reals, which = crops.draw(rng, split, n)
  sources, which_src = crops.draw(rng, split, n)
  if paired:
    sources, which_src = reals, which
  fakes = np.concatenate([gen(sources[i:i + 64]) for i in range(0, n, 64)]) if n else sources
  for kind, batch, ids in (("real", reals, which), (fam, fakes, which_src)):
    for i in range(n):
      img = postprocess(to_uint8(batch[i]), pp, rng)
      name = (f"{split}/{fam}/{'0_real' if kind == 'real' else '1_fake'}/{i:06d}" if paired
              else f"{split}/{fam}/{kind}_{i:06d}")
      yield split, dict(image=img, source=kind, category=crops.photos[ids[i]].category, group=group, name=name)
