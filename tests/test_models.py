"""Architectures: exact sizes, layer names and shapes, taps, modes, preprocessing."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import TINY_MODELS
from tests.conftest import tiny_model
from fakejax import models


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
  logits = _abstract_forward(model, (2, size, size, 3))
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  features = models.layer_shapes(model, size, batch=2)[-1][1]  # The map that is pooled.
  assert features[0] == 2 and features[-1] == model.num_features
  if size == 299:  # Keras Xception / MobileNetV2 and torchvision ResNet-50 at 299: 10x10.
    assert features[1:3] == (10, 10)


_XCEPTION_299 = [  # keras.applications.Xception's activations at 299 px, by the PyTorch names.
    ("conv1", (149, 149, 32)), ("conv2", (147, 147, 64)), ("block1", (74, 74, 128)),
    ("block2", (37, 37, 256)), ("block3", (19, 19, 728)),
    *((f"block{i}", (19, 19, 728)) for i in range(4, 12)),
    ("block12", (10, 10, 1024)), ("conv3", (10, 10, 1536)), ("conv4", (10, 10, 2048))]
_RESNET50_224 = [  # torchvision resnet50's module outputs at 224 px.
    ("stem", (112, 112, 64)), ("maxpool", (56, 56, 64)),
    *((f"layer1.{j}", (56, 56, 256)) for j in range(3)), ("layer1", (56, 56, 256)),
    *((f"layer2.{j}", (28, 28, 512)) for j in range(4)), ("layer2", (28, 28, 512)),
    *((f"layer3.{j}", (14, 14, 1024)) for j in range(6)), ("layer3", (14, 14, 1024)),
    *((f"layer4.{j}", (7, 7, 2048)) for j in range(3)), ("layer4", (7, 7, 2048))]
_MOBILENET_V2_224 = [  # keras.applications.MobileNetV2: stem, 17 inverted residuals, Conv_1.
    ("stem", (112, 112, 32)),
    *((f"block{i}", s) for i, s in enumerate(
        [(112, 112, 16)] + [(56, 56, 24)] * 2 + [(28, 28, 32)] * 3 + [(14, 14, 64)] * 4
        + [(14, 14, 96)] * 3 + [(7, 7, 160)] * 3 + [(7, 7, 320)])),
    ("last", (7, 7, 1280))]
_DEEPFD_224 = [  # The paper's Table I: 7x7 stride 4, then 96, 128, 256 channels; D2's 2-map conv.
    ("d1.stem", (56, 56, 96)), ("d1.block0", (56, 56, 96)), ("d1.block1", (56, 56, 96)),
    ("d1.block2", (28, 28, 128)), ("d1.block3", (28, 28, 128)), ("d1.block4", (14, 14, 256)),
    ("d1.block5", (14, 14, 256)), ("d2.conv", (14, 14, 2))]


@pytest.mark.parametrize("name,size,expected,cam", [
    ("xception", 299, _XCEPTION_299, "block12"), ("resnet50", 224, _RESNET50_224, "layer4"),
    ("mobilenet_v2", 224, _MOBILENET_V2_224, "last"), ("deepfd", 224, _DEEPFD_224, "d1.block5")])
def test_layer_names_and_shapes(name, size, expected, cam):
  model = nnx.eval_shape(lambda: models.create(name, 2))
  got = models.layer_shapes(model, size, batch=3)
  assert got == [(n, (3, *s)) for n, s in expected]
  assert models.layer_names(model) == tuple(n for n, _ in expected)
  assert type(model).CAM_LAYER == cam


def test_layer_names_follow_the_depth():
  xception = nnx.eval_shape(lambda: models.create("xception", 2, middle_blocks=2))
  assert models.layer_names(xception) == ("conv1", "conv2", "block1", "block2", "block3", "block4",
                                          "block5", "block12", "conv3", "conv4")
  resnet101 = models.layer_names(nnx.eval_shape(lambda: models.create("resnet101", 2)))
  assert resnet101[resnet101.index("layer3.0"):resnet101.index("layer4.0")] == (
      *(f"layer3.{j}" for j in range(23)), "layer3")
  with pytest.raises(ValueError, match="middle_blocks"):
    models.create("xception", 2, middle_blocks=9)  # block12 is the exit block's name.


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_taps_see_every_layer_and_steer_the_forward(name):
  model = tiny_model(name)
  model.eval()
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  shape = models.layer_shapes(model, 32, batch=2)[-1][1]  # The map that is pooled.
  seen = []

  @nnx.jit  # One program: compiling it costs less than running these ops one by one.
  def run(model, x, eps):
    plain = model(x)
    same = model(x, taps=lambda n, a: seen.append(n) or a)
    last = seen[-1]
    # What a tap returns goes on: the gradient of a logit with respect to a zero perturbation of
    # the pooled map is head_kernel[:, c] / (H * W) at every position (average pool, then linear).
    logit = lambda eps: model(x, taps=lambda n, a: a + eps if n == last else a)[:, 1].sum()
    return plain, same, jax.grad(logit)(eps)

  plain, same, g = run(model, x, jnp.zeros(shape))
  np.testing.assert_array_equal(same, plain)
  assert tuple(seen) == models.layer_names(model)
  head = model.d2.head if name == "deepfd" else model.head
  want = np.broadcast_to(np.asarray(head.kernel[...])[:, 1] / (shape[1] * shape[2]), shape)
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)


def test_unknown_model_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"Unknown model 'vgg'; known: ") as e:
    models.create("vgg", 2)
  known = str(e.value).split("known: ")[1].split(", ")
  assert known == sorted(models.MODELS) and {"deepfd", "resnet50_nodown", "dinov2_vit_l14", "xception"} <= set(known)


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
