"""The training pieces NPR's and SAFE's recipes add, against hand-computed cases: label-smoothed
cross-entropy, NPR's step schedule, AdamW decaying kernels only, SAFE's RandomMask, rotation and
colour jitter."""

import os

from flax import nnx
import jax
import ml_collections
import numpy as np

from fakejax import augment
from fakejax import defaults
from fakejax import models
from fakejax.training import losses
from fakejax.training import optim as optim_lib

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def test_label_smoothed_cross_entropy_by_hand():
  logits = np.array([[2.0, -1.0], [0.5, 0.25]], np.float32)
  labels = np.array([0, 1])
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  a = 0.1  # -(1 - a) log p_y - a / K sum_k log p_k, K = 2.
  want = np.mean([-(1 - a) * logp[i, labels[i]] - a / 2 * logp[i].sum() for i in range(2)])
  np.testing.assert_allclose(float(losses.classification_loss(logits, labels, a)), want, rtol=1e-6)
  plain = np.mean([-logp[i, labels[i]] for i in range(2)])
  np.testing.assert_allclose(float(losses.classification_loss(logits, labels)), plain, rtol=1e-6)


def test_npr_schedule_decays_after_epochs_10_20_30_40():
  """NPR's trainer: at the end of 0-based epoch e, lr *= 0.9 if e % 10 == 0 and e != 0."""
  optim = defaults.from_file(os.path.join(CONFIGS, "npr.py")).optim
  spe = 3
  fn = optim_lib.create_learning_rate_fn(optim, 50 * spe, spe)
  lr = 2e-4
  for epoch in range(50):
    for k in range(spe):
      np.testing.assert_allclose(float(fn(epoch * spe + k)), lr, rtol=1e-6)
    if epoch % 10 == 0 and epoch != 0:
      lr *= 0.9


def test_safe_schedule_warms_up_one_epoch_then_cosine_to_min_lr():
  """SAFE's lr_sched: t = it / len + epoch; t < 1: lr t; else min + (lr - min) (1 + cos(pi (t - 1) / 19)) / 2."""
  optim = defaults.from_file(os.path.join(CONFIGS, "safe.py")).optim
  spe, epochs = 4, 20
  fn = optim_lib.create_learning_rate_fn(optim, epochs * spe, spe)
  lr, lo = 5e-3, 1e-6
  for it in range(epochs * spe):
    t = it / spe
    want = lr * t if t < 1 else lo + (lr - lo) * 0.5 * (1 + np.cos(np.pi * (t - 1) / (epochs - 1)))
    np.testing.assert_allclose(float(fn(it)), want, rtol=1e-5, atol=1e-12)


def test_adamw_decays_kernels_not_biases_or_batch_norm():
  optim = ml_collections.ConfigDict(dict(name="adamw", weight_decay=0.5))
  model = models.create("resnet_trunc", 2, width=0.0625)
  params = nnx.state(model, nnx.Param)
  tx = optim_lib.create_optimizer(optim, 0.1)
  zeros = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  flat_p, flat_u = jax.tree.leaves(params), jax.tree.leaves(updates)
  for p, u in zip(flat_p, flat_u):
    want = -0.1 * 0.5 * np.asarray(p) if p.ndim >= 2 else np.zeros(p.shape)  # AdamW: -lr wd p.
    np.testing.assert_allclose(np.asarray(u), want, rtol=1e-6, atol=1e-12)
  assert any(p.ndim == 1 for p in flat_p) and any(p.ndim >= 2 for p in flat_p)


def test_random_mask_blacks_out_distinct_grid_cells():
  img = np.full((64, 48, 3), 200, np.uint8)
  out = augment.random_mask(img, np.random.default_rng(0), (0.5, 0.5), 8)
  cells = (out[::8, ::8, 0] == 0)
  assert cells.sum() == int(64 * 48 * 0.5 / 64)  # SAFE: int(h w ratio / patch^2) cells.
  block = out.reshape(8, 8, 6, 8, 3).transpose(0, 2, 1, 3, 4)
  assert np.all((block == 0).all(axis=(2, 3, 4)) | (block == 200).all(axis=(2, 3, 4)))  # Whole cells.


def test_spin_by_a_half_turn_range_keeps_size_and_blacks_corners():
  img = np.full((33, 33, 3), 255, np.uint8)
  rng = np.random.default_rng(1)
  outs = [augment.spin(img, rng, 180.0) for _ in range(8)]
  assert all(o.shape == img.shape for o in outs)
  assert any(o[0, 0, 0] == 0 for o in outs)  # A rotated square leaves a black corner.
  assert all(o[16, 16, 0] == 255 for o in outs)  # The centre stays.


def test_color_jitter_of_zero_strength_is_the_identity_and_brightness_scales():
  img = np.random.default_rng(2).integers(0, 128, (16, 16, 3), np.uint8)
  np.testing.assert_array_equal(augment.color_jitter(img, np.random.default_rng(0), 0, 0, 0), img)
  rng = np.random.default_rng(3)
  f = np.random.default_rng(3).uniform(0.5, 1.5)  # The first draw is the brightness factor.
  out = augment.color_jitter(img, rng, 0.5, 0, 0)
  np.testing.assert_allclose(out, np.clip(img * f, 0, 255), atol=1)
