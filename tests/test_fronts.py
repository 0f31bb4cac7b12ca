"""Input front-ends (models.fronts) and NPR/SAFE's truncated ResNet, against independent
references: PyWavelets for SAFE's band, PIL for the bilinear resize, hand-computed cases for NPR,
the official PyTorch modules where torch is installed, and parameter counts by hand."""

import importlib.util

from flax import nnx
import jax
import numpy as np
from PIL import Image
import pytest

from fakejax import models
from fakejax.models import fronts

pywt = pytest.importorskip("pywt")


@pytest.mark.parametrize("h,w", [(8, 8), (7, 9), (13, 6), (32, 30)])
def test_safe_band_is_pywt_dwt2_diagonal_detail_borders_included(h, w):
  x = np.random.default_rng(h * w).uniform(size=(2, h, w, 3)).astype(np.float32)
  ref = np.stack([np.stack([pywt.dwt2(x[n, :, :, c], "bior1.3", "symmetric")[1][2] for c in range(3)], -1)
                  for n in range(2)])
  got = np.asarray(fronts.dwt_hh(x))
  assert got.shape == ref.shape  # floor((N + 5) / 2) per side: the borders are there.
  np.testing.assert_allclose(got, ref, atol=1e-6)


def test_filter_is_pywt_bior13():
  np.testing.assert_array_equal(fronts.BIOR13_DEC_HI, pywt.Wavelet("bior1.3").dec_hi)


@pytest.mark.parametrize("src,dst", [((6, 5), (12, 9)), ((18, 18), (32, 32)), ((130, 130), (256, 256))])
def test_bilinear_resize_is_pil_for_up_sampling(src, dst):
  """Up-sampling, PIL's bilinear filter has one-pixel support on half-pixel centres, the weights
  renormalised at the border: PyTorch's align_corners=False with the index clamped."""
  x = np.random.default_rng(0).uniform(size=src).astype(np.float32)
  ref = np.asarray(Image.fromarray(x, "F").resize(dst[::-1], Image.BILINEAR))
  got = np.asarray(fronts.resize_bilinear(x[None, :, :, None], dst))[0, :, :, 0]
  np.testing.assert_allclose(got, ref, atol=1e-5)


def test_safe_front_keeps_the_size():
  x = np.random.default_rng(1).uniform(size=(1, 20, 24, 3)).astype(np.float32)
  assert fronts.safe_dwt(x).shape == x.shape


def test_npr_is_each_2x2_block_minus_its_top_left_times_two_thirds():
  x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
  # Top-left pixels 0, 2, 8, 10: by hand.
  want = np.array([[0, 1, 0, 1], [4, 5, 4, 5], [0, 1, 0, 1], [4, 5, 4, 5]], np.float32) * 2 / 3
  np.testing.assert_allclose(np.asarray(fronts.npr(x))[0, :, :, 0], want, rtol=1e-6)
  with pytest.raises(ValueError, match="even"):
    fronts.npr(np.zeros((1, 5, 4, 1), np.float32))


@pytest.mark.torch
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_npr_is_the_official_interpolate():
  import torch  # pylint: disable=g-import-not-at-top
  from scripts import torch_nets  # pylint: disable=g-import-not-at-top  (NPR's interpolate, verbatim)

  x = np.random.default_rng(2).normal(size=(2, 3, 16, 12)).astype(np.float32)
  ref = torch_nets.npr_front(torch)(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(fronts.npr(x.transpose(0, 2, 3, 1))), ref, atol=1e-6)


def _bottleneck(cin, planes, downsample):
  p = cin * planes + 9 * planes * planes + planes * 4 * planes + 2 * (planes + planes + 4 * planes)
  return p + (cin * 4 * planes + 2 * 4 * planes if downsample else 0)


def test_truncated_resnet_parameter_counts_by_hand():
  """Stem 3x3 (no bias) + BN, layer1 (3 bottlenecks of 64), layer2 (4 of 128), head."""
  backbone = 27 * 64 + 2 * 64
  backbone += _bottleneck(64, 64, True) + 2 * _bottleneck(256, 64, False)
  backbone += _bottleneck(256, 128, True) + 3 * _bottleneck(512, 128, False)
  assert backbone == 1437248  # About the papers' 1.44M.
  count = lambda m: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  npr = nnx.eval_shape(lambda: models.create("resnet_trunc", 2, single_logit=True))
  safe = nnx.eval_shape(lambda: models.create("resnet_trunc", 2))
  assert count(npr) == backbone + 512 + 1
  assert count(safe) == backbone + 2 * 512 + 2


def test_single_logit_head_scores_sigmoid_and_trains_with_bce():
  m = models.create("resnet_trunc", 2, single_logit=True, seed=3)
  m.eval()
  x = models.preprocess(np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), np.uint8),
                        models.resolve_preprocess("resnet_trunc", "auto", front="npr"))
  logits = np.asarray(m(x))
  assert logits.shape == (2, 2) and np.all(logits[:, 0] == 0)
  z = logits[:, 1]
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(p[:, 1], 1 / (1 + np.exp(-z)), rtol=1e-5)


def test_preprocess_names_the_front():
  assert models.resolve_preprocess("resnet_trunc", "auto", front="npr") == "imagenet+npr"
  assert models.resolve_preprocess("resnet_trunc", "unit", front="safe_dwt") == "unit+safe_dwt"
  assert models.resolve_preprocess("xception", "auto") == "minus_one_one"
  with pytest.raises(ValueError, match="model.front"):
    models.resolve_preprocess("xception", "auto", front="wavelet")
  img = np.random.default_rng(4).integers(0, 256, (1, 8, 8, 3), np.uint8)
  want = (img.astype(np.float32) / 255.0)
  ref = np.stack([pywt.dwt2(want[0, :, :, c], "bior1.3", "symmetric")[1][2] for c in range(3)], -1)
  got = np.asarray(models.preprocess(img, "unit+safe_dwt"))
  big = np.asarray(Image.fromarray(ref[:, :, 0], "F").resize((8, 8), Image.BILINEAR))
  np.testing.assert_allclose(got[0, :, :, 0], big, atol=1e-5)
