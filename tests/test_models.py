"""Architectures: exact sizes, shapes, modes, and the fast depthwise convolution."""

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from fakejax import models
from fakejax.models import layers


@pytest.mark.parametrize("name,with_bn_stats,expected", [
    ("xception", True, 20_861_480),   # keras.applications.Xception(include_top=False).count_params()
    ("resnet50", False, 23_508_032),  # torchvision resnet50 parameters() minus fc
    ("resnet101", False, 42_500_160),
    ("mobilenet_v2", True, 2_257_984),  # keras.applications.MobileNetV2(include_top=False)
])
def test_backbone_parameter_counts(name, with_bn_stats, expected):
  model = nnx.eval_shape(lambda: models.create(name, 2))
  assert models.backbone_param_count(model, with_bn_stats) == expected
  head = nnx.state(model.head)
  assert head["kernel"].shape == (model.num_features, 2)


def _abstract_forward(model, shape, **kw):
  model.eval()
  graphdef, state = nnx.split(model)
  return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, **kw), state,
                        jax.ShapeDtypeStruct(shape, jnp.float32))


@pytest.mark.parametrize("name", ["xception", "resnet50", "mobilenet_v2"])
@pytest.mark.parametrize("size", [32, 64, 299])
def test_output_shapes(name, size):
  model = nnx.eval_shape(lambda: models.create(name, 5))
  logits, feats = _abstract_forward(model, (2, size, size, 3), return_features=True)
  c = model.num_features
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  assert feats["pooled"].shape == (2, c)
  assert feats["features"].shape[-1] == c and feats["features"].shape[0] == 2
  if name == "xception" and size == 299:
    assert feats["features"].shape == (2, 10, 10, 2048)  # As Keras Xception at 299.
  if name == "resnet50" and size == 299:
    assert feats["features"].shape == (2, 10, 10, 2048)
  if name == "mobilenet_v2" and size == 299:
    assert feats["features"].shape == (2, 10, 10, 1280)  # As Keras MobileNetV2 at 299.


def test_unknown_model_lists_the_known_ones():
  with pytest.raises(ValueError, match="known: deepfd, mobilenet_v2, resnet101, resnet50, xception"):
    models.create("vgg", 2)


def _assert_matches_xla_with_gradients(fn, x_shape, w_shape, stride, padding, groups=1):
  """`fn` (the lax.conv_general_dilated API) against XLA's convolution: outputs and both gradients."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x, w = jax.random.normal(k1, x_shape), jax.random.normal(k2, w_shape)

  def run(conv):
    return jax.vjp(lambda x, w: conv(x, w, (stride, stride), padding, feature_group_count=groups,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")), x, w)

  ref, ref_vjp = run(lax.conv_general_dilated)
  got, got_vjp = run(fn)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  ct = jax.random.normal(k3, ref.shape)
  for g, r in zip(got_vjp(ct), ref_vjp(ct)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk_bytes", [None, 1, 1500], ids=["whole_images", "row_by_row", "row_blocks"])
@pytest.mark.parametrize("stride,padding", [(1, "SAME"), (2, "SAME"), (1, "VALID"), (2, ((1, 2), (0, 1)))])
def test_shifted_depthwise_matches_xla_with_gradients(stride, padding, chunk_bytes, monkeypatch):
  if chunk_bytes:  # The filter gradient walks blocks of output rows that fit this many bytes.
    monkeypatch.setattr(layers, "FILTER_GRAD_CHUNK_BYTES", chunk_bytes)
  _assert_matches_xla_with_gradients(layers.shifted_depthwise_conv, (2, 12, 9, 6), (3, 3, 1, 6),
                                     stride, padding, groups=6)


@pytest.mark.parametrize("kernel,stride,padding", [(1, 1, "SAME"), (1, 2, "SAME"), (1, 2, "VALID"),
                                                   (1, 1, ((1, 0), (0, 2))), (3, 1, "SAME")])
def test_matmul_pointwise_conv_matches_xla_with_gradients(kernel, stride, padding):
  _assert_matches_xla_with_gradients(layers.matmul_pointwise_conv, (2, 9, 7, 5),
                                     (kernel, kernel, 5, 6), stride, padding)


def _xla_max_pool(x, window=3, stride=2, padding="SAME"):
  return nnx.max_pool(x, (window, window), (stride, stride), padding=padding)


@pytest.mark.parametrize("size,padding", [(9, "SAME"), (8, "SAME"), (8, ((1, 1), (1, 1)))])
def test_max_pool_matches_xla_with_gradients_and_ties(size, padding):
  # Few distinct values, so most windows hold their max more than once: the gradient must go to
  # the same (first) input as XLA's select-and-scatter, or some error would be of order 1.
  x = jax.random.randint(jax.random.key(0), (2, size, size + 1, 3), 0, 4).astype(jnp.float32)
  y, got_vjp = jax.vjp(lambda x: layers.max_pool(x, 3, 2, padding), x)
  want, ref_vjp = jax.vjp(lambda x: _xla_max_pool(x, 3, 2, padding), x)
  np.testing.assert_array_equal(y, want)
  ct = jax.random.normal(jax.random.key(1), y.shape)
  np.testing.assert_allclose(got_vjp(ct)[0], ref_vjp(ct)[0], rtol=0, atol=1e-6)


def test_tiny_xception_jitted_gradients_same_with_either_max_pool(monkeypatch):
  # Under jit XLA may compute a pool's input twice with different rounding; the gradient must not
  # depend on finding the max again by comparison (it once dropped most of them).
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  grads = []
  for pool in (layers.max_pool, _xla_max_pool):
    monkeypatch.setattr(layers, "max_pool", pool)
    model = models.create("xception", 2, width=0.125, middle_blocks=1, dropout=0.0)
    g = nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x) ** 2)))(model, x)
    grads.append(jax.tree.leaves(nnx.to_pure_dict(g)))
  scale = max(float(np.abs(b).max()) for b in grads[1])
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale)


def test_tiny_xception_same_output_with_either_depthwise_impl():
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  a = models.create("xception", 2, width=0.125, middle_blocks=1, depthwise="shift")
  b = models.create("xception", 2, width=0.125, middle_blocks=1, depthwise="xla")
  a.eval()
  b.eval()
  fwd = nnx.jit(lambda m, x: m(x))
  np.testing.assert_allclose(fwd(a, x), fwd(b, x), rtol=1e-4, atol=1e-5)


def test_train_and_eval_modes():
  model = models.create("xception", 2, width=0.125, middle_blocks=1, dropout=0.5)
  x = jax.random.normal(jax.random.key(2), (4, 32, 32, 3)) * 3 + 1
  stats = lambda: [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]
  before = stats()
  fwd = nnx.jit(lambda m, x, key=None: m(x, rngs=key))
  model.train()
  y1 = fwd(model, x, jax.random.key(0))
  y2 = fwd(model, x, jax.random.key(1))
  assert not np.allclose(y1, y2)  # Dropout differs with the key.
  after = stats()
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))  # Running stats moved.
  # Train-mode BN normalises with the batch: an example's output depends on its batch-mates.
  y_half = fwd(model, x[:2], jax.random.key(0))
  assert not np.allclose(y_half, y1[:2], atol=1e-4)
  model.eval()
  frozen = stats()
  e1, e2 = fwd(model, x), fwd(model, x)
  np.testing.assert_array_equal(e1, e2)  # No dropout.
  np.testing.assert_allclose(fwd(model, x[:2]), e1[:2], rtol=1e-5, atol=1e-6)  # Per-example.
  assert all(np.array_equal(a, b) for a, b in zip(frozen, stats()))  # Stats untouched.


def test_preprocess_modes():
  px = jnp.array([[[[0, 127, 255]]]], jnp.uint8)
  np.testing.assert_allclose(models.preprocess(px, "minus_one_one")[0, 0, 0], [-1, 127 / 127.5 - 1, 1], atol=1e-6)
  np.testing.assert_allclose(models.preprocess(px, "unit")[0, 0, 0], [0, 127 / 255, 1], atol=1e-6)
  got = models.preprocess(px, "imagenet")[0, 0, 0]
  np.testing.assert_allclose(got[0], (0 - 0.485) / 0.229, rtol=1e-5)
  assert models.preprocess(px, "unit", jnp.bfloat16).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="known"):
    models.preprocess(px, "bogus")
