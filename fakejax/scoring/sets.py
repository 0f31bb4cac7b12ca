"""Test sets: scored once, reported the field's way.

`score_sets` scores the union of some sets' images once (the sets of the protocol share images:
every generator's fakes are scored against the same reals), for training's validation,
`evaluate`, the studies, the leaderboard and the cross-GAN matrix alike. `set_metrics` is the
report row of one set, `mean_row` the mean row the papers print under a per-generator table,
and a calibrated threshold comes from real images only (`reals_threshold`, `add_calibrated`).
"""

import numpy as np

from fakejax import augment
from fakejax import cli
from fakejax import metrics as metrics_lib
from fakejax.scoring.engine import dataset_reader
from fakejax.scoring.engine import debiased_reader
from fakejax.scoring.views import VOTING

# The metrics the mean row averages (those present in the rows).
MEAN_KEYS = ("accuracy", "real_acc", "fake_acc", "ap", "auc", "eer", "top1", "plain_accuracy", "plain_ap",
             "cal_accuracy", "cal_real_acc", "cal_fake_acc")


def score_sets(evaluator, sets, view, label_key, split="test", *, copies=(augment.Copy(),),
               perturbation=None, threshold=0.5, progress=None):
  """Scores the images of several sets, each image once.

  Args:
    evaluator: a scoring.Evaluator.
    sets: [(dataset, name, record indices of `split`)]; the datasets may differ.
    view: a scoring.View.
    label_key: the index column holding the labels ('label' or 'class_label': runs.Task).
    split: the split the indices refer to.
    copies: test-time copies (augment.tta_copies).
    perturbation: an augment.Perturbation applied to every image first, or None.
    threshold: p_fake threshold.
    progress: optional callable(images finished so far, over every dataset).

  Returns:
    {name: (results, labels)} in the order of `sets`; an image of several sets is one Result.
  """
  scored, done = {}, 0
  for dataset in {id(ds): ds for ds, _, _ in sets}.values():
    members = [(name, idx) for ds, name, idx in sets if ds is dataset]
    union = np.unique(np.concatenate([np.asarray(idx, int) for _, idx in members]))
    pert = perturbation
    if pert is not None and pert.kind == "debias_jpeg":  # The fakes alone: in the reader, not the view.
      (sizes, load), pert = debiased_reader(dataset, split, union, pert.strength), None
    else:
      sizes, load = dataset_reader(dataset, split, union)
    results = evaluator.run(sizes, load, view, copies, pert, threshold=threshold,
                            progress=progress and (lambda n, done=done: progress(done + n)))
    done += len(union)
    labels = dataset.index(split)[label_key]
    pos = {int(i): k for k, i in enumerate(union)}
    for name, idx in members:
      scored[name] = ([results[pos[int(i)]] for i in idx], labels[idx])
  return {name: scored[name] for _, name, _ in sets}


def distinct_images(sets):
  """How many images score_sets scores for `sets` (each image once)."""
  by_dataset = {}
  for ds, _, idx in sets:
    by_dataset.setdefault(id(ds), set()).update(int(i) for i in idx)
  return sum(len(v) for v in by_dataset.values())


def set_metrics(results, labels, class_names, view, threshold=0.5):
  """The report row of a test set: binary (or attribution) metrics from the results.

  With test-time copies, the 'plain_*' keys hold the identity copy's accuracy and AP, for
  the side-by-side the TTA study reports.
  """
  bad = [r.error for r in results if r.error]
  if bad:
    raise cli.UserError(f"{len(bad)} image(s) could not be evaluated, e.g.: {bad[0]}")
  labels = np.asarray(labels)
  probs = np.stack([r.probs for r in results]) if results else np.zeros((0, len(class_names)))
  cut = 0.5 if view.rule in VOTING else threshold
  row = metrics_lib.summarize(labels, probs, class_names, cut, loss=view.rule not in VOTING)
  if results and len(results[0].copy_scores) > 1 and len(class_names) == 2:
    plain = np.array([r.copy_scores[0] for r in results])
    row.update({f"plain_{k}": v for k, v in metrics_lib.binary(labels, plain, cut).items()
                if k in ("accuracy", "ap", "auc")})
  if view.rule != "mean_prob" or any(r.n_inputs > 1 for r in results):  # Patches or tiles.
    patch_pred = np.concatenate([r.patch_logits.argmax(-1) for r in results])
    patch_labels = np.concatenate([np.full(r.n_inputs, l) for r, l in zip(results, labels)])
    row["patch_acc"] = float(np.mean(patch_pred == patch_labels))
    row["n_patches"] = int(len(patch_pred))
  return row


def mean_row(rows, name="mean"):
  """The row the papers print under a per-generator table: the mean of each metric."""
  out = {"test_set": name}
  for k in MEAN_KEYS:
    vals = [r[k] for r in rows if k in r]
    if vals:
      out[k] = float(np.nanmean(vals)) if not np.all(np.isnan(vals)) else float("nan")
  out["n_real"] = int(sum(r.get("n_real", 0) for r in rows))
  out["n_fake"] = int(sum(r.get("n_fake", 0) for r in rows))
  return out


def reals_threshold(p_fake_of_reals, target_real_acc):
  """(threshold, number of reals): the p_fake threshold that calls `target_real_acc` of these real
  images real (metrics.threshold_from_reals), chosen from reals only, never from test labels.
  Images that could not be scored (NaN) are left out."""
  scores = np.asarray(p_fake_of_reals, np.float64)
  scores = scores[np.isfinite(scores)]
  if not len(scores):
    raise cli.UserError("calibration: no real image could be scored")
  return metrics_lib.threshold_from_reals(scores, target_real_acc), int(len(scores))


def add_calibrated(rows, curves, threshold):
  """cal_accuracy / cal_real_acc / cal_fake_acc of each row at `threshold`, from its set's
  (labels, p_fake) in `curves` (keyed by the row's test_set)."""
  for r in rows:
    labels, scores = curves[r["test_set"]]
    m = metrics_lib.binary(labels, scores, threshold)
    r.update(cal_accuracy=m["accuracy"], cal_real_acc=m["real_acc"], cal_fake_acc=m["fake_acc"])
