"""Image files <-> pixels: decoding any format to 8-bit RGB, lossless storage, content hashes.

Two lossless storages for the pixels of a record:
  png  PNG bytes (compress level 1): small on disk, ~430 images/s per core to decode at 256 px.
  raw  the uint8 pixels as they are (the record also holds the shape): larger, ~10x faster to
       read, for pipelines that must feed a GPU (docs/performance.md).
"""

import contextlib
import hashlib
import io
import os
import warnings

import numpy as np
from PIL import Image

from fakejax import cli

STORAGES = ("png", "raw")


class BadImage(Exception):
  """A file that cannot be used as an image; the message is the reason."""


@contextlib.contextmanager
def _open(path_or_bytes, max_pixels, min_size=1):
  """The opened PIL image, its size checked; every decoding failure becomes BadImage(reason)."""
  is_bytes = isinstance(path_or_bytes, (bytes, bytearray, memoryview))
  if (len(path_or_bytes) if is_bytes else os.path.getsize(path_or_bytes)) == 0:
    raise BadImage("empty file (0 bytes)")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(path_or_bytes) if is_bytes else path_or_bytes) as im:
        w, h = im.size
        if w * h > max_pixels:
          raise BadImage(f"decompression bomb: {w}x{h} is over the {max_pixels}-pixel limit")
        if min(w, h) < min_size:
          raise BadImage(f"too small: {w}x{h}, the minimum side is {min_size}")
        yield im
  except BadImage:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise BadImage(f"decompression bomb: {e}") from None
  except Image.UnidentifiedImageError:
    raise BadImage("not an image (unrecognised format)") from None
  except (OSError, SyntaxError, ValueError) as e:
    raise BadImage(f"cannot decode: {e}") from None


def load_rgb(path_or_bytes, max_pixels=1 << 28, min_size=1):
  """Decodes an image file to 8-bit RGB.

  Grayscale, palette, CMYK and 16-bit images are converted; an alpha channel is
  dropped (the colour channels are kept exactly).

  Args:
    path_or_bytes: a file path or the encoded bytes.
    max_pixels: larger declared sizes are refused as decompression bombs.
    min_size: smaller images (height or width) are refused.

  Returns:
    (uint8 array HxWx3, file format name such as 'PNG' or 'JPEG').

  Raises:
    BadImage: with the reason, for anything that is not a usable image.
  """
  with _open(path_or_bytes, max_pixels, min_size) as im:
    fmt = im.format or "unknown"
    im.load()
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
      a = np.asarray(im).astype(np.uint32)
      a = (a >> 8) if a.max(initial=0) > 255 else a  # 16-bit -> 8-bit keeps the top bits.
      rgb = np.repeat(a.astype(np.uint8)[..., None], 3, -1)
    elif im.mode == "F":
      raise BadImage("unsupported mode F (floating-point image)")
    else:
      rgb = np.asarray(im.convert("RGB"))
  return np.ascontiguousarray(rgb), fmt


def image_size(path_or_bytes, max_pixels=1 << 28):
  """(height, width) from the file's header alone, with load_rgb's refusals (empty, not an
  image, decompression bomb).

  Raises:
    BadImage: with the reason.
  """
  with _open(path_or_bytes, max_pixels) as im:
    w, h = im.size
  return h, w


def encode_png(rgb):
  """Lossless PNG bytes of a uint8 HxWx3 array."""
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def decode_png(data):
  """Inverse of encode_png."""
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"))


def encode(rgb, storage):
  """The record bytes of a uint8 HxWx3 image in `storage` ('png' or 'raw')."""
  if storage == "png":
    return encode_png(rgb)
  if storage == "raw":
    return np.ascontiguousarray(rgb, np.uint8).tobytes()
  raise cli.UserError(f"Unknown storage {storage!r}; known: {', '.join(STORAGES)}")


def decode(data, shape, storage):
  """The uint8 HxWx3 pixels of a record's bytes (`shape` is the stored (h, w, 3))."""
  if storage == "raw":
    return np.frombuffer(data, np.uint8).reshape(tuple(int(s) for s in shape))
  return decode_png(data)


def pixel_hash(rgb):
  """A content hash of the decoded pixels (same pixels => same hash, any container)."""
  h = hashlib.blake2b(digest_size=16)
  h.update(np.asarray(rgb.shape, np.int64).tobytes())
  h.update(np.ascontiguousarray(rgb).tobytes())
  return h.hexdigest()


def list_images(inputs):
  """Files named directly, plus every file below named folders (sorted; hidden files skipped)."""
  files = []
  for p in inputs:
    if os.path.isdir(p):
      for dirpath, dirnames, filenames in os.walk(p):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    elif os.path.exists(p):
      files.append(p)
    else:
      raise FileNotFoundError(f"{p} does not exist")
  return files


# The IJG (libjpeg) base quantisation tables, in natural order (Annex K of the JPEG standard).
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])


def ijg_table(quality):
  """libjpeg's luminance table at `quality` (1-100): jpeg_quality_scaling, baseline-clipped."""
  scale = 5000 // quality if quality < 50 else 200 - 2 * quality
  return np.clip((_IJG_LUMA * scale + 50) // 100, 1, 255)


def jpeg_settings(path):
  """What a JPEG file was saved with: {'quality', 'qtables', 'subsampling'}, or None for other
  formats. `quality` is the IJG quality whose luminance table is nearest the file's (what DDA's
  quality file records; exact for files libjpeg or PIL wrote); `qtables` are the file's own tables
  (PIL's `quantization`), to save another image exactly as this one was."""
  with Image.open(path) as im:
    if im.format != "JPEG" or not getattr(im, "quantization", None):
      return None
    tables = {k: list(v) for k, v in im.quantization.items()}
    from PIL import JpegImagePlugin  # pylint: disable=g-import-not-at-top
    subsampling = JpegImagePlugin.get_sampling(im)
  luma = np.asarray(tables[0])  # PIL gives the tables in natural order, as _IJG_LUMA.
  errors = [np.abs(ijg_table(q) - luma).sum() for q in range(1, 101)]
  return {"quality": int(np.argmin(errors)) + 1, "qtables": tables, "subsampling": subsampling}


def jpeg_like(rgb, settings):
  """The pixels of `rgb` saved as a JPEG with `settings` (jpeg_settings: the file's own tables and
  chroma subsampling) or at a quality (an int), then decoded."""
  buf = io.BytesIO()
  if isinstance(settings, dict):
    Image.fromarray(rgb).save(buf, format="JPEG", qtables=settings["qtables"],
                              subsampling=settings["subsampling"])
  else:
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(settings))
  return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
