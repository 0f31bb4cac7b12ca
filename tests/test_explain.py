"""Explain: Grad-CAM against CAM computed from the dense weights, up-sampling against a numpy
bilinear resize, the maps of a hand-set detector on its fake content, layer tables against the
published shapes, batching, the command's PNGs, and the spectra of the synthetic families
against peaks computed from their kernels."""

import dataclasses
import json
import os
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from tests.conftest import subprocess_env
from fakejax import cli
from fakejax import runs
from fakejax import scoring
from fakejax import explain
from fakejax import models
from fakejax import synthetic
from fakejax.models import layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TinyCNN(nnx.Module):
  """Three convolutions, global average pooling, one dense layer: the head CAM needs."""

  CAM_LAYER = "conv3"

  def __init__(self, rngs):
    self.conv1 = nnx.Conv(3, 16, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 16, (3, 3), strides=2, rngs=rngs)
    self.conv3 = nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs)
    self.head = nnx.Linear(32, 2, rngs=rngs)

  def layer_names(self):
    return ("conv1", "conv2", "conv3")

  def __call__(self, x, *, rngs=None, taps=None, valid=None):
    tap = layers.tapper(taps)
    x = tap("conv1", nnx.relu(self.conv1(x)))
    x = tap("conv2", nnx.relu(self.conv2(x)))
    x = tap("conv3", nnx.relu(self.conv3(x)))
    return self.head(x.mean((1, 2)))


def _activation(graphdef, state, x, layer):
  """(the layer's activation, the logits) of a plain forward pass."""
  def forward(state, x):
    seen = {}
    logits = nnx.merge(graphdef, state)(x, taps=lambda name, a: seen.setdefault(name, a))
    return seen[layer], logits
  act, logits = jax.jit(forward)(state, x)
  return np.asarray(act, np.float64), np.asarray(logits)


def _cam(activation, kernel, classes):
  """CAM (Zhou et al. 2016): sum_k w_k^c A_k with the dense layer's weights, ReLU'd."""
  return np.maximum(np.einsum("nhwk,kn->nhw", activation, np.asarray(kernel, np.float64)[:, classes]), 0)


# ---------------------------------------------------------------------------
# Grad-CAM = CAM for a global-average-pooling + dense head.
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xception_maps(tiny_run):
  """The tiny run's Xception at its last layer (conv4 -> GAP -> dense), 11 whole 128 px images
  through the evaluator: two batches of 8 on the 8-device mesh, the second padded."""
  run = runs.Run(tiny_run)
  fwd = explain.gradcam_forward(dataclasses.replace(run.spec, dtype="float32"), "conv4")
  imgs = np.random.default_rng(0).integers(0, 256, (11, 128, 128, 3), dtype=np.uint8)
  ev = scoring.Evaluator(lambda x: fwd(run.state, x), run.mesh, 8, 128)
  res = ev.run([(128, 128)] * 11, lambda i: imgs[i], run.view("whole"))
  return run, fwd, imgs, res, fwd._cache_size()  # pylint: disable=protected-access


def _bilinear(maps, size):
  """numpy bilinear resize of (B, h, w) maps to (B, size, size), half-pixel centres, edges
  clamped: out = R_y @ map @ R_x^T, each row of R two weights (1 - f, f) at floor(x), floor(x) + 1."""
  def rows(n_in, n_out):
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(x).astype(int)
    r = np.zeros((n_out, n_in))
    np.add.at(r, (np.arange(n_out), i0), 1 - (x - i0))
    np.add.at(r, (np.arange(n_out), np.minimum(i0 + 1, n_in - 1)), x - i0)
    return r
  maps = np.asarray(maps, np.float64)
  return np.einsum("Yh,bhw,Xw->bYX", rows(maps.shape[1], size), maps, rows(maps.shape[2], size))


def test_upsample_is_bilinear_with_half_pixel_centres_scaled_to_one():
  """By hand: one hot cell at the top right of a 2 x 2 map; 4 output pixels sample the map at
  -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1), i.e. columns weigh (0, 1/4, 3/4, 1)
  and rows (1, 3/4, 1/4, 0)."""
  maps = np.array([[[0, 1], [0, 0]], [[0, 3], [0, 0]], [[0, 0], [0, 0]]], np.float32)
  want = np.outer([1, 0.75, 0.25, 0], [0, 0.25, 0.75, 1])
  got = np.asarray(explain.upsample(maps, (4, 4)))
  np.testing.assert_allclose(got[0], want, atol=1e-7)
  np.testing.assert_allclose(got[1], want, atol=1e-7)  # Scaled to a maximum of 1.
  np.testing.assert_array_equal(got[2], 0)  # An all-zero map stays zero (no 0 / 0).
  np.testing.assert_allclose(_bilinear(maps[:1], 4)[0], want, atol=1e-12)  # The reference too.


def test_gradcam_at_the_last_block_is_cam(xception_maps):
  """Grad-CAM's channel weights are the dense weights / (h w) when a GAP and one dense layer
  follow the layer: the map is ReLU(CAM) / (h w) (Selvaraju et al., section 3.1), and the
  image-size map is its bilinear up-sampling scaled to a maximum of 1. Both identities hold for
  any weights (the tiny run's), so they are checked to float precision."""
  run, _, imgs, res, _ = xception_maps
  model = nnx.merge(run.model_def, run.state)
  act, logits = _activation(run.model_def, run.state, models.preprocess(imgs, run.preprocess), "conv4")
  assert act.shape[1:3] == (4, 4)
  target = np.array([int(r.outputs["target"][0]) for r in res])
  margin = logits[:, 1] - logits[:, 0]  # p_fake >= 0.5: the verdict, wherever it is not a tie.
  clear = np.abs(margin) > 1e-5
  assert clear.any() and (target[clear] == (margin[clear] >= 0)).all()
  want = _cam(act, model.head.kernel[...], target) / 16
  got = np.stack([r.outputs["cam_layer"][0] for r in res])
  assert want.max() > 0 and (want == 0).any()  # Both signs: the ReLU matters.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * want.max())
  # The up-sampled map of the same layer map (a transposed or flipped one differs).
  up = _bilinear(got, 128)
  peak = up.max((1, 2), keepdims=True)
  up = np.where(peak > 0, up / np.where(peak > 0, peak, 1), 0)
  cam = np.stack([r.outputs["cam"][0] for r in res])
  assert cam.shape == (11, 128, 128)
  np.testing.assert_allclose(cam, up, rtol=0, atol=1e-5)


def test_gradcam_of_each_class_is_cam_of_that_class():
  """An explicit class: each class's map is the CAM of that class's dense weights."""
  model = TinyCNN(nnx.Rngs(3))
  graphdef, state = nnx.split(model)
  x = models.preprocess(np.random.default_rng(1).integers(0, 256, (4, 24, 24, 3), dtype=np.uint8), "unit")
  act, _ = _activation(graphdef, state, x, "conv3")  # (4, 6, 6, 32)
  both = jax.jit(lambda state, x: [explain.gradcam(nnx.merge(graphdef, state), x, "conv3", c) for c in (0, 1)])
  for c, (_, maps, cls) in enumerate(both(state, x)):
    want = _cam(act, model.head.kernel[...], [c] * 4) / 36
    assert want.max() > 0 and (want == 0).any()
    np.testing.assert_allclose(maps, want, rtol=1e-4, atol=1e-6 * want.max())
    assert (np.asarray(cls) == c).all()


class SingleLogitCNN(TinyCNN):
  """TinyCNN with a one-logit head z (NPR, CNNDetection, UnivFD), scored as the logits [0, z]."""

  def __init__(self, rngs):
    super().__init__(rngs)
    self.head = nnx.Linear(32, 1, rngs=rngs)
    self.single_logit = True

  def __call__(self, x, *, rngs=None, taps=None, valid=None):
    z = super().__call__(x, taps=taps)
    return jnp.concatenate([jnp.zeros_like(z), z], -1)


def test_a_single_logit_head_maps_z_for_fake_and_minus_z_for_real():
  """Logits [0, z]: the 'fake' map is the CAM of z's weights, the 'real' map the CAM of -z's
  (the constant 0 has no gradient: a one-hot cotangent would leave 'real' empty)."""
  model = SingleLogitCNN(nnx.Rngs(4))
  graphdef, state = nnx.split(model)
  x = models.preprocess(np.random.default_rng(2).integers(0, 256, (4, 24, 24, 3), dtype=np.uint8), "unit")
  act, _ = _activation(graphdef, state, x, "conv3")
  both = jax.jit(lambda state, x: [explain.gradcam(nnx.merge(graphdef, state), x, "conv3", c) for c in (0, 1)])
  w = np.asarray(model.head.kernel[...])
  for c, (_, maps, _) in enumerate(both(state, x)):
    want = _cam(act, w if c == 1 else -w, [0] * 4) / 36
    assert want.max() > 0
    np.testing.assert_allclose(maps, want, rtol=1e-4, atol=1e-6 * want.max())


def test_a_batch_gives_the_maps_of_one_image_at_a_time(xception_maps):
  """Maps do not depend on what shares the batch; one compiled function per batch shape."""
  run, fwd, imgs, res, cache_after_batches = xception_maps
  assert cache_after_batches == 1  # Two batches of the same shape, one compilation.
  for i in (0, 5, 10):  # 10 shared its batch with padding.
    alone = jax.device_get(fwd(run.state, imgs[i:i + 1]))
    for key in ("logits", "target", "cam_layer", "cam"):
      np.testing.assert_allclose(alone[key][0], res[i].outputs[key][0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Behaviour: a detector that responds to one quadrant's artefact looks there.
# ---------------------------------------------------------------------------
class CheckerDetector(nnx.Module):
  """Hand-set: a 2 x 2 checkerboard filter and its negative over the three colours, ReLU, global
  average pooling, and a head that says 'fake' in proportion to the response. On black it
  responds nowhere (zero padding is black too); on a checkerboard, at every pixel."""

  def __init__(self):
    self.conv = nnx.Conv(3, 2, (2, 2), rngs=nnx.Rngs(0))
    k = np.array([[1.0, -1.0], [-1.0, 1.0]])
    self.conv.kernel[...] = jnp.asarray(np.stack([k, -k], -1)[:, :, None, :].repeat(3, 2) / 3)
    self.conv.bias[...] = jnp.zeros(2)
    self.head = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    self.head.kernel[...] = jnp.array([[-1.0, 1.0], [-1.0, 1.0]])
    self.head.bias[...] = jnp.array([0.01, 0.0])  # No response at all: real.

  def layer_names(self):
    return ("det",)

  def __call__(self, x, *, rngs=None, taps=None, valid=None):
    x = layers.tapper(taps)("det", nnx.relu(self.conv(x)))
    return self.head(x.mean((1, 2)))


def _quadrant_images(n, size=32):
  """Black images; fake i carries a 0/64 checkerboard in quadrant i % 4 (0 top left, 1 top right,
  2 bottom left, 3 bottom right), so a transposed map (1 <-> 2) or a flipped one lands elsewhere."""
  img = np.zeros((n, size, size, 3), np.uint8)
  labels, quadrant = np.arange(n) % 2, (np.arange(n) // 2) % 4
  h = size // 2
  checker = np.where(np.add.outer(np.arange(h), np.arange(h)) % 2 == 0, 64, 0)[..., None]
  for i in np.flatnonzero(labels):
    qy, qx = divmod(quadrant[i], 2)
    img[i, qy * h:(qy + 1) * h, qx * h:(qx + 1) * h] = checker
  return img, labels, quadrant


def test_maps_of_a_detector_fall_on_the_fake_quadrant():
  """Exact by construction: the filter's response, hence the map of 'fake', is non-zero where
  its 2 x 2 window (the pixel, its right and lower neighbours) meets the checkerboard: inside the
  quadrant, and the row above and column left of it; zero everywhere else. 'Real' weighs
  the response negatively: its map is zero everywhere."""
  graphdef, state = nnx.split(CheckerDetector())
  x, y, quadrant = _quadrant_images(16)
  out = jax.device_get(explain.gradcam_forward(runs.ModelSpec(graphdef, None, "unit", "float32"), "det")(state, x))
  np.testing.assert_array_equal(out["target"], y)
  for i in np.flatnonzero(y):
    qy, qx = divmod(quadrant[i], 2)
    inside = np.zeros((32, 32), bool)
    inside[qy * 16:(qy + 1) * 16 - 1, qx * 16:(qx + 1) * 16 - 1] = True  # Windows on the checkerboard.
    reach = np.zeros((32, 32), bool)
    reach[max(qy * 16 - 1, 0):(qy + 1) * 16, max(qx * 16 - 1, 0):(qx + 1) * 16] = True
    cam = out["cam"][i]
    assert (cam[inside] > 0).all() and (cam[~reach] == 0).all(), (i, quadrant[i])
  for i in np.flatnonzero(y == 0):  # Black: no response, no map.
    assert (out["cam"][i] == 0).all()
  real = jax.device_get(explain.gradcam_forward(runs.ModelSpec(graphdef, None, "unit", "float32"), "det", target=0)(state, x))
  assert (real["cam"] == 0).all() and (real["target"] == 0).all()


# ---------------------------------------------------------------------------
# Layer tables.
# ---------------------------------------------------------------------------
# The published architectures' shapes (Keras' Xception and MobileNetV2 summaries, torchvision's
# ResNets, BiT's ResNet-v2, DeepFD's Table I: stride 4, then two stride-2 stages).
PUBLISHED = {
    # CLIP's ViT-L/14: 16x16 patch tokens of width 1024 (patch 14 at 224).
    ("clip_vit_l14", 224): {"patch_embed": (16, 16, 1024), "blocks.0": (16, 16, 1024), "blocks.23": (16, 16, 1024)},
    ("xception", 299): {"conv1": (149, 149, 32), "conv2": (147, 147, 64), "block1": (74, 74, 128),
                        "block2": (37, 37, 256), "block3": (19, 19, 728), "block11": (19, 19, 728),
                        "block12": (10, 10, 1024), "conv3": (10, 10, 1536), "conv4": (10, 10, 2048)},
    ("resnet50", 224): {"stem": (112, 112, 64), "maxpool": (56, 56, 64), "layer1": (56, 56, 256),
                        "layer2.3": (28, 28, 512), "layer3": (14, 14, 1024), "layer4": (7, 7, 2048)},
    ("resnet101", 224): {"layer3.22": (14, 14, 1024), "layer4": (7, 7, 2048)},
    ("mobilenet_v2", 224): {"stem": (112, 112, 32), "block0": (112, 112, 16), "block16": (7, 7, 320),
                            "last": (7, 7, 1280)},
    ("deepfd", 256): {"d1.stem": (64, 64, 96), "d1.block3": (32, 32, 128), "d1.block5": (16, 16, 256),
                      "d2.conv": (16, 16, 2)},
    ("bit_resnet50", 224): {"root": (56, 56, 64), "block1": (56, 56, 256), "block4": (7, 7, 2048)},
}
DEFAULT_LAYER = {"xception": "block12", "resnet50": "layer4", "resnet101": "layer4",
                 "mobilenet_v2": "last", "deepfd": "d1.block5", "bit_resnet50": "block4",
                 "clip_vit_l14": "blocks.22"}  # The last block's input: its own tokens reach nothing.


@pytest.mark.parametrize("name,size", sorted(PUBLISHED))
def test_list_layers_of_every_model(name, size):
  model = nnx.eval_shape(lambda: models.create(name, 2))
  table = explain.layer_table(model, size).splitlines()
  rows = {line.split()[0]: line.split()[1] for line in table[1:]}
  assert list(rows) == list(models.layer_names(model))  # Every layer, in forward order.
  for layer, shape in PUBLISHED[(name, size)].items():
    assert rows[layer] == "x".join(map(str, shape)), (layer, rows[layer])
  assert [line.split()[0] for line in table if "default" in line] == [DEFAULT_LAYER[name]]
  assert explain.resolve_layer(model) == DEFAULT_LAYER[name]
  with pytest.raises(cli.UserError, match="known: "):
    explain.resolve_layer(model, "no_such_layer")


# ---------------------------------------------------------------------------
# Spectra of the synthetic families.
# ---------------------------------------------------------------------------
def _period2_ratios(phase_sums):
  """|period-2 pattern| / mean of an up-sampler's output for a constant input, along y, x and
  the diagonal, from the sums S[a, b] of its weights reaching output phase (a, b): a flat input c
  comes out as c S[a, b] at phase (a, b), i.e. a mean c sum(S)/4 plus stripes and a checkerboard."""
  s = np.asarray(phase_sums, np.float64)
  total = s.sum()
  return {"fy": abs(s[0].sum() - s[1].sum()) / total, "fx": abs(s[:, 0].sum() - s[:, 1].sum()) / total,
          "diag": abs(s[0, 0] - s[0, 1] - s[1, 0] + s[1, 1]) / total}


def _expected_nyquist_ratios():
  out = {}
  for name in synthetic.FAMILIES:
    fam = synthetic.Family(name, 0)
    if name == "tconv":  # Zero insertion then the 4x4 kernel: phase (a, b) gets k[a::2, b::2].
      s = [[fam.kernel[a::2, b::2].sum() for b in (0, 1)] for a in (0, 1)]
    elif name == "pixel_shuffle":  # One 3x3 low-resolution kernel per output phase.
      s = fam.kernels.sum((2, 3))
    else:  # Nearest or bilinear up-sampling gives every phase the same total weight (1), and a
      s = np.ones((2, 2))  # 'same' 3x3 convolution of a flat image stays flat: no pattern.
    out[name] = _period2_ratios(s)
  return out


def _dtft(kernel, fy, fx):
  i, j = np.arange(kernel.shape[0]), np.arange(kernel.shape[1])
  phase = np.exp(-2j * np.pi * (fy[..., None, None] * i[:, None] + fx[..., None, None] * j[None]))
  return np.abs((kernel * phase).sum((-2, -1)))


def test_spectra_of_the_synthetic_families_have_their_own_peaks(tiny_synthetic):
  spec, size = explain.class_spectra(tiny_synthetic, "train", per_class=64)
  assert size == 32 and {c: n for c, (_, n) in spec.items()} == {
      c: 24 for c in ("real",) + synthetic.FAMILIES}
  db = {c: s for c, (s, _) in spec.items()}
  # Centred spectra: row/column 0 is -0.5 cycles/pixel (the Nyquist frequency), index 16 is 0.
  at = {"fy": (0, 16), "fx": (16, 0), "diag": (0, 0)}
  ratios = _expected_nyquist_ratios()
  strong = []
  for fam, r in ratios.items():
    for where, ratio in r.items():
      above_real = db[fam][at[where]] - db["real"][at[where]]
      if ratio > 0.05:  # A pattern of >5% of the mean: far above the sensor noise of the reals.
        assert above_real > 20, (fam, where, ratio, above_real)
        strong.append((fam, where, ratio))
      elif ratio < 0.002:  # No pattern (nn, bilinear: none at all).
        assert above_real < 12, (fam, where, ratio, above_real)
  # tconv: stripes along y and x, hardly a checkerboard; pixel_shuffle: along y and diagonal.
  assert sorted(strong) == [("pixel_shuffle", "diag", pytest.approx(0.0797, abs=1e-3)),
                            ("pixel_shuffle", "fy", pytest.approx(0.1702, abs=1e-3)),
                            ("tconv", "fx", pytest.approx(0.0709, abs=1e-3)),
                            ("tconv", "fy", pytest.approx(0.1033, abs=1e-3))]
  # The same reals under every family: peak heights differ by the ratio of the patterns.
  for (f1, w1, r1), (f2, w2, r2) in [(a, b) for a in strong for b in strong if a < b]:
    measured = db[f1][at[w1]] - db[f2][at[w2]]
    assert measured == pytest.approx(20 * np.log10(r1 / r2), abs=2.0), (f1, w1, f2, w2)
  # nn_conv vs bilinear_conv, no peaks, differ in roll-off: the same low-resolution content
  # through |H_up K| of each, so their log difference follows that of the filters (up to a constant).
  f = np.fft.fftshift(np.fft.fftfreq(size))
  fy, fx = np.meshgrid(f, f, indexing="ij")
  up = {"nn_conv": np.ones((2, 2)), "bilinear_conv": np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 16}
  gain = {n: 20 * np.log10(_dtft(u, fy, fx) * _dtft(synthetic.Family(n, 0).kernel, fy, fx) + 1e-12)
          for n, u in up.items()}
  band = (np.hypot(fy, fx) > 0.1) & (np.hypot(fy, fx) < 0.3)
  want = (gain["nn_conv"] - gain["bilinear_conv"])[band]
  got = (db["nn_conv"] - db["bilinear_conv"])[band]
  want, got = want - want.mean(), got - got.mean()
  assert want.max() - want.min() > 8  # The filters differ enough for this to mean something.
  # No model here: seeded numpy images against their filters' gains (measured 0.95 and 1.0 dB;
  # the same on every machine, the images being pure numpy).
  assert np.corrcoef(want, got)[0, 1] > 0.85 and np.sqrt(np.mean((want - got) ** 2)) < 2.0


# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------
def _env():
  return subprocess_env()


def _explain(*args):
  r = subprocess.run([sys.executable, "-m", "fakejax.explain", *args], cwd=ROOT, env=_env(),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout


def _png_size(path):
  with Image.open(path) as im:
    return im.size


@pytest.mark.slow  # end to end: a real explain process over a dataset: make test-slow
def test_cli_dataset_maps_and_spectra(tiny_run, tiny_synthetic, tmp_path):
  out = tmp_path / "explain"
  _explain("--workdir", tiny_run, "--layer", "block1", "--class", "fake", "--dataset", tiny_synthetic.path,
           "--split", "test", "--per_class", "3", "--rows", "2", "--spectrum", "--out", str(out))
  classes = ("real",) + tuple(sorted(synthetic.FAMILIES))
  pngs = sorted(os.listdir(out))
  assert set(pngs) == {f"gradcam_{c}.png" for c in classes} | {
      "gradcam_mean.png", "spectra.png", "spectra_profile.png", "gradcam_mean.npz", "spectra.npz",
      "explain.json"}
  for c in classes:  # Two rows of image / map / overlay: 8.4 x (2 * 2.7 + 0.4) inches at 90 dpi.
    assert _png_size(out / f"gradcam_{c}.png") == (756, 522)
  w, h = _png_size(out / "gradcam_mean.png")  # 5 classes x 2 rows.
  assert w > 5 * 150 and h > 2 * 150
  w, h = _png_size(out / "spectra.png")
  assert w > 5 * 150 and h > 2 * 150
  info = json.load(open(out / "explain.json"))
  rows = info["gradcam"]["images"]
  assert info["gradcam"]["layer"] == "block1" and len(rows) == 15
  assert {r["name"].split(" #")[0] for r in rows} == set(classes)
  assert all(0 <= r["p_fake"] <= 1 and r["map_class"] == "fake" and r["pred"] in ("real", "fake")
             for r in rows)
  assert sum("png" in r for r in rows) == 10  # The first 2 of each class are drawn.
  assert info["spectra"]["n"] == {c: 9 for c in classes} and info["spectra"]["size"] == 32
  with np.load(out / "gradcam_mean.npz") as z:
    assert list(z["classes"]) == list(classes) and z["maps"].shape == (5, 32, 32)
    assert z["layer_maps"].shape == (5, 7, 7)  # block1 at 32 px.


def test_maps_of_image_files(xception_maps, tiny_synthetic, tmp_path):
  """What the command does with files (in-process: the command itself is tested above)."""
  run = xception_maps[0]
  src = tiny_synthetic.source("test")
  files = []
  for i in range(3):
    files.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(tiny_synthetic.decode(src[i])).save(files[-1])
  files.append(str(tmp_path / "broken.png"))
  open(files[-1], "wb").write(b"not an image")
  ev, layer = explain.gradcam_evaluator(run, "block1", explain.resolve_class(run.class_names, "fake"))
  rows = explain.explain_images(run, ev, layer, run.view("full"), files, str(tmp_path), per_png=8)
  assert sorted(f for f in os.listdir(tmp_path) if f.startswith("gradcam")) == ["gradcam_001.png"]
  assert _png_size(tmp_path / "gradcam_001.png") == (756, 765)  # 3 rows; the broken file left out.
  assert [os.path.basename(r["name"]) for r in rows] == ["0.png", "1.png", "2.png", "broken.png"]
  assert all(r["map_class"] == "fake" and r["png"] == "gradcam_001.png" for r in rows[:3])
  assert "not an image" in rows[3]["error"]
  with pytest.raises(cli.UserError, match="0=real, 1=fake"):
    explain.resolve_class(run.class_names, "gan")


def test_cli_list_layers(tiny_run):
  table = _explain("--workdir", tiny_run, "--list_layers")
  lines = {line.split()[0]: line for line in table.splitlines()[1:]}
  # Xception width 0.125 at 32 px: conv1 (3x3 stride 2, valid) 15, conv2 13, block1 (pool /2) 7.
  assert lines["conv1"].split()[1] == "15x15x4" and lines["block1"].split()[1] == "7x7x16"
  assert "default" in lines["block12"] and lines["block12"].split()[1] == "1x1x128"
