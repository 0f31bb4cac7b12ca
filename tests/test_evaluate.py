"""Evaluation: decision rules by hand, metrics against scikit-learn, the per-generator protocol,
whole images, test-time augmentation, reports, predict."""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from tests.conftest import bad_image_corpus
from tests.conftest import random_image
from tests.conftest import subprocess_env
from tests.conftest import write_png
from fakejax import augment
from fakejax import datasets
from fakejax import runs
from fakejax import scoring
from fakejax import metrics
from fakejax import models
from fakejax import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _logits(p_fake):
  """Binary logits whose softmax gives p_fake."""
  p = np.asarray(p_fake, np.float64)
  return np.stack([np.zeros_like(p), np.log(p / (1 - p))], -1)


def _verdict(rule, logits, threshold=0.5, theta=0.0):
  return scoring.verdict(scoring.decide(rule, logits, threshold, theta), rule, threshold)


def test_vote_majority_and_tie_counts_as_fake():
  assert _verdict("grid", _logits([0.9, 0.8, 0.1])) == (pytest.approx(2 / 3), 1)
  assert _verdict("grid", _logits([0.9, 0.2, 0.1])) == (pytest.approx(1 / 3), 0)
  assert _verdict("grid", _logits([0.9, 0.7, 0.2, 0.1])) == (0.5, 1)  # 2-2 tie -> fake.
  assert _verdict("grid", _logits([0.6, 0.6, 0.2]), threshold=0.7) == (0.0, 0)  # Per-patch threshold.


def test_confident_vote_and_its_fallback():
  # |p_fake - p_real| = |2p - 1|: 0.95 -> 0.9, 0.4 -> 0.2, 0.45 -> 0.1, 0.3 -> 0.4.
  lg = _logits([0.95, 0.4, 0.45, 0.3])
  assert _verdict("confident", lg, theta=0.5) == (1.0, 1)  # Only the 0.95 patch votes.
  assert _verdict("confident", lg, theta=0.3) == (0.5, 1)  # 0.95 and 0.3: tie -> fake.
  assert _verdict("confident", lg, theta=0.95) == (0.25, 0)  # No patch passes: all vote.


def test_mean_logit_differs_from_mean_prob():
  lg = _logits([0.99, 0.3, 0.3])
  s_prob, d_prob = _verdict("mean_prob", lg)
  s_logit, d_logit = _verdict("mean_logit", lg)
  assert s_prob == pytest.approx((0.99 + 0.3 + 0.3) / 3)
  mean_logit = (np.log(0.99 / 0.01) + 2 * np.log(0.3 / 0.7)) / 3
  assert s_logit == pytest.approx(1 / (1 + np.exp(-mean_logit)))
  assert (d_prob, d_logit) == (1, 1) and s_logit != pytest.approx(s_prob)
  assert _verdict("mean_prob", _logits([0.2])) == (pytest.approx(0.2), 0)


def test_attribution_vote():
  lg = np.log(np.array([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]]))
  score, pred = _verdict("grid", lg)
  assert pred == 1 and score == pytest.approx(1.0)  # No patch voted 'real' (class 0).


def test_views_and_their_plans():
  img = np.arange(70 * 90 * 3, dtype=np.uint32).reshape(70, 90, 3).astype(np.uint8)
  with pytest.raises(ValueError, match="odd"):
    scoring.View("random", patch_size=16, k=4)
  with pytest.raises(ValueError, match="16, 32, 64 or 128"):
    scoring.View("grid", patch_size=24)
  a, _ = scoring.View("random", patch_size=16, k=5, seed=1).cut(img, 7)
  b, _ = scoring.View("random", patch_size=16, k=5, seed=1).cut(img, 7)
  assert a.shape == (5, 16, 16, 3) and np.array_equal(a, b)
  patches, grid = scoring.grid_patches(img, 32)
  assert grid == (2, 2) and patches.shape == (4, 32, 32, 3)  # The remainders are left out.
  np.testing.assert_array_equal(patches[1], img[0:32, 32:64])
  np.testing.assert_array_equal(patches[2], img[32:64, 0:32])
  tiles, tgrid = scoring.View("tiles", tile=40).cut(img, 0)
  assert tgrid == (2, 3) and tiles.shape == (6, 40, 40, 3)
  np.testing.assert_array_equal(tiles[5], img[30:70, 50:90])  # The last tiles end at the edges.
  for v in (scoring.View("full", crop=32), scoring.View("whole"), scoring.View("grid", patch_size=16),
            scoring.View("tiles", tile=40), scoring.View("whole", resize=48)):
    shape, n = v.plan(70, 90)  # The plan (from the size alone) is what cut gives.
    got, _ = v.cut(img, 0)
    assert got.shape == (n,) + shape + (3,), v
  assert scoring.View("auto", max_whole_pixels=5000, tile=40).kind(70, 90) == "tiles"
  assert scoring.View("auto").kind(70, 90) == "whole"
  with pytest.raises(augment.TooSmall):
    scoring.View("full", crop=80).plan(70, 90)


def _ap(labels, scores):
  """Average precision by its definition (fakes positive): over the distinct scores t from high to
  low, the precision at score >= t times the recall gained there."""
  labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
  ap = recall = 0.0
  for t in np.unique(scores)[::-1]:
    hit = labels[scores >= t]
    ap += (hit.sum() / labels.sum() - recall) * hit.mean()
    recall = hit.sum() / labels.sum()
  return ap


def _auc(labels, scores):
  """ROC AUC as the share of (fake, real) pairs the fake wins, a tie counting half."""
  labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
  f, r = scores[labels == 1][:, None], scores[labels == 0][None]
  return float(np.mean((f > r) + 0.5 * (f == r)))


# Fakes score 0.9, 0.7, 0.5, 0.4; reals 0.6, 0.3, 0.2, 0.1.
LABELS = np.array([0, 0, 1, 1, 1, 0, 1, 0])
SCORES = np.array([0.1, 0.6, 0.7, 0.4, 0.9, 0.3, 0.5, 0.2])


def test_binary_metrics_by_hand():
  m = metrics.binary(LABELS, SCORES)
  # From the top: fake, fake, real, fake, fake: precision 1, 1, 3/4, 4/5 at recall 1/4 .. 1.
  assert m["ap"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 5) / 4) == _ap(LABELS, SCORES)
  # Fakes scored above reals in 14 of 16 pairs; at 0.5, 3/4 reals and 3/4 fakes right.
  assert m["auc"] == pytest.approx(14 / 16) == _auc(LABELS, SCORES)
  assert (m["accuracy"], m["real_acc"], m["fake_acc"]) == (0.75, 0.75, 0.75)
  assert (m["n_real"], m["n_fake"]) == (4, 4)
  perfect = metrics.binary([0, 1], [0.2, 0.8])
  assert perfect["eer"] == 0.0 and perfect["ap"] == 1.0
  assert np.isnan(metrics.binary([1, 1], [0.2, 0.8])["auc"])  # One class only: undefined.
  prec, rec = metrics.precision_recall([[3, 1], [2, 4]])
  np.testing.assert_allclose(prec, [3 / 5, 4 / 5])
  np.testing.assert_allclose(rec, [3 / 4, 4 / 6])


def test_eer_by_hand():
  """At threshold 0.5 one real of four (0.6) is called fake and one fake of four (0.4) real:
  the false-positive and false-negative rates meet at 1/4 (sklearn's thinned ROC drops this
  point, and the nearest kept ones gave 0.375)."""
  assert metrics.binary(LABELS, SCORES)["eer"] == pytest.approx(0.25)
  # Reals 0.2, 0.8; fakes 0.6, 0.7, 0.9. At 0.8: fpr 1/2, fnr 2/3; at 0.7: fpr 1/2, fnr 1/3. The
  # rates cross between the two, where fnr falls through 1/2: the EER is 1/2.
  assert metrics.eer([0, 0, 1, 1, 1], [0.2, 0.8, 0.6, 0.7, 0.9]) == pytest.approx(0.5)
  # Reals 0.1, 0.3; fakes 0.2, 0.4: at 0.4 fpr 0, fnr 1/2; at 0.3 fpr 1/2, fnr 1/2: 1/2.
  assert metrics.eer([0, 0, 1, 1], [0.1, 0.3, 0.2, 0.4]) == pytest.approx(0.5)
  assert metrics.eer([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 0.0  # Separated.
  assert metrics.eer([0, 1, 0, 1], [0.9, 0.1, 0.8, 0.2]) == 1.0  # Reversed.


# ---------------------------------------------------------------------------
# The protocol, with a forward whose scores are known: p_fake = mean pixel / 255.
# ---------------------------------------------------------------------------
@jax.jit
def _brightness_forward(x):
  p = jnp.clip(x.astype(jnp.float32).mean((1, 2, 3)) / 255.0, 1e-4, 1 - 1e-4)
  return jnp.stack([jnp.zeros_like(p), jnp.log(p / (1 - p))], -1)


def test_each_generator_is_scored_against_its_own_reals(tmp_path):
  """Generator A's reals are dark, B's bright; fakes in between. Per-folder AP (the published
  protocol) differs from the AP against the pooled reals, and the rows give the per-folder one."""
  root = str(tmp_path / "cnn")
  level = {"A/0_real": [40, 50, 60, 245], "A/1_fake": [100, 110, 120, 55],
           "B/0_real": [200, 210, 220, 90], "B/1_fake": [180, 230, 240, 250]}
  for folder, values in level.items():
    for i, v in enumerate(values):
      write_png(os.path.join(root, "test", folder, f"{i}.png"),
                np.full((32, 32, 3), v, np.uint8))
  ds, _ = datasets.prepare_folder(root, str(tmp_path / "out"))
  ev = scoring.Evaluator(_brightness_forward, sharding.make_mesh(), 8, 32)
  view = scoring.View("full", crop=32)
  idx = ds.index("test")
  for name, sel in ds.test_sets("test", "source"):
    sizes, load = scoring.dataset_reader(ds, "test", sel)
    row = scoring.set_metrics(ev.run(sizes, load, view), idx["label"][sel], ("real", "fake"), view)
    reals = level[f"{name}/0_real"]
    fakes = level[f"{name}/1_fake"]
    want = _ap([0] * 4 + [1] * 4, np.array(reals + fakes) / 255)
    pooled = _ap([0] * 8 + [1] * 4, np.array(level["A/0_real"] + level["B/0_real"]
                                                                      + fakes) / 255)
    assert (row["n_real"], row["n_fake"]) == (4, 4)
    assert row["ap"] == pytest.approx(want) and abs(want - pooled) > 0.05, (name, want, pooled)


def test_tta_is_the_mean_of_the_separately_scored_copies(tmp_path):
  """With flips and rotations the score is the mean of each copy scored on its own."""
  rng = np.random.default_rng(0)
  imgs = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(3)]
  imgs[0][:, :20] = 255  # Asymmetric: the flip changes the score.
  forward = jax.jit(lambda x: _brightness_forward(x[:, :, :20]))  # Looks at the left half only.
  ev = scoring.Evaluator(forward, sharding.make_mesh(), 8, 40)
  view = scoring.View("full", crop=32)
  copies = augment.tta_copies(["flip", "rot=15"])
  assert [c.name for c in copies] == ["identity", "flip", "rot+15", "rot-15"]
  res = ev.run([im.shape[:2] for im in imgs], lambda i: imgs[i], view, copies)
  for i, r in enumerate(res):
    alone = [ev.run([imgs[i].shape[:2]], lambda _, c=c: c(imgs[i]), view)[0].score for c in copies]
    assert r.score == pytest.approx(np.mean(alone), abs=1e-9)
    assert r.copy_scores == pytest.approx(alone, abs=1e-9)
  assert len(set(np.round(res[0].copy_scores, 6))) > 1  # The copies differ.


# ---------------------------------------------------------------------------
# With a trained (tiny) run.
# ---------------------------------------------------------------------------
def test_evaluate_counts_every_image_once(tiny_run, tiny_synthetic):
  run = runs.Run(tiny_run)
  idx = tiny_synthetic.select("test", sources=("tconv",))[:13]  # Prime: no whole batches.
  labels = tiny_synthetic.index("test")["label"][idx]
  sizes, load = scoring.dataset_reader(tiny_synthetic, "test", idx)
  for view in (run.view("full"), run.view("grid", patch_size=16)):
    res = run.evaluator.run(sizes, load, view)
    row = scoring.set_metrics(res, labels, run.class_names, view)
    assert len(res) == 13 and row["n_real"] + row["n_fake"] == 13 and row["n_fake"] == int(labels.sum())
    assert row["auc"] == pytest.approx(_auc(labels, [r.score for r in res]))
    assert row.get("n_patches") == (None if view.mode == "full" else 13 * 4)  # 32 px -> 2x2 patches.
  # The batched forward (of the inference model) gives the plain model's logits of one image.
  full = run.evaluator.run(sizes, load, run.view("full"))
  one = nnx.merge(run.model_def, run.state)(models.preprocess(jnp.asarray(load(4)[None]), run.preprocess))
  np.testing.assert_allclose(one, full[4].patch_logits, rtol=1e-5, atol=1e-5)


def test_whole_view_equals_the_plain_forward_and_mixes_sizes(tiny_run):
  """With exact_sizes, the whole image through the model: the plain forward of that image,
  whatever else shares its batches (padding adds only dummy images)."""
  run = runs.Run(tiny_run)
  rng = np.random.default_rng(1)
  imgs = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in ((48, 40), (32, 32), (48, 40), (64, 32))]
  view = run.view("whole", exact_sizes=True)
  together = run.evaluator.run([im.shape[:2] for im in imgs], lambda i: imgs[i], view)
  model = nnx.merge(run.model_def, run.state)
  for im, r in zip(imgs, together):
    plain = np.asarray(model(models.preprocess(jnp.asarray(im[None]), run.preprocess)))
    np.testing.assert_allclose(r.patch_logits, plain, rtol=1e-5, atol=1e-5)
    alone = run.evaluator.run([im.shape[:2]], lambda _, im=im: im, view)[0]
    assert alone.score == pytest.approx(r.score, abs=1e-6) and r.view == "whole"


def _env():
  return subprocess_env()


@pytest.mark.slow  # end to end: a real evaluate process with patches, TTA, perturbations and debiasing: make test-slow
def test_evaluate_cli_writes_reports(tiny_run, tmp_path):
  out = tmp_path / "rep"
  r = subprocess.run([sys.executable, "-m", "fakejax.evaluate", "--workdir", tiny_run, "--mode",
                      "grid", "--patch_size", "16", "--tta", "flip", "--perturb", "jpeg:90,50",
                      "--debias", "jpeg:70", "--out", str(out)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  rep = json.load(open(out / "report.json"))
  names = [row["test_set"] for row in rep["rows"]]
  assert names == ["bilinear_conv", "nn_conv", "pixel_shuffle", "tconv", "mean"]
  assert all(row["n_real"] == 9 and row["n_fake"] == 9 for row in rep["rows"][:-1])
  assert rep["rows"][-1]["ap"] == pytest.approx(np.mean([row["ap"] for row in rep["rows"][:-1]]))
  assert all("plain_accuracy" in row for row in rep["rows"]) and rep["info"]["tta"] == ["identity", "flip"]
  assert sorted({(row["perturbation"], row["strength"]) for row in rep["robustness"]}) == [
      ("debias_jpeg", 70.0), ("jpeg", 50.0), ("jpeg", 90.0)] and len(rep["robustness"]) == 12
  # Debiased: the reals untouched (their accuracy is the plain one), the fakes JPEG'd.
  plain = {row["test_set"]: row for row in rep["rows"]}
  debiased = [row for row in rep["robustness"] if row["perturbation"] == "debias_jpeg"]
  assert all(row["real_acc"] == plain[row["test_set"]]["real_acc"] for row in debiased)
  assert rep["info"]["training_indicators"]["n_evals"] == 1
  rows = list(csv.DictReader(open(out / "report.csv")))
  assert [row["test_set"] for row in rows] == names
  md = open(out / "report.md").read()
  assert "| tconv |" in md and "| mean |" in md and "Robustness" in md and "| tconv |" in r.stdout
  for png in ("matrix.png", "roc.png", "robustness.png", "patches_most_confident.png",
              "patches_least_confident.png"):
    with Image.open(out / png) as im:
      assert im.size[0] > 200 and im.size[1] > 150


def test_debiased_fakes_are_jpegd_at_the_reals_qualities(tmp_path):
  from PIL import Image as PILImage  # pylint: disable=g-import-not-at-top
  root = tmp_path / "folder"
  for i in range(6):
    for label in ("0_real", "1_fake"):
      os.makedirs(root / "test" / label, exist_ok=True)
    rgb = random_image(i, 32, 40)
    PILImage.fromarray(rgb).save(root / "test" / "0_real" / f"r{i}.jpg", quality=(70, 90)[i % 2])
    write_png(root / "test" / "1_fake" / f"f{i}.png", random_image(100 + i, 32, 40))
  ds, _ = datasets.prepare_folder(str(root), str(tmp_path / "ds"), workers=0)
  idx = np.arange(12)
  labels = ds.index("test")["label"]
  sizes, plain = scoring.dataset_reader(ds, "test", idx)
  for quality in (0, 55):
    _, load = scoring.debiased_reader(ds, "test", idx, quality)
    for i in idx:
      if labels[i] == 0:
        np.testing.assert_array_equal(load(i), plain(i))
      else:
        got = load(i)
        matches = [q for q in ((70, 90) if quality == 0 else (quality,))
                   if np.array_equal(got, augment.jpeg(plain(i), q))]
        assert matches, f"fake {i} is not its JPEG at a real's quality"
  os.remove(root / "test" / "0_real" / "r0.jpg")  # Some reals gone: the others still tell.
  assert set(scoring.real_jpeg_qualities(ds, "test")) == {70, 90}
  shutil.rmtree(root / "test" / "0_real")  # None left: DDA's quality 96.
  _, load = scoring.debiased_reader(ds, "test", idx, 0)
  fake = int(np.flatnonzero(labels == 1)[0])
  np.testing.assert_array_equal(load(fake), augment.jpeg(plain(fake), 96))


@pytest.mark.slow  # an end-to-end chain: two real predict processes on a folder: make test-slow
def test_predict_folder_with_bad_files(tiny_run, tiny_synthetic, tmp_path):
  folder = tmp_path / "mixed"
  corpus = bad_image_corpus(str(folder))
  src = tiny_synthetic.source("test")
  for i in range(3):
    Image.fromarray(tiny_synthetic.decode(src[i])).save(folder / f"synthetic_{i}.png")
  Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(folder / "big.png")  # Judged whole.
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
      folder / "cut.png")
  data = open(folder / "cut.png", "rb").read()
  open(folder / "cut.png", "wb").write(data[:len(data) // 2])  # Its header says 64x64: it is decoded.
  os.remove(folder / "notes.txt")
  out_csv, sorted_dir = tmp_path / "p.csv", tmp_path / "sorted"
  r = subprocess.run([sys.executable, "-m", "fakejax.predict", "--workdir", tiny_run, str(folder),
                      "--out", str(out_csv), "--sort_into", str(sorted_dir)], cwd=ROOT, env=_env(),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = {os.path.basename(row["path"]): row for row in csv.DictReader(open(out_csv))}
  assert len(rows) == len(os.listdir(folder))
  # The corpus' images whose header can be read are 16x16 (or 1x1): smaller than the models' 32 px.
  corpus.update({"one.png": None, "truncated.png": None, "cut.png": "cannot decode"})
  for name, reason in corpus.items():
    assert (reason or "smaller than 32 px") in rows[name]["error"], (name, rows[name])
  bad = {k for k, row in rows.items() if row["error"]}
  assert bad == set(corpus)
  for k, row in rows.items():
    if not row["error"]:
      assert 0 <= float(row["p_fake"]) <= 1 and row["label"] in ("real", "fake")
      assert row["mode"] == "auto" and row["view"] == "whole" and row["n_patches"] == "1"
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


# ---------------------------------------------------------------------------
# Whole images of many sizes: a handful of programs, logits within the stated bound.
# ---------------------------------------------------------------------------
def test_bucket_side():
  assert [scoring.bucket_side(n) for n in (1, 32, 33, 48, 49, 64, 65, 96, 97, 129, 193, 257, 385)] \
      == [32, 32, 48, 48, 64, 64, 96, 96, 128, 192, 256, 384, 512]
  for n in range(1, 3000):
    assert n <= scoring.bucket_side(n) <= max(32, 1.5 * n)


def test_whole_images_of_60_sizes_compile_a_handful_of_programs(tiny_run):
  """300 images of 60 distinct sizes go through 4 size buckets (a handful of programs), and each image's
  logits equal its exact-size forward's within scoring.BUCKET_RELATIVE_BOUND of their scale."""
  run = runs.Run(tiny_run)
  rng = np.random.default_rng(0)
  every = sorted({(int(h), int(w)) for h, w in rng.integers(70, 129, (400, 2))})
  sizes = [every[k] for k in rng.permutation(len(every))[:60]]
  assert len(sizes) == 60
  imgs = [rng.integers(0, 256, sizes[i % 60] + (3,), dtype=np.uint8) for i in range(300)]
  before = run.forward._cache_size()  # pylint: disable=protected-access
  res = run.evaluator.run([im.shape[:2] for im in imgs], lambda i: imgs[i], run.view("whole"))
  programs = run.forward._cache_size() - before  # pylint: disable=protected-access
  view = run.view("whole")
  keys = {((scoring.bucket_side(h), scoring.bucket_side(w)), view.pads(h, w)) for h, w in sizes}
  assert len({shape for shape, _ in keys}) == 4  # Sides 70..128 fall in the 96 and 128 buckets.
  assert programs == len(keys) <= 6  # (An image of its bucket's exact size is scored unpadded.)
  assert all(not r.error and r.view == "whole" for r in res)
  exact_view = run.view("whole", exact_sizes=True)
  sample = list(range(0, 60, 10))  # 6 sizes: the exact path compiles one program each.
  exact = run.evaluator.run([imgs[i].shape[:2] for i in sample], lambda k: imgs[sample[k]], exact_view)
  diff = max(float(np.abs(r.patch_logits - res[i].patch_logits).max()) for i, r in zip(sample, exact))
  scale = max(float(np.abs(r.patch_logits).max()) for r in exact)
  assert diff <= scoring.BUCKET_RELATIVE_BOUND * scale, (diff, scale)
  unpadded = [i for i in sample if imgs[i].shape[:2] in ((96, 96), (96, 128), (128, 96), (128, 128))]
  for i in unpadded:  # An image of its bucket's size: nothing padded, the same program's logits.
    np.testing.assert_allclose(res[i].patch_logits, exact[sample.index(i)].patch_logits, rtol=1e-6)


def test_masked_global_pool_is_the_mean_of_the_valid_cells():
  """With a valid region, the pool of each image is the mean of its ceil(h * Hf / H) x
  ceil(w * Wf / W) top-left cells (numpy on the cropped map)."""
  from fakejax.models import layers  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).normal(size=(3, 4, 6, 5)).astype(np.float32)  # 128 x 192 input.
  valid = np.array([[128, 192], [70, 100], [33, 31]], np.int32)
  got = np.asarray(layers.global_avg_pool(jnp.asarray(x), layers.region(jnp.asarray(valid), (128, 192))))
  for b, (rows, cols) in enumerate([(4, 6), (3, 4), (2, 1)]):
    np.testing.assert_allclose(got[b], x[b, :rows, :cols].mean((0, 1)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(layers.global_avg_pool(jnp.asarray(x))), x.mean((1, 2)), rtol=1e-6)


def test_grid_results_carry_their_grid_and_the_heatmap_is_drawn(tmp_path):
  """A grid view's Result knows its patch grid (rows, cols), and the patch-heatmap figure
  draws the per-patch overlay from it (the figure differs from one without the grid)."""
  from fakejax import report  # pylint: disable=g-import-not-at-top
  img = np.zeros((48, 64, 3), np.uint8)
  img[:, 32:] = 255  # Right half bright: fake patches there.
  ev = scoring.Evaluator(_brightness_forward, sharding.make_mesh(), 8, 16)
  r = ev.run([img.shape[:2]], lambda _: img, scoring.View("grid", patch_size=16))[0]
  assert r.grid == (3, 4) and r.n_inputs == 12
  tiles = scoring.View("tiles", tile=32).grid(48, 64)
  assert tiles == (2, 2)
  assert scoring.View("full").grid(48, 64) is None
  with_grid, without = str(tmp_path / "a.png"), str(tmp_path / "b.png")
  report.plot_patch_heatmaps([("x", img, r)], 16, with_grid, ("real", "fake"))
  report.plot_patch_heatmaps([("x", img, dataclasses.replace(r, grid=None))], 16, without, ("real", "fake"))
  a, b = np.asarray(Image.open(with_grid).convert("RGB")), np.asarray(Image.open(without).convert("RGB"))
  assert a.shape == b.shape and (np.abs(a.astype(int) - b).sum(-1) > 30).mean() > 0.05


def test_without_a_real_class_there_is_no_p_fake():
  """Attribution among generators only: class 0 is a generator, so 1 - p(class 0) is no
  p_fake; the score is NaN and the prediction the arg-max."""
  img = np.full((32, 32, 3), 200, np.uint8)
  for has_real in (True, False):
    ev = scoring.Evaluator(_brightness_forward, sharding.make_mesh(), 8, 32, has_real=has_real)
    r = ev.run([img.shape[:2]], lambda _: img, scoring.View("full", crop=32))[0]
    assert r.pred == int(np.argmax(r.probs))
    assert (r.score == pytest.approx(1 - r.probs[0])) if has_real else np.isnan(r.score)


def test_threshold_from_reals_by_hand():
  p = [0.1, 0.9, 0.3, 0.2, 0.5]
  # Sorted 0.1 0.2 0.3 0.5 0.9: 4 of 5 reals below a threshold just above 0.5, all just above 0.9,
  # and for 0.5 the lowest threshold with 3 of 5 (2 of 5 would be < 0.5).
  for target, above in ((0.8, 0.5), (1.0, 0.9), (0.5, 0.3)):
    t = metrics.threshold_from_reals(p, target)
    assert above < t <= above + 1e-12
    assert np.mean(np.array(p) < t) >= target
  with pytest.raises(ValueError):
    metrics.threshold_from_reals([], 0.9)


def test_evaluate_cli_preset_and_calibration_from_reals(tiny_run, tiny_synthetic, tmp_path):
  out = tmp_path / "rep"
  r = subprocess.run([sys.executable, "-m", "fakejax.evaluate", "--workdir", tiny_run, "--preset",
                      "cnndetection_nocrop", "--calibrate", "val", "--target_real_acc", "0.9",
                      "--out", str(out)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  rep = json.load(open(out / "report.json"))
  assert rep["info"]["preset"] == "cnndetection_nocrop" and rep["info"]["mode"] == "whole"
  cal = rep["info"]["calibration"]
  n_val_reals = int((tiny_synthetic.index("val")["label"] == 0).sum())
  assert cal["source"] == "val" and cal["n_reals"] == n_val_reals and cal["target_real_acc"] == 0.9
  for row in rep["rows"]:
    assert {"accuracy", "cal_accuracy", "cal_real_acc", "cal_fake_acc"} <= set(row)
  assert "cal_accuracy" in open(out / "report.md").read()
