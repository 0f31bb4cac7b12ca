"""`evaluate --preset`: each repository's test transform, pixel for pixel, against the same
transform written here with PIL and numpy as torchvision does it (Resize((N, N)) on a PIL image is
PIL's bilinear resize; CenterCrop pads a short side with black, half before and the rest after,
then crops at int(round((side - size) / 2)))."""

import numpy as np
from PIL import Image
import pytest

from fakejax import scoring


def _torchvision_center_crop(img, size):
  im = Image.fromarray(img)
  w, h = im.size
  if w < size or h < size:  # torchvision pads first: [(size - w) // 2, ..., (size - w + 1) // 2].
    pw, ph = max(size - w, 0), max(size - h, 0)
    canvas = Image.new("RGB", (w + pw, h + ph))
    canvas.paste(im, (pw // 2, ph // 2))
    im, (w, h) = canvas, canvas.size
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return np.asarray(im.crop((left, top, left + size, top + size)))


REFERENCES = {
    "npr_forensynths": lambda img: np.asarray(Image.fromarray(img).resize((256, 256), Image.BILINEAR)),
    "npr_gangen": lambda img: img,
    "safe": lambda img: _torchvision_center_crop(img, 256),
    "univfd": lambda img: _torchvision_center_crop(img, 224),
    "cnndetection": lambda img: _torchvision_center_crop(img, 224),
    "cnndetection_nocrop": lambda img: img,
    "dda": lambda img: _torchvision_center_crop(img, 336),  # Inference/inference.py: CenterCrop(336).
}


# B-Free's five windows are checked against its wrapper, transcribed in torch, through a ViT:
# tests/test_dinov2.py::test_five_crops_match_bfree_wrapper.
MULTI_INPUT = {"bfree"}


def test_every_preset_has_a_reference():
  assert set(REFERENCES) | MULTI_INPUT == set(scoring.PRESETS)


# Sides whose excess over the crop is odd (3 and 7 mod 4 round up to even, 1 and 5 down),
# smaller than the crop, and both.
@pytest.mark.parametrize("h,w", [(300, 301), (259, 263), (229, 231), (200, 250), (215, 199), (333, 480)])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_preset_pixels_are_the_repository_transform(name, h, w):
  img = np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w, 3), np.uint8)
  view = scoring.View(**scoring.PRESETS[name])
  inputs, _ = view.cut(img, 0)
  want = REFERENCES[name](img)
  assert inputs.shape == (1, *want.shape)
  np.testing.assert_array_equal(inputs[0], want)
  assert view.plan(h, w)[0] == want.shape[:2]
