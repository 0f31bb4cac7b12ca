"""Per-image augmentations on uint8 HxWx3 numpy arrays (run in grain workers).

Each op takes the image and a numpy Generator, so one seed gives one augmented
batch. The defaults touch no pixel values: random crop and flip only. Resampling
(resize, rotation, shift, zoom) is opt-in because it erases the up-sampling
fingerprints a detector must see; blur + JPEG follow Wang et al. 2020
(blur_prob / blur_sig / jpg_prob / jpg_qual).
"""

import io

import numpy as np
from PIL import Image, ImageFilter


class TooSmall(ValueError):
  """An image smaller than the crop or patch the pipeline needs."""


def fit(img, size, policy, name=""):
  """Checks that img is at least size x size; pads it (reflect) if policy == 'pad'."""
  h, w = img.shape[:2]
  if h >= size and w >= size:
    return img
  if policy != "pad":
    raise TooSmall(f"{name or 'image'} is {w}x{h}, smaller than the {size}x{size} crop/patch; "
                   "use larger images, a smaller data.image_size, or data.too_small='pad'")
  ph, pw = max(size - h, 0), max(size - w, 0)
  return np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect"
                if min(h, w) > 1 else "edge")


def random_crop(img, size, rng):
  h, w = img.shape[:2]
  y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
  return img[y:y + size, x:x + size]


def center_crop(img, size):
  h, w = img.shape[:2]
  y, x = (h - size) // 2, (w - size) // 2
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


def resize(img, size):
  return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def train_augment(img, rng, aug, size, too_small="error", name=""):
  """The training recipe: [resize] -> [affine] -> blur -> JPEG -> crop -> flip.

  Blur and JPEG come before the crop as in Wang et al.: the JPEG block grid stays
  aligned with the full image, as it is for a real re-compressed upload.

  Args:
    img: uint8 HxWx3.
    rng: numpy Generator.
    aug: the config's `aug` block.
    size: crop size (0: no crop, keep the full image).
    too_small: 'error' or 'pad' for images smaller than `size`.
    name: file name for error messages.

  Returns:
    uint8 size x size x 3.
  """
  if aug.resize:
    img = resize(img, aug.resize)
  if aug.rotate or aug.shift or aug.zoom:
    img = affine(img, rng, aug.rotate, aug.shift, aug.zoom)
  if aug.blur_prob and rng.uniform() < aug.blur_prob:
    img = gaussian_blur(img, rng.uniform(*aug.blur_sig))
  if aug.jpg_prob and rng.uniform() < aug.jpg_prob:
    img = jpeg(img, rng.integers(aug.jpg_qual[0], aug.jpg_qual[1] + 1), aug.jpg_method)
  if size:
    img = fit(img, size, too_small, name)
    img = random_crop(img, size, rng) if aug.crop == "random" else center_crop(img, size)
  if aug.flip and rng.uniform() < aug.flip:
    img = img[:, ::-1]
  return np.ascontiguousarray(img)


def eval_preprocess(img, size, resize_to=0, too_small="error", name=""):
  """Deterministic evaluation view: [resize] then centre crop to `size` (0: full image)."""
  if resize_to:
    img = resize(img, resize_to)
  if size:
    img = center_crop(fit(img, size, too_small, name), size)
  return np.ascontiguousarray(img)
