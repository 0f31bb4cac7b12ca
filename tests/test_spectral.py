"""The spectral detector (models.spectral, configs/spectral.py): its features against a reference
written here with scipy and numpy, and a trained run against scikit-learn fitted by hand on those
reference features."""

import re

from flax import nnx
import jax
import numpy as np
import pytest
from scipy import ndimage
from sklearn.linear_model import LogisticRegression

from fakejax import cli
from fakejax import defaults
from fakejax import explain
from fakejax import metrics as metrics_lib
from fakejax import models
from fakejax import runs
from tests.conftest import train_records
from fakejax import scoring
from fakejax import training
from fakejax.models import spectral


def reference_log_spectrum(img, size):
  """The features by their definition, in float64: the centre crop's channel mean, minus its
  [1 2 1] x [1 2 1] / 16 blur with mirrored borders, 20 log10 |orthonormal FFT|, DC centred."""
  h, w = img.shape[:2]
  y, x = (h - size) // 2, (w - size) // 2
  gray = img[y:y + size, x:x + size].astype(np.float64).mean(-1)
  blur = ndimage.convolve(gray, np.outer([1, 2, 1], [1, 2, 1]) / 16.0, mode="mirror")
  f = np.fft.fftshift(np.fft.fft2(gray - blur) / size)
  return 20 * np.log10(np.abs(f) + 1e-6)


def test_highpass_removes_a_smooth_image_and_keeps_a_checkerboard():
  yy, xx = np.mgrid[0:16, 0:16].astype(np.float32)
  smooth = 3 * yy + 2 * xx  # Linear: the binomial blur reproduces it (inside the border).
  np.testing.assert_allclose(spectral.highpass(smooth)[1:-1, 1:-1], 0, atol=1e-4)
  checker = np.where((yy + xx) % 2 == 0, 5.0, -5.0).astype(np.float32)  # Blur response 0 at (0.5, 0.5).
  np.testing.assert_allclose(spectral.highpass(checker), checker, atol=1e-4)


def test_log_spectrum_matches_its_definition():
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, size=(3, 40, 37, 3), dtype=np.uint8)
  want = np.stack([reference_log_spectrum(im, 32) for im in imgs])
  got = np.asarray(spectral.log_spectrum(spectral.residual(imgs.astype(np.float32), 32)))
  assert got.shape == (3, 32, 32)
  np.testing.assert_allclose(got, want, atol=2e-3)  # dB; float32 against float64.
  np.testing.assert_allclose(explain.log_spectrum(imgs[0], 32), want[0], atol=2e-3)
  with pytest.raises(cli.UserError, match="spectrum_size"):
    spectral.residual(imgs[:, :30].astype(np.float32), 32)


def _spectral_config(make_config, **kw):
  c = defaults.from_file("configs/spectral.py")
  small = make_config()
  c.data = small.data
  c.data.image_size = c.model.spectrum_size = 32
  c.probe.max_records = 40
  for k, v in kw.items():
    node, *path = [c] + k.split(".")
    for p in path[:-1]:
      node = node[p]
    node[path[-1]] = v
  return c


def test_a_spectral_run_is_scikit_learn_on_the_features(make_config, tmp_path):
  """Trained through the cached-feature probe, the run (as evaluate loads it) scores the val
  records as scikit-learn's LogisticRegression fitted here on the reference features of the
  same seeded draw of training records."""
  c = _spectral_config(make_config)
  training.train_and_evaluate(c, str(tmp_path / "run"))
  data = training.open_data(c)
  ds = data.dataset
  tr = np.random.default_rng(c.data.seed).permutation(train_records(ds, c.data))[:40]
  feats = lambda split, idx: np.stack([reference_log_spectrum(ds.decode(ds.source(split)[int(i)]), 32).ravel()
                                       for i in idx])
  x = feats("train", tr)
  mu, sd = x.mean(0), x.std(0) + 1e-6
  clf = LogisticRegression(max_iter=2000, C=0.1).fit((x - mu) / sd, ds.index("train")["label"][tr])
  want = clf.predict_proba((feats(data.val_split, data.val_idx) - mu) / sd)[:, 1]

  run = runs.Run(str(tmp_path / "run"))
  view = scoring.View("full", crop=32)
  src = ds.source(data.val_split)
  imgs = np.stack([view.cut(ds.decode(src[int(i)]), int(i))[0][0] for i in data.val_idx])
  got = np.asarray(jax.nn.softmax(np.asarray(run.forward(run.inference_state, imgs)), -1))[:, 1]
  assert len(set(ds.index("train")["label"][tr])) == 2 and 0.05 < want.mean() < 0.95
  np.testing.assert_allclose(got, want, atol=2e-3)
  labels = ds.index(data.val_split)["label"][data.val_idx]
  assert abs(metrics_lib.binary(labels, got)["ap"] - metrics_lib.binary(labels, want)["ap"]) < 0.01


def test_the_logistic_solver_needs_a_standardised_head(make_config, tmp_path):
  c = make_config(**{"model.name": "clip_vit_tiny", "model.transfer": "linear_probe",
                     "model.cached_features": True, "model.preprocess": "clip", "data.image_size": 64,
                     "data.too_small": "zero", "probe.solver": "logistic", "total_steps": 0})
  with pytest.raises(cli.UserError, match="standardised linear head"):
    training.train_and_evaluate(c, str(tmp_path / "run"))


def test_the_inference_forward_exports_for_cuda():
  """The GPU graph of a spectral run's scoring forward: XLA's FFT, no host callback or CPU kernel."""
  c = defaults.from_file("configs/spectral.py")
  c.model.spectrum_size = c.data.image_size = 32
  fold = scoring.Folder(*_graph_and_preprocess(c))
  forward, state = fold(nnx.state(models.from_config(c.model, 2)))
  images = jax.ShapeDtypeStruct((4, 40, 40, 3), np.uint8)
  text = jax.export.export(forward, platforms=["cuda"])(state, images).mlir_module()
  assert "stablehlo.fft" in text
  assert "custom_call" not in text and not re.search(r"\b(callback|outfeed|infeed)\b", text)


def _graph_and_preprocess(c):
  model = nnx.eval_shape(lambda: models.from_config(c.model, 2))
  return nnx.graphdef(model), models.resolve_preprocess("spectral", c.model.preprocess), "float32"
