"""Initial parameters: init='reference' as Keras / torchvision / big_vision initialise, 'flax' as nnx.

Expected distributions are the frameworks' documented formulas, computed here by hand:
- Keras glorot_uniform: U(-l, l), l = sqrt(6 / (fan_in + fan_out)); a Keras kernel's fans are
  kh*kw*(its input dim) and kh*kw*(its output dim), and a DepthwiseConv2D kernel is (kh, kw, C, 1).
- torch kaiming_normal_(mode='fan_out', nonlinearity='relu'): N(0, 2 / (cout*kh*kw)), untruncated.
- torch nn.Linear default: weight and bias U(-1/sqrt(in), 1/sqrt(in)).
- flax lecun_normal: N(0, 1 / fan_in) truncated at 2 standard deviations of the untruncated normal.
"""

import math

from flax import nnx
import jax
import numpy as np
import pytest

from fakejax import checkpoint
from fakejax import models

# Narrow models: most layers share a few shapes, and each new shape costs an initialiser compile.
_MODELS = {("xception", "reference"): dict(width=0.01, middle_blocks=1),
           ("mobilenet_v2", "reference"): dict(width=0.1),
           ("resnet50", "reference"): dict(width=0.01),
           ("bit_resnet50", "reference"): dict(width=0.01),
           ("bit_resnet50", "flax"): dict(width=0.01)}
CLASSES = 64  # Enough head biases to see their distribution.


@pytest.fixture(scope="module")
def params():
  """{(model, init): {parameter path: array}}."""
  out = {}
  with jax.default_prng_impl("rbg"):  # The same distributions; compiles faster than threefry.
    for (name, init), kw in _MODELS.items():
      state = nnx.state(models.create(name, CLASSES, init=init, **kw))
      out[name, init] = {k: np.asarray(v) for k, v in checkpoint.flat(nnx.to_pure_dict(state)).items()}
  return out


def _keras_glorot_limit(ours_shape):
  kh, kw, cin, cout = ours_shape
  if cin == 1 and cout > 1:  # Depthwise: ours (kh, kw, 1, C), Keras' (kh, kw, C, 1).
    cin, cout = cout, 1
  return math.sqrt(6 / (kh * kw * cin + kh * kw * cout))


def _assert_uniform(w, bound, what):
  """Values in [-bound, bound] with a uniform's std bound/sqrt(3) (within 6 standard errors)."""
  assert np.max(np.abs(w)) <= bound * (1 + 1e-6), what
  rel_se = math.sqrt(0.2 / w.size)  # Standard error of a uniform sample's std, relative.
  assert abs(np.std(w) / (bound / math.sqrt(3)) - 1) < 6 * rel_se, (what, np.std(w), bound)


def _assert_normal(w, std, what, truncated):
  rel_se = math.sqrt(0.5 / w.size)
  assert abs(np.std(w) / std - 1) < 6 * rel_se + 0.01, (what, np.std(w), std)
  beyond = np.mean(np.abs(w) > 2 * std)  # An untruncated normal: 4.55%.
  if truncated:
    assert np.max(np.abs(w)) <= 2 * std / 0.87962566 * (1 + 1e-6), what
  elif w.size >= 5000:
    assert 0.03 < beyond < 0.065, (what, beyond)


def _normalisation_layers_start_neutral(p):
  for k, v in p.items():
    leaf = k.rsplit("/", 1)[-1]
    if k.startswith("head/"):
      continue
    if leaf in ("scale", "var"):
      np.testing.assert_array_equal(v, 1, err_msg=k)
    elif leaf in ("bias", "mean"):
      np.testing.assert_array_equal(v, 0, err_msg=k)


@pytest.mark.parametrize("name", ["xception", "mobilenet_v2"])
def test_keras_glorot_uniform(params, name):
  p = params[name, "reference"]
  kernels = {k: v for k, v in p.items() if v.ndim == 4}
  assert any(v.shape[2] == 1 for v in kernels.values()), "no depthwise kernel checked"
  for k, w in kernels.items():
    _assert_uniform(w, _keras_glorot_limit(w.shape), k)
  _assert_uniform(np.concatenate([(w / _keras_glorot_limit(w.shape)).ravel() for w in kernels.values()]),
                  1.0, "all kernels")
  fan_in, fan_out = p["head/kernel"].shape
  _assert_uniform(p["head/kernel"], math.sqrt(6 / (fan_in + fan_out)), "head/kernel")
  np.testing.assert_array_equal(p["head/bias"], 0)
  _normalisation_layers_start_neutral(p)


def test_torchvision_resnet_kaiming_normal_fan_out(params):
  p = params["resnet50", "reference"]
  kernels = {k: v for k, v in p.items() if v.ndim == 4}
  for k, w in kernels.items():
    kh, kw, _, cout = w.shape
    _assert_normal(w, math.sqrt(2 / (kh * kw * cout)), k, truncated=False)
  pooled = np.concatenate([(w / math.sqrt(2 / np.prod(w.shape[:2]) / w.shape[3])).ravel()
                           for w in kernels.values()])
  assert abs(np.std(pooled) - 1) < 6 * math.sqrt(0.5 / pooled.size)
  assert 0.035 < np.mean(np.abs(pooled) > 2) < 0.056  # Untruncated: 4.55% beyond 2 sigma.
  bound = 1 / math.sqrt(p["head/kernel"].shape[0])
  _assert_uniform(p["head/kernel"], bound, "head/kernel")
  _assert_uniform(p["head/bias"], bound, "head/bias")
  _normalisation_layers_start_neutral(p)


@pytest.mark.parametrize("init", ["reference", "flax"])
def test_bit(params, init):
  # big_vision's convolutions are lecun normal like flax's (standardised anyway); its head is zero.
  p = params["bit_resnet50", init]
  for k, w in p.items():
    if k.endswith("kernel") and (k != "head/kernel" or init == "flax"):
      _assert_normal(w, 1 / math.sqrt(np.prod(w.shape[:-1])), k, truncated=True)
  if init == "reference":
    np.testing.assert_array_equal(p["head/kernel"], 0)
  np.testing.assert_array_equal(p["head/bias"], 0)
  _normalisation_layers_start_neutral(p)


def test_unknown_init_is_named():
  with pytest.raises(ValueError, match="known: reference, flax"):
    nnx.eval_shape(lambda: models.create("resnet50", 2, init="keras"))
