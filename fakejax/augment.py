"""Image ops on uint8 HxWx3 numpy arrays: the one home of crops, flips, rotations, blur, JPEG
and resizing, for training augmentation, test-time augmentation and the robustness protocol.

Random ops take a numpy Generator, so one seed gives one augmented batch. The training
defaults touch no pixel values: random crop and flip only. Resampling (resize, rotation,
shift, zoom) is opt-in because it erases the up-sampling fingerprints a detector must see;
blur + JPEG follow Wang et al. 2020 (blur_prob / blur_sig / jpg_prob / jpg_qual). After the
crop and flip, SAFE's (Li et al. 2025) rotation, colour jitter and patch masking
(spin / color_jitter / mask_*), each as torchvision does it on a PIL image.
"""

import dataclasses
import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy import fft as sp_fft
from scipy import ndimage

from fakejax import cli


class TooSmall(cli.UserError):
  """An image smaller than the crop or patch the pipeline needs."""


def fit(img, size, policy, name=""):
  """Checks that img is at least size x size; else pads it, the shortfall split as torchvision's
  CenterCrop does (half before, the rest after): reflected if policy == 'pad', black if 'zero'
  (torchvision's fill)."""
  h, w = img.shape[:2]
  if h >= size and w >= size:
    return img
  if policy not in ("pad", "zero"):
    raise TooSmall(f"{name or 'image'} is {w}x{h}, smaller than the {size}x{size} crop/patch; "
                   "use larger images, a smaller data.image_size, or data.too_small='pad' or 'zero'")
  ph, pw = max(size - h, 0), max(size - w, 0)
  mode = "constant" if policy == "zero" else "reflect" if min(h, w) > 1 else "edge"
  return np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode=mode)


def random_crop(img, size, rng):
  h, w = img.shape[:2]
  y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
  return img[y:y + size, x:x + size]


def center_crop(img, size):
  """torchvision's CenterCrop offsets: round((side - size) / 2), halves to even (Python's round)."""
  h, w = img.shape[:2]
  y, x = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return img[y:y + size, x:x + size]


def random_patches(img, size, k, rng):
  """k random size x size patches of one image, stacked: (k, size, size, 3)."""
  return np.stack([random_crop(img, size, rng) for _ in range(k)])


def gaussian_blur(img, sigma):
  return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=float(sigma))))


def jpeg(img, quality, method="pil"):
  """Re-compresses with JPEG at `quality` (PIL or OpenCV encoder), decoded back to RGB."""
  quality = int(quality)
  if method == "cv2":
    import cv2  # pylint: disable=g-import-not-at-top  (optional dependency)
    ok, enc = cv2.imencode(".jpg", img[..., ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
      raise RuntimeError("cv2.imencode failed")
    return cv2.imdecode(enc, cv2.IMREAD_COLOR)[..., ::-1].copy()
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=quality)
  with Image.open(io.BytesIO(buf.getvalue())) as im:
    return np.asarray(im.convert("RGB"))


def affine(img, rng, rotate=0.0, shift=0.0, zoom=0.0):
  """Random rotation (degrees), shift (fraction of the side) and zoom (fraction), bilinear."""
  h, w = img.shape[:2]
  angle = rng.uniform(-rotate, rotate) if rotate else 0.0
  dx, dy = (rng.uniform(-shift, shift, 2) * (w, h)) if shift else (0.0, 0.0)
  scale = rng.uniform(1 - zoom, 1 + zoom) if zoom else 1.0
  if not (angle or dx or dy or scale != 1.0):
    return img
  a = np.deg2rad(angle)
  # PIL maps output -> input coordinates: inverse of (rotate+scale about the centre, then shift).
  c, s = np.cos(a) / scale, np.sin(a) / scale
  cx, cy = w / 2, h / 2
  m = (c, s, cx - c * (cx + dx) - s * (cy + dy), -s, c, cy + s * (cx + dx) - c * (cy + dy))
  return np.asarray(Image.fromarray(img).transform((w, h), Image.AFFINE, m, Image.BILINEAR))


# PIL's six resamplings, in DDA's order (their datasets.py `resampling_methods`).
RESAMPLINGS = (Image.NEAREST, Image.BOX, Image.BILINEAR, Image.HAMMING, Image.BICUBIC, Image.LANCZOS)


def pixel_mix(real, fake, weight, resample=Image.LANCZOS):
  """DDA's pixel_blend_mix: the fake (resized to the real's size with `resample` if it differs)
  blended with its real, weight * fake + (1 - weight) * real in float32, clipped and truncated to
  uint8 (their astype)."""
  fake = _same_size(fake, real, resample)
  mixed = weight * fake.astype(np.float32) + (1 - weight) * real.astype(np.float32)
  return np.clip(mixed, 0, 255).astype(np.uint8)


def frequency_mix(real, fake, real_weight):
  """DDA's freq_blend_mix with patch=-1 (their call): per channel, the orthonormal 2-D DCT of the
  whole image, real_weight * DCT(real) + (1 - real_weight) * DCT(fake), inverted, rounded and
  clipped to uint8; a fake of another size is first resized to the real's (LANCZOS)."""
  fake = _same_size(fake, real, Image.LANCZOS)
  out = []
  for c in range(3):
    r, f = (sp_fft.dctn(a[..., c].astype(np.float32), norm="ortho") for a in (real, fake))
    out.append(sp_fft.idctn(real_weight * r + (1 - real_weight) * f, norm="ortho"))
  return np.clip(np.round(np.stack(out, -1)), 0, 255).astype(np.uint8)


def _same_size(img, like, resample):
  if img.shape[:2] == like.shape[:2]:
    return img
  return np.asarray(Image.fromarray(img).resize((like.shape[1], like.shape[0]), resample))


def mix_pair(real, fake, aug, rng):
  """DDA's blending of a fake with its real (data/datasets.py): pixel-mix with probability
  aug.pixel_mix_prob (weight of the fake from U(0, aug.pixel_mix_ratio), the fake first resized to
  the real's size by one of PIL's six resamplings), frequency-mix with aug.freq_mix_prob (the
  real's weight from U(0, aug.freq_mix_ratio)), in a random order when both. Returns the fake
  (unchanged, and no draw made, when both probabilities are 0)."""
  ops = [op for op, p in (("pixel", aug.get("pixel_mix_prob", 0.0)), ("frequency", aug.get("freq_mix_prob", 0.0)))
         if p > 0 and rng.random() < p]
  for op in rng.permutation(ops) if len(ops) > 1 else ops:
    if op == "pixel":
      resample = RESAMPLINGS[rng.integers(len(RESAMPLINGS))]
      fake = pixel_mix(real, fake, rng.uniform(0, aug.pixel_mix_ratio), resample)
    else:
      fake = frequency_mix(real, fake, rng.uniform(0, aug.freq_mix_ratio))
  return fake


def resize(img, size):
  """Bilinear resize to size x size, or to (height, width) when `size` is a pair."""
  h, w = (size, size) if np.isscalar(size) else size
  return np.asarray(Image.fromarray(img).resize((int(w), int(h)), Image.BILINEAR))


def rotate(img, angle):
  """Rotation by `angle` degrees about the centre, same size, bilinear, edges extended.

  What Keras' ImageDataGenerator(rotation_range=...) does (scipy, order 1, fill 'nearest'), as
  in the test-time augmentation study.
  """
  if not angle:
    return img
  out = ndimage.rotate(img.astype(np.float32), angle, axes=(1, 0), reshape=False, order=1,
                       mode="nearest")
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def spin(img, rng, degrees):
  """torchvision RandomRotation(degrees) on a PIL image: an angle from U(-degrees, degrees),
  nearest neighbour, same size, the corners filled with black."""
  angle = float(rng.uniform(-degrees, degrees))
  return np.asarray(Image.fromarray(img).rotate(angle, Image.NEAREST, expand=False, fillcolor=0))


def color_jitter(img, rng, brightness, contrast, saturation):
  """torchvision ColorJitter(brightness, contrast, saturation) on a PIL image: each factor from
  U(1 - v, 1 + v), the three adjustments (PIL's ImageEnhance, as torchvision calls them) in a
  random order."""
  ops = [(ImageEnhance.Brightness, brightness), (ImageEnhance.Contrast, contrast),
         (ImageEnhance.Color, saturation)]
  factors = [rng.uniform(1 - v, 1 + v) if v else None for _, v in ops]
  im = Image.fromarray(img)
  for i in rng.permutation(len(ops)):
    if factors[i] is not None:
      im = ops[i][0](im).enhance(float(factors[i]))
  return np.asarray(im)


def random_mask(img, rng, ratio, patch):
  """SAFE's RandomMask (once drawn to apply): a ratio from U(ratio), then that share of the
  image's patch x patch grid cells, distinct and drawn uniformly, set to 0 in every channel."""
  h, w = img.shape[:2]
  rows, cols = h // patch, w // patch
  n = min(int(h * w * rng.uniform(*ratio) / patch**2), rows * cols)
  if not n:
    return img
  out = img.copy()
  for cell in rng.choice(rows * cols, n, replace=False):
    y, x = (cell // cols) * patch, (cell % cols) * patch
    out[y:y + patch, x:x + patch] = 0
  return out


def gamma(img, g):
  """Gamma curve 255 * (x / 255) ** g."""
  return np.clip(np.round(255.0 * (img / 255.0) ** g), 0, 255).astype(np.uint8)


def gaussian_noise(img, std, rng):
  """Additive Gaussian noise of `std` 8-bit levels."""
  return np.clip(np.round(img + rng.normal(0, std, img.shape)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# Robustness protocol: one perturbation of a given kind and strength.
# ---------------------------------------------------------------------------
PERTURBATIONS = {
    "jpeg": "JPEG re-compression at quality Q (PIL)",
    "blur": "Gaussian blur of sigma S pixels",
    "resize": "bilinear resize by factor F (0.5: half the side)",
    "gamma": "gamma curve 255*(x/255)**G",
    "noise": "additive Gaussian noise of std S (8-bit levels)",
    # Format-debiased evaluation (DDA's protocol): the fakes alone are JPEG'd, as the reals are.
    "debias_jpeg": "the fakes alone re-encoded as JPEG at quality Q (0: each at a quality drawn from the "
                   "reals' own, read from their files' tables); the reals stay as they are",
}


@dataclasses.dataclass(frozen=True)
class Perturbation:
  """One degradation of the robustness protocol, e.g. Perturbation('jpeg', 75)."""
  kind: str
  strength: float

  def __post_init__(self):
    if self.kind not in PERTURBATIONS:
      raise cli.UserError(f"Unknown perturbation {self.kind!r}; known: {', '.join(PERTURBATIONS)}")

  @property
  def name(self):
    return f"{self.kind}:{self.strength:g}"

  def size_after(self, h, w):
    if self.kind != "resize":
      return h, w
    return max(1, int(round(h * self.strength))), max(1, int(round(w * self.strength)))

  def __call__(self, img, rng):
    if self.kind in ("jpeg", "debias_jpeg"):
      return jpeg(img, self.strength)
    if self.kind == "blur":
      return gaussian_blur(img, self.strength)
    if self.kind == "resize":
      return resize(img, self.size_after(*img.shape[:2]))
    if self.kind == "gamma":
      return gamma(img, self.strength)
    return gaussian_noise(img, self.strength, rng)


def parse_perturbations(specs):
  """['jpeg:95,75', 'blur:1,2'] -> [Perturbation('jpeg', 95), ...] in order."""
  out = []
  for spec in specs:
    kind, sep, values = spec.partition(":")
    if not sep or not values:
      raise cli.UserError(f"--perturb {spec!r}: expected KIND:V1,V2,... with KIND one of "
                       f"{', '.join(PERTURBATIONS)}")
    try:
      out += [Perturbation(kind, float(v)) for v in values.split(",")]
    except ValueError as e:
      raise cli.UserError(f"--perturb {spec!r}: {e}") from None
  return out


def parse_debias(spec):
  """evaluate's --debias: '' -> [], 'jpeg' -> [debias_jpeg:0] (the reals' qualities), 'jpeg:96' -> [debias_jpeg:96]."""
  if not spec:
    return []
  kind, _, quality = spec.partition(":")
  if kind != "jpeg" or not (quality or "0").isdigit() or int(quality or 0) > 100:
    raise cli.UserError(f"--debias {spec!r}: expected jpeg or jpeg:Q with Q in 1..100")
  return [Perturbation("debias_jpeg", float(quality or 0))]


# ---------------------------------------------------------------------------
# Test-time augmentation: the copies of an image whose predictions are averaged.
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Copy:
  """One test-time copy: optional horizontal flip, then a rotation in degrees."""
  flip: bool = False
  angle: float = 0.0

  @property
  def name(self):
    return "identity" if not (self.flip or self.angle) else (
        ("flip" if self.flip else "") + (f"rot{self.angle:+g}" if self.angle else ""))

  def __call__(self, img):
    return rotate(img[:, ::-1] if self.flip else img, self.angle)


def tta_copies(specs, seed=0):
  """The copies named by --tta, the identity first.

  Specs: 'flip' (horizontal flip); 'rot=R' (rotated by +R and -R degrees); 'rand=R:N' (N
  rotations by angles drawn uniformly from [-R, R], seeded - the study's rotation range).
  """
  copies = [Copy()]
  for spec in specs:
    kind, _, arg = spec.partition("=")
    try:
      if kind == "flip" and not arg:
        copies.append(Copy(flip=True))
      elif kind == "rot":
        copies += [Copy(angle=float(arg)), Copy(angle=-float(arg))]
      elif kind == "rand":
        r, _, n = arg.partition(":")
        angles = np.random.default_rng([seed, 104729]).uniform(-float(r), float(r), int(n or 4))
        copies += [Copy(angle=round(float(a), 3)) for a in angles]
      else:
        raise ValueError("unknown kind")
    except ValueError:
      raise cli.UserError(f"--tta {spec!r}: expected flip, rot=DEGREES or rand=RANGE:N") from None
  return tuple(dict.fromkeys(copies))


def train_augment(img, rng, aug, size, too_small="error", name=""):
  """The training recipe: [resize] -> [affine] -> [noise] -> blur -> JPEG -> [rot90] -> crop -> flip,
  then SAFE's [spin] -> [colour jitter] -> [grayscale] -> [patch mask].

  Blur and JPEG come before the crop as in Wang et al.: the JPEG block grid stays
  aligned with the full image, as it is for a real re-compressed upload.

  Args:
    img: uint8 HxWx3.
    rng: numpy Generator.
    aug: the config's `aug` block.
    size: crop size (0: no crop, keep the full image).
    too_small: 'error', 'pad' or 'zero' for images smaller than `size` (fit).
    name: file name for error messages.

  Returns:
    uint8 size x size x 3 (possibly a view of `img`).
  """
  if aug.resize:
    img = resize(img, aug.resize)
  if aug.rotate or aug.shift or aug.zoom:
    img = affine(img, rng, aug.rotate, aug.shift, aug.zoom)
  if aug.get("noise_prob", 0.0) and rng.uniform() < aug.noise_prob:  # AlignedForensics' GaussNoise.
    img = gaussian_noise(img, np.sqrt(rng.uniform(*aug.noise_var)), rng)
  if aug.blur_prob and rng.uniform() < aug.blur_prob:
    img = gaussian_blur(img, rng.uniform(*aug.blur_sig))
  if aug.jpg_prob and rng.uniform() < aug.jpg_prob:
    img = jpeg(img, rng.integers(aug.jpg_qual[0], aug.jpg_qual[1] + 1), aug.jpg_method)
  if aug.get("rot90", 0.0) and rng.uniform() < aug.rot90:  # A quarter turn 0-3 times, lossless.
    img = np.rot90(img, int(rng.integers(0, 4)))
  if size:
    img = fit(img, size, too_small, name)
    img = random_crop(img, size, rng) if aug.crop == "random" else center_crop(img, size)
  if aug.flip and rng.uniform() < aug.flip:
    img = img[:, ::-1]
  if aug.spin:
    img = spin(np.ascontiguousarray(img), rng, aug.spin)
  if any(aug.color_jitter):
    img = color_jitter(np.ascontiguousarray(img), rng, *aug.color_jitter)
  if aug.get("grayscale", 0.0) and rng.uniform() < aug.grayscale:  # torchvision RandomGrayscale (ITU-R 601-2).
    img = np.repeat(np.round(img @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)[..., None], 3, -1)
  if aug.mask_prob and rng.uniform() < aug.mask_prob:
    img = random_mask(img, rng, aug.mask_ratio, aug.mask_patch)
  return img  # A view: batching copies it once, into the batch.
