"""Evaluation: decision rules by hand, metrics against scikit-learn, reports, predict."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from sklearn import metrics as skm

from fakejax import inference
from fakejax import metrics
from tests import test_datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _logits(p_fake):
  """Binary logits whose softmax gives p_fake."""
  p = np.asarray(p_fake, np.float64)
  return np.stack([np.zeros_like(p), np.log(p / (1 - p))], -1)


def test_vote_majority_and_tie_counts_as_fake():
  assert inference.decide("grid", _logits([0.9, 0.8, 0.1])) == (2 / 3, 1)
  assert inference.decide("grid", _logits([0.9, 0.2, 0.1])) == (1 / 3, 0)
  assert inference.decide("grid", _logits([0.9, 0.7, 0.2, 0.1])) == (0.5, 1)  # 2-2 tie -> fake.
  score, pred = inference.decide("grid", _logits([0.6, 0.6, 0.2]), threshold=0.7)
  assert (score, pred) == (0.0, 0)  # The threshold applies per patch.


def test_confident_vote_and_its_fallback():
  # |p_fake - p_real| = |2p - 1|: 0.95 -> 0.9, 0.4 -> 0.2, 0.45 -> 0.1, 0.3 -> 0.4.
  lg = _logits([0.95, 0.4, 0.45, 0.3])
  assert inference.decide("confident", lg, theta=0.5) == (1.0, 1)  # Only the 0.95 patch votes.
  assert inference.decide("confident", lg, theta=0.3) == (0.5, 1)  # 0.95 and 0.3: tie -> fake.
  # No patch passes theta = 0.95: everyone votes (1 fake of 4).
  assert inference.decide("confident", lg, theta=0.95) == (0.25, 0)


def test_mean_logit_differs_from_mean_prob():
  lg = _logits([0.99, 0.3, 0.3])
  s_prob, d_prob = inference.decide("mean_prob", lg)
  s_logit, d_logit = inference.decide("mean_logit", lg)
  assert s_prob == pytest.approx((0.99 + 0.3 + 0.3) / 3)
  mean_logit = (np.log(0.99 / 0.01) + 2 * np.log(0.3 / 0.7)) / 3
  assert s_logit == pytest.approx(1 / (1 + np.exp(-mean_logit)))
  assert (d_prob, d_logit) == (1, 1) and s_logit != pytest.approx(s_prob)
  assert inference.decide("full", _logits([0.2])) == (pytest.approx(0.2), 0)


def test_attribution_vote():
  lg = np.log(np.array([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]]))
  score, pred = inference.decide("grid", lg)
  assert pred == 1 and score == pytest.approx(1.0)  # No patch voted 'real' (class 0).


def test_random_mode_needs_odd_k_and_is_seeded():
  img = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
  with pytest.raises(ValueError, match="odd"):
    inference.View("random", 16, k=4)
  a, _ = inference.random_patches(img, 16, 5, seed=1)
  b, _ = inference.random_patches(img, 16, 5, seed=1)
  assert a.shape == (5, 16, 16, 3) and np.array_equal(a, b)


def test_grid_patches_when_the_size_does_not_divide():
  img = np.arange(70 * 70 * 3, dtype=np.uint32).reshape(70, 70, 3).astype(np.uint8)
  patches, grid = inference.grid_patches(img, 32)
  assert grid == (2, 2) and patches.shape == (4, 32, 32, 3)  # The 6-pixel remainder is left out.
  np.testing.assert_array_equal(patches[1], img[0:32, 32:64])
  np.testing.assert_array_equal(patches[2], img[32:64, 0:32])
  with pytest.raises(inference.augment.TooSmall):
    inference.grid_patches(img[:20], 32)
  with pytest.raises(ValueError, match="16, 32, 64 or 128"):
    inference.View("grid", 24)


def test_binary_metrics_against_sklearn_and_by_hand():
  labels = np.array([0, 0, 1, 1, 1, 0, 1, 0])
  scores = np.array([0.1, 0.6, 0.7, 0.4, 0.9, 0.3, 0.5, 0.2])
  m = metrics.binary(labels, scores)
  assert m["ap"] == pytest.approx(skm.average_precision_score(labels, scores))
  assert m["auc"] == pytest.approx(skm.roc_auc_score(labels, scores))
  # By hand: fakes scored above reals in 14 of 16 pairs; at 0.5, 3/4 reals and 3/4 fakes right.
  assert m["auc"] == pytest.approx(14 / 16)
  assert (m["accuracy"], m["real_acc"], m["fake_acc"]) == (0.75, 0.75, 0.75)
  assert (m["n_real"], m["n_fake"]) == (4, 4)
  assert 0 < m["eer"] < 0.5
  perfect = metrics.binary([0, 1], [0.2, 0.8])
  assert perfect["eer"] == 0.0 and perfect["ap"] == 1.0
  assert np.isnan(metrics.binary([1, 1], [0.2, 0.8])["auc"])  # One class only: undefined.


def test_evaluate_counts_every_image_once(tiny_run, tiny_synthetic):
  from fakejax import evaluate  # pylint: disable=g-import-not-at-top
  run = inference.Run(tiny_run)
  idx = tiny_synthetic.select("test", sources=("tconv",))[:13]  # Prime: no whole batches.
  for view in (inference.View("full"), inference.View("grid", 16)):
    row, res, labels = evaluate.evaluate_set(run, view, tiny_synthetic, "test", idx, 0.5, 0.0)
    assert len(res) == 13 and row["n_real"] + row["n_fake"] == 13
    assert row["n_fake"] == int(labels.sum())
    scores = np.array([r["score"] for r in res])
    assert row["auc"] == pytest.approx(skm.roc_auc_score(labels, scores))
    assert row["n_patches"] == 13 * (1 if view.mode == "full" else 4)  # 32 px -> 2x2 patches.
  # The batched forward gives the same logits as one image at a time.
  full = [r["patch_logits"] for r in evaluate.evaluate_set(run, inference.View("full"), tiny_synthetic,
                                                           "test", idx, 0.5, 0.0)[1]]
  src = tiny_synthetic.source("test")
  one = run.logits(inference.datasets.decode_png(src[int(idx[4])]["image"])[None])
  np.testing.assert_allclose(one, full[4], rtol=1e-5, atol=1e-5)


def _env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")


def test_evaluate_cli_writes_reports(tiny_run, tmp_path):
  out = tmp_path / "rep"
  r = subprocess.run([sys.executable, "-m", "fakejax.evaluate", "--workdir", tiny_run, "--mode",
                      "grid", "--patch_size", "16", "--out", str(out)], cwd=ROOT, env=_env(),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  rep = json.load(open(out / "report.json"))
  names = [row["test_set"] for row in rep["rows"]]
  assert names == ["bilinear_conv", "nn_conv", "pixel_shuffle", "tconv"]
  assert all(row["n_real"] == 9 and row["n_fake"] == 9 for row in rep["rows"])
  assert rep["info"]["training_indicators"]["n_evals"] == 1
  rows = list(csv.DictReader(open(out / "report.csv")))
  assert [row["test_set"] for row in rows] == names
  assert "| tconv |" in open(out / "report.md").read() and "| tconv |" in r.stdout
  for png in ("matrix.png", "roc.png", "patches_most_confident.png", "patches_least_confident.png"):
    with Image.open(out / png) as im:
      assert im.size[0] > 200 and im.size[1] > 150


def test_predict_folder_with_bad_files(tiny_run, tiny_synthetic, tmp_path):
  folder = tmp_path / "mixed"
  corpus = test_datasets._bad_corpus(str(folder))  # pylint: disable=protected-access
  src = tiny_synthetic.source("test")
  for i in range(3):
    img = inference.datasets.decode_png(src[i]["image"])
    Image.fromarray(img).save(folder / f"synthetic_{i}.png")
  Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(folder / "big.png")  # Any size works.
  os.remove(folder / "notes.txt")
  out_csv, sorted_dir = tmp_path / "p.csv", tmp_path / "sorted"
  r = subprocess.run([sys.executable, "-m", "fakejax.predict", "--workdir", tiny_run, str(folder),
                      "--out", str(out_csv), "--sort_into", str(sorted_dir)], cwd=ROOT, env=_env(),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = {os.path.basename(row["path"]): row for row in csv.DictReader(open(out_csv))}
  assert len(rows) == len(os.listdir(folder))
  corpus["one.png"] = None  # 1x1 decodes (predict has no minimum size) but is smaller than the crop.
  for name, reason in corpus.items():
    # The corpus' decodable images are 16x16, smaller than the run's 32x32 view: also an error.
    assert (reason or "smaller than the 32x32") in rows[name]["error"], (name, rows[name])
  bad = {k for k, row in rows.items() if row["error"]}
  assert bad == set(corpus)
  for k, row in rows.items():
    if not row["error"]:
      assert 0 <= float(row["p_fake"]) <= 1 and row["label"] in ("real", "fake")
      assert row["mode"] == "full" and row["n_patches"] == "1"
  n_sorted = sum(len(fs) for _, _, fs in os.walk(sorted_dir))
  assert n_sorted == len(rows) - len(bad)
  # Nothing scorable: non-zero exit, and the CSV still lists the errors.
  only_bad = tmp_path / "only_bad"
  os.makedirs(only_bad)
  shutil.copy(folder / "zero.png", only_bad)
  r = subprocess.run([sys.executable, "-m", "fakejax.predict", "--workdir", tiny_run, str(only_bad),
                      "--out", str(tmp_path / "q.csv")], cwd=ROOT, env=_env(), capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 1
  assert "empty file" in open(tmp_path / "q.csv").read()
