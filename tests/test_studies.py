"""The study scripts (scripts/study_*.py): each --quick smoke run writes its tables, figures and
records, with numbers in range; the shared helpers they rest on are checked by hand.

The five smoke runs (~1.5 min each on 2 cores, cold) are marked `study`: `make test-studies`
runs them (CI does, after `make test`); `make test` runs the helper tests."""

import argparse
import importlib
import json
import os
import re

import numpy as np
import pytest

from fakejax import augment
from fakejax import datasets
from fakejax import runs
from tests.conftest import train_records
from fakejax import studies as sc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METRICS = ("accuracy", "ap", "auc", "real_acc", "fake_acc", "top1", "patch_acc", "plain_accuracy",
           "plain_ap", "val_patch_accuracy")


def run_script(module_name, tmp_path, data_root, *extra):
  """Runs scripts/<module_name>.py --quick in this process; returns (out folder, results.json)."""
  module = importlib.import_module(f"scripts.{module_name}")
  out = str(tmp_path / module_name)
  module.main(["--quick", "--out", out, "--data_cache", data_root, *extra])
  with open(os.path.join(out, "results.json")) as f:
    return out, json.load(f)


def run_study(name, tmp_path, data_root, *extra):
  """Runs scripts/study_<name>.py --quick in this process; returns (out folder, results.json)."""
  return run_script(f"study_{name}", tmp_path, data_root, *extra)


def check_outputs(out, results, figures, sections):
  """The files exist, the figures are PNGs, every metric is in [0, 1], the sections are there."""
  with open(os.path.join(out, "results.md")) as f:
    md = f.read()
  for s in sections:
    assert f"## {s}" in md, s
  assert "Seeds per point: 1" in md and "Machine:" in md and "Command: `python scripts/" in md
  for fig in figures:
    path = os.path.join(out, fig)
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", fig
    assert 2_000 < os.path.getsize(path) < 150_000, fig
    assert f"]({fig})" in md or f"]({os.path.basename(fig)})" in md, fig
  assert results["records"]
  for r in results["records"]:
    for k in METRICS:
      if k in r and r[k] is not None:
        assert 0.0 <= r[k] <= 1.0, (k, r)
  assert all(v["seconds"] >= 0 for v in results["runs"].values())
  return md


def table_rows(md, heading):
  """The data rows of the first Markdown table after `heading`."""
  lines = md.split(f"## {heading}", 1)[1].splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith("|"))
  end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
  return [[c.strip() for c in l.strip("|").split("|")] for l in lines[start + 2:end]]


PM = re.compile(r"^(\d\.\d{3}) ± (\d\.\d{3})$")


def assert_pm(cell):
  m = PM.match(cell)
  assert m, cell
  assert 0 <= float(m.group(1)) <= 1 and float(m.group(2)) == 0.0  # One seed: no spread.


# ---------------------------------------------------------------------------
# The scripts.
# ---------------------------------------------------------------------------
@pytest.mark.study
def test_generalisation(tmp_path, data_root):
  out, res = run_study("generalisation", tmp_path, data_root)
  md = check_outputs(out, res, ["fig_1a_accuracy.png", "fig_1a_ap.png", "fig_1b_accuracy.png", "fig_1b_ap.png"],
                     ["1a: content diversity (total training images fixed)", "1b: dropout before the classifier"])
  rows = table_rows(md, "1a: content diversity")
  assert [r[:2] for r in rows] == [["1", "8"], ["2", "4"]]  # N categories, images per category.
  for r in rows:
    for c in r[2:]:
      assert_pm(c)
  assert [r[0] for r in table_rows(md, "1b: dropout")] == ["0"]
  assert len(res["runs"]) == 2  # The 1b point equal to 1a's N=2 run is that run.
  held = {r["held_out"] for r in res["records"]}
  assert len(held) == 1
  seen = {r["n"]: r for r in res["records"] if r["set"] == "unseen content" and r["part"] == "1a"}
  assert set(seen) == {1, 2} and all(r["n_real"] == 3 and r["n_fake"] == 3 for r in seen.values())
  # Each run trained on train_per_category = 8 // N images per (category, source).
  for workdir in res["runs"]:
    with open(os.path.join(workdir, "config.json")) as f:
      data = json.load(f)["data"]
    assert data["train_per_category"] * len(data["train_categories"]) == 8
    assert held.isdisjoint(data["train_categories"])


@pytest.mark.study
def test_patches(tmp_path, data_root):
  out, res = run_study("patches", tmp_path, data_root)
  md = check_outputs(out, res, ["fig_2_patch_size.png", "fig_2_confident.png", "fig_2_random.png"],
                     ["Tab. 1: patch-level validation accuracy", "Image-level accuracy, seen",
                      "Image-level accuracy, unseen content", "Image-level accuracy, unseen generators",
                      "Verdicts (indicator: mean of all checkpoints)"])
  assert [r[0] for r in table_rows(md, "Tab. 1")] == ["whole image 32", "16"]
  rules = [r[1] for r in table_rows(md, "Image-level accuracy, unseen content")]
  assert rules == ["whole image", "centre patch", "whole image", "grid vote", "random K=1", "random K=3",
                   "random K=5", "random K=9", "confident θ=0.5", "confident θ=0.8", "confident θ=0.95",
                   "confident θ=0.99", "mean logit"]
  for r in table_rows(md, "Image-level accuracy, seen"):
    for c in r[2:]:
      assert_pm(c)
  grid = [r for r in res["records"] if r.get("rule") == "grid vote"]
  assert grid and {r["set"] for r in grid} >= {"seen", "unseen content", "unseen generators"}
  # A 32x32 image has 4 grid patches of 16: patch accuracy is a multiple of 1/(4 * images).
  assert all(r["P"] == 16 for r in grid)


@pytest.mark.study
def test_transfer_attribution(tmp_path, data_root):
  out, res = run_study("transfer_attribution", tmp_path, data_root)
  md = check_outputs(out, res, ["fig_3a_transfer.png", "fig_3b_confusion_xception.png", "gradcam/gradcam_mean.png"],
                     ["(a) Binary detection: linear probe vs fine-tuning",
                      "(b) Attribution: which generator (or real) made the image",
                      "(c) Grad-CAM per class (attribution Xception, seed 0)"])
  assert "**from scratch**" in md
  assert [r[0] for r in table_rows(md, "(a) Binary")] == ["xception linear_probe"]
  (row,) = table_rows(md, "(b) Attribution")
  assert row[0] == "xception" and len(row) == 4 + 5  # top-1, real-vs-fake acc, recall of 5 classes.
  (rec,) = [r for r in res["records"] if r["part"] == "b"]
  cm = np.array(rec["confusion"])
  assert cm.shape == (5, 5) and cm.sum() == 3 * 5 * 3  # 3 categories x 3 test reals, each with 4 fakes.
  assert rec["classes"] == ["real", "tconv", "nn_conv", "bilinear_conv", "pixel_shuffle"]
  with np.load(os.path.join(out, "gradcam", "gradcam_mean.npz")) as z:
    assert z["maps"].shape == (5, 32, 32) and 0 <= z["maps"].min() and z["maps"].max() <= 1


@pytest.mark.study
def test_resolution_augmentation(tmp_path, data_root):
  out, res = run_study("resolution_augmentation", tmp_path, data_root)
  md = check_outputs(out, res, ["fig_4_xception_conditions.png", "fig_4_xception_tta.png"], ["xception"])
  rows = table_rows(md, "xception")
  assert [r[0] for r in rows] == ["native", "low"]
  assert len(rows[0]) == 8  # condition, 5 clean columns, 2 perturbations.
  for workdir, info in res["runs"].items():
    with open(os.path.join(workdir, "config.json")) as f:
      c = json.load(f)
    if info["label"].endswith("_low"):
      assert c["data"]["image_size"] == c["aug"]["resize"] == c["data"]["eval_resize"] == 16
  tests = {r["test"] for r in res["records"]}
  assert tests == {"clean", "jpeg:75", "blur:1", "TTA ±15°"}
  tta = [r for r in res["records"] if r["test"] == "TTA ±15°"]
  assert tta and all("plain_accuracy" in r for r in tta) and {r["condition"] for r in tta} == {"native"}


@pytest.mark.study
def test_deepfd(tmp_path, data_root):
  out, res = run_study("deepfd", tmp_path, data_root)
  md = check_outputs(out, res, ["fig_5_accuracy.png", "fig_5_ap.png"],
                     ["DeepFD: with vs without the contrastive stage"])
  assert [r[0] for r in table_rows(md, "DeepFD")] == ["contrastive + frozen D1", "cross-entropy only"]
  steps = {}
  for workdir, info in res["runs"].items():
    with open(os.path.join(workdir, "config.json")) as f:
      fd = json.load(f)["deepfd"]
    steps[info["label"]] = (fd["stage1_steps"], fd["stage2_steps"], fd["freeze_d1"])
  assert steps == {"contrastive": (2, 2, True), "cross-entropy": (0, 4, False)}  # Same total steps.


@pytest.mark.study
def test_aligned(tmp_path, data_root):
  """The four points on the tiny photo benchmark: every test family under the five conditions, the
  goals checked; the aligned runs trained on pairs, the ablations on the autoencoder's other crops."""
  out, res = run_study("aligned", tmp_path, data_root)
  md = check_outputs(out, res, ["fig_7_accuracy.png"], ["plain: accuracy", "debiased: real_acc",
                                                         "Goals (issue 34)", "Alignment"])
  points = ["aligned", "unaligned", "spectral_aligned", "spectral_unaligned"]
  assert [r[0] for r in table_rows(md, "plain: accuracy")] == points
  conds = {(r["point"], r["condition"]) for r in res["records"] if r["set"] == "mean"}
  assert len(conds) == 4 * 5
  assert "spectral_aligned vs spectral_unaligned" in md
  assert {r["set"] for r in res["records"]} == {"mean", "nn_conv", "tconv", "bilinear_conv", "pixel_shuffle", "sr"}
  pairs = {}
  for workdir, info in res["runs"].items():
    with open(os.path.join(workdir, "config.json")) as f:
      c = json.load(f)
    pairs[info["label"]] = (c["model"]["name"], c["data"]["pairs"], c["data"]["photo"]["aligned"],
                            c["data"]["photo"]["families"][0])
  assert pairs == {"aligned": ("resnet50_nodown", True, True, "kl_vae"),
                   "unaligned": ("resnet50_nodown", False, False, "kl_vae"),
                   "spectral_aligned": ("spectral", False, True, "kl_vae"),
                   "spectral_unaligned": ("spectral", False, False, "kl_vae")}


# ---------------------------------------------------------------------------
# The helpers.
# ---------------------------------------------------------------------------
def test_condition_configs():
  """Study 4's training conditions and study 5's ablations set what they claim."""
  ra = importlib.import_module("scripts.study_resolution_augmentation")
  base = sc.defaults.get_config()
  c = ra.condition_config(base, "xception", "blur+JPEG p=0.1", 64, 32)
  assert (c.aug.blur_prob, c.aug.jpg_prob, tuple(c.aug.blur_sig), tuple(c.aug.jpg_qual)) == (0.1, 0.1, (0, 3), (30, 100))
  assert (c.optim.lr, c.optim.end_lr, c.optim.schedule) == (1e-2, 1e-4, "exponential")
  c = ra.condition_config(base, "resnet50", "geometric", 64, 32)
  assert (c.aug.rotate, c.aug.shift, c.aug.zoom, c.optim.name, c.optim.lr) == (45.0, 0.15, 0.5, "sgd", 3e-3)
  c = ra.condition_config(base, "xception", "low", 64, 32)
  assert c.aug.resize == c.data.eval_resize == c.data.image_size == 32 and base.aug.resize == 0
  with pytest.raises(sc.cli.UserError):
    ra.condition_config(base, "xception", "sharpen", 64, 32)
  fd = importlib.import_module("scripts.study_deepfd")
  c = fd.condition_config(base, "random frozen D1", 5, 7)
  assert (c.deepfd.stage1_steps, c.deepfd.stage2_steps, c.deepfd.freeze_d1) == (0, 12, True)


def test_train_per_category_subset(tiny_synthetic):
  """data.train_per_category keeps a seeded subset of n images per (category, source)."""
  c = sc.base_config(argparse.Namespace(data="", quick=True, data_cache=""))
  c.data.train_sources = ("tconv",)
  full = train_records(tiny_synthetic, c.data)
  c.data.train_per_category = 3
  sub = train_records(tiny_synthetic, c.data)
  idx = tiny_synthetic.index("train")
  groups = {}
  for i in sub:
    groups.setdefault((idx["category"][i], idx["source"][i]), []).append(i)
  assert set(sub) <= set(full) and len(groups) == 3 * 2 and all(len(v) == 3 for v in groups.values())
  c.data.seed = 1
  assert not np.array_equal(train_records(tiny_synthetic, c.data), sub)


def _votes_by_hand(logits, theta=0.0):
  """p(fake) of binary patch votes at 0.5, keeping the patches whose top-two softmax margin is
  at least theta (all when none is): written out here, not taken from scoring."""
  z = np.asarray(logits, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  p = e / e.sum(-1, keepdims=True)
  keep = np.abs(p[:, 1] - p[:, 0]) >= theta
  p = p[keep] if keep.any() else p
  return float((p[:, 1] >= 0.5).mean())


def test_revote_gives_a_separate_pass_and_the_votes_by_hand(tiny_run):
  """Re-deciding stored patch logits: the first k of a K-patch random draw are the patches of a
  k-patch pass (same logits), and the re-decided p(fake) is the vote counted by hand, for the
  random rule and for the confident rule at two margins over a grid pass's patches."""
  run = runs.Run(tiny_run)
  ds = datasets.Dataset(run.info["dataset"])
  sets = [("all", ds.select("test")[:6])]
  rand = sc.forward_sets(run, ds, sets, run.view("random", patch_size=16, k=5))["all"][0]
  direct = sc.forward_sets(run, ds, sets, run.view("random", patch_size=16, k=3))["all"][0]
  for a, b in zip(sc.revote(rand, run.view("random", patch_size=16, k=3)), direct):
    np.testing.assert_allclose(np.asarray(a.outputs["logits"]), np.asarray(b.patch_logits), rtol=1e-5, atol=1e-5)
    assert a.score == pytest.approx(_votes_by_hand(b.patch_logits)) and a.n_inputs == b.n_inputs == 3
  grid = sc.forward_sets(run, ds, sets, run.view("grid", patch_size=16))["all"][0]
  assert len(grid[0].patch_logits) == 4  # 32 px images: a 2 x 2 grid of 16 px patches.
  for theta in (0.0, 0.3):
    v = run.view("confident", patch_size=16, theta=theta)
    for a, r in zip(sc.revote(grid, v), grid):
      assert a.probs[1] == pytest.approx(_votes_by_hand(r.patch_logits, theta))


def test_statistics_rules():
  """mean ± std, the no-difference rule and the trend rule on hand-made numbers."""
  assert sc.pm([0.8, 1.0]) == "0.900 ± 0.141"
  assert sc.mean_std([0.5]) == (0.5, 0.0)
  assert sc.differs([0.9, 0.92, 0.91], [0.7, 0.72, 0.71]) == 1
  assert sc.differs([0.7, 0.9], [0.75, 0.8]) == 0  # Within the spread: none.
  assert sc.differs([1.0, 1.0], [0.9995, 0.9995]) == 0  # No spread at a ceiling, but below MIN_DIFF.
  t = sc.trend([1, 2, 4], [[0.6, 0.62], [0.7, 0.72], [0.9, 0.92]])
  assert t["slope"] == pytest.approx(0.1) and t["sign"] == 1
  assert sc.trend([1, 2], [[0.5, 0.9], [0.6, 0.8]])["sign"] == 0
  with pytest.raises(sc.cli.UserError):
    sc.set_keys(sc.defaults.get_config(), {"model.nope": 1})
  assert sc.parse_sets(["model.width=0.5", "data.train_sources=('a',)", "model.name=resnet50"]) == {
      "model.width": 0.5, "data.train_sources": ("a",), "model.name": "resnet50"}
  assert augment.tta_copies(["rand=15:2"])[0] == augment.Copy()
  # --set reaches the base config, so the data a study scores is the data it trains on (a matched
  # JPEG variant of the photo benchmark is tested on JPEG, not on the plain benchmark).
  args = sc.parse(sc.parser("x", "x"), ["--benchmark", "photo", "--set", "data.photo.postprocess='jpeg:65-100'",
                                          "--set", "data.photo.families=('tconv','sr')"])
  c = sc.base_config(args)
  assert c.data.photo.postprocess == "jpeg:65-100" and c.data.dir == "photo"
  assert sc.train_source(args, c, None) == "tconv"


def test_figures_show_every_value(tmp_path, monkeypatch):
  """A bar or point below the default y range (0.4) lowers the axis instead of vanishing under it."""
  made, real = [], sc.report.figure_and_axes
  monkeypatch.setattr(sc.report, "figure_and_axes", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
  sc.plot_bars(str(tmp_path / "b.png"), ["g"], ["a", "b"], {("g", "a"): [0.39, 0.37], ("g", "b"): [0.9]}, "y")
  sc.plot_series(str(tmp_path / "s.png"), [("a", [1, 2], [[0.8], [0.12]])], "x", "y")
  sc.plot_bars(str(tmp_path / "c.png"), ["g"], ["a"], {("g", "a"): [0.6, 0.7]}, "y")
  (bars, _), (series, _), (kept, top) = [fig.axes[0].get_ylim() for fig, _ in made]
  assert bars <= 0.37 - 0.05 and series <= 0.12 - 0.05
  assert (kept, top) == (0.4, 1.02)  # Nothing below: the range as asked.


@pytest.mark.study
def test_leaderboard_on_the_photo_benchmark(tmp_path, data_root):
  out, res = run_script("leaderboard", tmp_path, data_root, "--benchmark", "photo", "--debias")
  md = check_outputs(out, res, ["leaderboard_nn_conv.png", "leaderboard_nn_conv_debiased.png"],
                     ["Trained on nn_conv"])  # photo's default.
  rows = table_rows(md, "Trained on nn_conv")
  from scripts import leaderboard  # pylint: disable=g-import-not-at-top
  assert [r[0] for r in rows] == list(leaderboard.RECIPES)
  for r in rows:
    assert len(r) == 1 + 5 + 6 + 3  # Recipe, the families' acc / AP, six mean-unseen, three debiased.
    for c in r[-9:]:
      assert_pm(c)
  unseen = {r["recipe"] for r in res["records"] if r["set"] == "mean unseen"}
  assert unseen == set(leaderboard.RECIPES)
  # Debiasing JPEGs the fakes alone: every family's reals score as they do plainly.
  by = {(r["recipe"], r["seed"], r["set"]): r for r in res["records"]}
  for (recipe, seed, name), r in by.items():
    if not name.startswith("debiased ") and name != "mean unseen":
      assert by[recipe, seed, f"debiased {name}"]["real_acc"] == r["real_acc"], (recipe, name)
  assert "Best mean accuracy on the unseen generators" in md and "calibrated on val reals" in md
  for r in res["records"]:  # Every row has its threshold calibrated on val reals, and its metrics there.
    assert 0 <= r["threshold"] <= 1 + 1e-9 and 0 <= r["cal_accuracy"] <= 1 and 0 <= r["cal_real_acc"] <= 1


@pytest.mark.study
def test_generalisation_on_the_photo_benchmark(tmp_path, data_root):
  """--benchmark photo: its five content categories (N up to 4 seen), the tiny photo benchmark."""
  out, res = run_study("generalisation", tmp_path, data_root, "--benchmark", "photo")
  md = check_outputs(out, res, ["fig_1a_accuracy.png"], ["1a: content diversity (total training images fixed)"])
  assert "Data: the photo benchmark (fakejax.photo)" in md
  held = {r["held_out"] for r in res["records"]}
  assert held <= {"nature", "people", "objects", "science", "texture"} and len(held) == 1


def test_config_path_counts_returns_and_climbs_by_hand():
  """scripts/config_path.py's measure on made-up paths: train -> runs -> models -> runs -> train
  enters runs and train again (2 returns) and climbs models -> runs and runs -> train (2)."""
  cp = importlib.import_module("scripts.config_path")
  path = [("fakejax.train", "main"), ("fakejax.runs", "a"), ("fakejax.runs", "b"), ("fakejax.models", "c"),
          ("fakejax.runs", "d"), ("fakejax.train", "e")]
  assert cp.measure([path]) == {"stops": 6, "modules": 3, "returns": 2, "climbs": 2, "up_calls": 0}
  # Two runs: stops counted once over both, returns and climbs per run; an up-call seen in both, once.
  up = [[["fakejax.models", "c"], ["fakejax.runs", "d"]]]
  assert cp.measure([path, path[:2]], [up, up]) == {"stops": 6, "modules": 3, "returns": 2, "climbs": 2,
                                                    "up_calls": 1}
  assert [cp.layer(m) for m in ("__main__", "fakejax.training.loop", "fakejax.datasets.reader")] == [2, 1, 0]
