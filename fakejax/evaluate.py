r"""Evaluates a trained run on test sets with the field's protocol: one row per generator (each
generator's fakes against its own reals) or per content category, and the mean row the papers
print.

  python -m fakejax.evaluate --workdir runs/quick
  python -m fakejax.evaluate --workdir RUN --dataset /data/fj/cnndetection --mode whole
  python -m fakejax.evaluate --workdir RUN --mode grid --patch_size 16
  python -m fakejax.evaluate --workdir RUN --preset npr_forensynths   # a repository's test transform
  python -m fakejax.evaluate --workdir RUN --tta flip --tta rand=15:4
  python -m fakejax.evaluate --workdir RUN --perturb jpeg:95,75,50,30 --perturb blur:1,2,3
  python -m fakejax.evaluate --workdir RUN --dataset PREPARED_A --dataset PREPARED_B \
      --group_by category --sources tconv

By default the run's own dataset, test split, the 'full' view (the training crop). Modes:
full, whole (native size, CNNDetection's no-crop protocol; --eval_resize N for their resize
variant), tiles, grid / random / confident voting, mean_logit / mean_prob (fakejax.evaluator).
Writes report.{json,csv,md} and PNGs (matrix, ROC, patch heatmaps, confusion matrix for
attribution, robustness curves) to --out (default RUN/eval_<mode>) and prints the table.
"""

import os

from absl import flags
import numpy as np
import tqdm

from fakejax import augment
from fakejax import cli
from fakejax import datasets
from fakejax import evaluator
from fakejax import metrics as metrics_lib
from fakejax import report
from fakejax import sharding

if __name__ == "__main__":
  # Defined only when this file is the program, so other modules can import its functions.
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run folder written by fakejax.train.")
  _CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
  _DTYPE = cli.define_dtype_flag()
  _DATASETS = flags.DEFINE_multi_string("dataset", [], "Prepared dataset folder(s), or 'synthetic' / 'photo' (the "
                                      "embedded benchmarks at their defaults); default: the run's.")
  _SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
  _GROUP_BY = flags.DEFINE_enum("group_by", "source", datasets.GROUP_BY,
                                "One test set per generator, per content category, or the whole split.")
  _SOURCES = flags.DEFINE_list("sources", [], "Keep only these generators (with their reals).")
  _MODE = flags.DEFINE_enum("mode", "full", evaluator.MODES, "View and image-level decision rule.")
  _PRESET = flags.DEFINE_enum("preset", "", [""] + list(evaluator.PRESETS),
                              "A repository's official test transform (its mode, crop, resize and "
                              "padding; over --mode and --eval_resize): " + ", ".join(evaluator.PRESETS) + ".")
  _EVAL_RESIZE = flags.DEFINE_integer("eval_resize", None, "Resize before the view (full: then crop; "
                                      "whole: to N x N). Default: the run's data.eval_resize.")
  _PATCH = flags.DEFINE_integer("patch_size", 32, "Patch side for the patch modes (16/32/64/128).")
  _K = flags.DEFINE_integer("k", 5, "Random patches per image in 'random' mode (odd).")
  _THETA = flags.DEFINE_float("theta", 0.5, "Confidence margin |p_fake - p_real| of 'confident' mode.")
  _THRESHOLD = flags.DEFINE_float("threshold", None, "p_fake threshold (default: the run's config).")
  _TTA = flags.DEFINE_multi_string("tta", [], "Test-time copies: flip, rot=DEG (+-DEG), rand=RANGE:N.")
  _PERTURB = flags.DEFINE_multi_string("perturb", [], "Robustness: KIND:V1,V2 with KIND in "
                                       + ", ".join(augment.PERTURBATIONS) + " (each re-scores every set).")
  _SEED = flags.DEFINE_integer("seed", 0, "Seed of the random patches, TTA angles and noise.")
  _BATCH = flags.DEFINE_integer("batch_size", 0, "Global eval batch (default: the run's).")
  _TOP_N = flags.DEFINE_integer("top_n", 4, "Images in each patch-heatmap figure.")
  _OUT = flags.DEFINE_string("out", None, "Report folder (default: RUN/eval_<mode>).")
  _THREADS = flags.DEFINE_integer("threads", 0, "Image-decoding threads (default: the run's eval_threads, "
                                  "0: one per core).")
  # Exact by default for reported numbers: on make train's run, size buckets moved logits by up
  # to 22 % of their scale (p_fake by up to 0.19; docs/evaluation.md).
  _EXACT = flags.DEFINE_bool("exact_sizes", True, "Whole images: one compiled program per image size, "
                             "no padding (--noexact_sizes: padded to size buckets, see fakejax.evaluator).")
  _CALIBRATE = flags.DEFINE_string("calibrate", "", "Also report metrics at a threshold chosen from real "
                                   "images only: 'val' (the run's held-out reals: its dataset's val split) "
                                   "or a folder of your own real images. Never from test labels.")
  _TARGET_REAL = flags.DEFINE_float("target_real_acc", 0.95, "--calibrate: the share of those reals "
                                    "called real at the calibrated threshold.")
  cli.define_distributed_flags()

MEAN_KEYS = ("accuracy", "real_acc", "fake_acc", "ap", "auc", "eer", "top1", "plain_accuracy", "plain_ap",
             "cal_accuracy", "cal_real_acc", "cal_fake_acc")


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


def evaluate(run, sets, view, split, copies=(augment.Copy(),), perturbations=(), threshold=0.5,
             show_progress=True):
  """Scores every set under every condition (plain, then each perturbation).

  Args:
    run: an evaluator.Run.
    sets: [(dataset, name, record indices)].
    view: an evaluator.View.
    split: the split the indices refer to.
    copies: test-time copies.
    perturbations: augment.Perturbation list (robustness protocol).
    threshold: p_fake threshold.
    show_progress: progress bars (process 0 only).

  Returns:
    (rows, curves {name: (labels, scores)}, examples for patch heatmaps) of the plain condition
    first; rows of the perturbed conditions carry 'perturbation' and 'strength'.
  """
  key = "label" if run.info["task"] == "binary" else "class_label"
  rows, curves, examples = [], {}, []
  conditions = (None,) + tuple(perturbations)
  bar = tqdm.tqdm(total=len(conditions) * sum(len(idx) for _, _, idx in sets), desc="evaluate", unit="img",
                  dynamic_ncols=True, disable=not show_progress)
  for pert in conditions:
    for dataset, name, idx in sets:
      bar.set_postfix_str(f"{name}{' ' + pert.name if pert else ''}")
      sizes, load = evaluator.dataset_reader(dataset, split, idx)
      start = bar.n
      res = run.evaluator.run(sizes, load, view, copies, pert, threshold,
                              progress=lambda n, start=start: bar.update(start + n - bar.n))
      labels = dataset.index(split)[key][idx]
      row = {"test_set": name, **evaluator.set_metrics(res, labels, run.class_names, view, threshold)}
      if pert:
        row.update(perturbation=pert.kind, strength=pert.strength)
      else:
        curves[name] = (labels, np.array([r.score for r in res]))
        examples += [(abs(r.score - 0.5), f"{name} #{idx[i]} (true {run.label_name(labels[i])})",
                      dataset, int(idx[i]), r) for i, r in enumerate(res)]
      rows.append(row)
  bar.close()
  return rows, curves, examples


def calibrate(run, view, source, target_real_acc, copies=(augment.Copy(),)):
  """(threshold, info) chosen from real images only (metrics.threshold_from_reals).

  Args:
    run: an evaluator.Run (binary, with a real class).
    view: the View the test sets are scored with (the reals are scored the same way).
    source: 'val' (the reals of the run's dataset's val split) or a folder of real images.
    target_real_acc: the share of those reals called real.
    copies: test-time copies, as for the test sets.
  """
  if run.class_names[0] != "real" or len(run.class_names) != 2:
    raise cli.UserError("--calibrate needs a binary real/fake run")
  if source == "val":
    if not run.info["dataset"]:
      raise cli.UserError("--calibrate val: this run has no dataset of its own; give a folder of reals")
    ds = datasets.open_named(run.info["dataset"])
    if "val" not in ds.splits:
      raise cli.UserError(f"--calibrate val: {run.info['dataset']} has no val split; give a folder of reals")
    idx = np.flatnonzero(ds.index("val")["label"] == 0)
    sizes, load = evaluator.dataset_reader(ds, "val", idx)
  elif os.path.isdir(source):
    from fakejax import predict  # pylint: disable=g-import-not-at-top
    sizes, load = evaluator.file_reader(predict.list_images([source]))
  else:
    raise cli.UserError(f"--calibrate {source!r}: expected 'val' or a folder of real images")
  scores = np.array([r.score for r in run.evaluator.run(sizes, load, view, copies)], np.float64)
  scores = scores[np.isfinite(scores)]  # Unreadable files have no score.
  if not len(scores):
    raise cli.UserError(f"--calibrate {source!r}: no real image could be scored")
  t = metrics_lib.threshold_from_reals(scores, target_real_acc)
  return t, {"source": source, "n_reals": int(len(scores)), "target_real_acc": target_real_acc,
             "threshold": t}


def add_calibrated(rows, curves, threshold):
  """cal_accuracy / cal_real_acc / cal_fake_acc of each row at `threshold`, from its scores."""
  for r in rows:
    labels, scores = curves[r["test_set"]]
    m = metrics_lib.binary(labels, scores, threshold)
    r.update(cal_accuracy=m["accuracy"], cal_real_acc=m["real_acc"], cal_fake_acc=m["fake_acc"])


def main(argv):
  del argv
  sharding.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes, flags.FLAGS.process_id)
  workdir = _WORKDIR.value
  run = evaluator.Run(workdir, _CHECKPOINT.value, batch_size=_BATCH.value, threads=_THREADS.value,
                      dtype=_DTYPE.value)
  extra = {} if _EVAL_RESIZE.value is None else {"resize": _EVAL_RESIZE.value}
  preset = _PRESET.value or run.info.get("preset", "")  # A converted released detector's own.
  view = run.view(_MODE.value, preset, patch_size=_PATCH.value, k=_K.value, seed=_SEED.value,
                  theta=_THETA.value, exact_sizes=_EXACT.value, **extra)
  copies = augment.tta_copies(_TTA.value, _SEED.value)
  perturbations = augment.parse_perturbations(_PERTURB.value)
  threshold = run.config.threshold if _THRESHOLD.value is None else _THRESHOLD.value
  out = _OUT.value or os.path.join(workdir, f"eval_{preset or view.mode}")
  if not (_DATASETS.value or run.info["dataset"]):
    raise cli.UserError(f"{workdir} was converted, not trained on a dataset: name one with --dataset")
  dataset_paths = _DATASETS.value or [run.info["dataset"]]
  sets = []
  for path in dataset_paths:
    ds = datasets.open_named(path)
    prefix = f"{os.path.basename(os.path.normpath(path))}:" if len(dataset_paths) > 1 else ""
    sets += [(ds, name, idx) for name, idx in ds.test_sets(_SPLIT.value, _GROUP_BY.value,
                                                           tuple(_SOURCES.value), prefix)]
  main_process = sharding.is_main()
  rows, curves, examples = evaluate(run, sets, view, _SPLIT.value, copies, perturbations, threshold,
                                    show_progress=main_process)
  if not main_process:
    return
  plain = [r for r in rows if "perturbation" not in r]
  calibration = None
  if _CALIBRATE.value:
    cal_t, calibration = calibrate(run, view, _CALIBRATE.value, _TARGET_REAL.value, copies)
    add_calibrated(plain, curves, cal_t)
  table = plain + ([mean_row(plain)] if len(plain) > 1 else [])
  info = {"workdir": os.path.abspath(workdir), "checkpoint_step": run.meta.get("step"),
          "mode": view.mode, "preset": preset or None, "view": view.__dict__, "tta": [c.name for c in copies],
          "threshold": threshold, "split": _SPLIT.value, "group_by": _GROUP_BY.value,
          "class_names": list(run.class_names), "datasets": [os.path.abspath(p) for p in dataset_paths],
          "training_indicators": report.training_indicators(os.path.join(workdir, "metrics.jsonl")),
          "calibration": calibration}
  os.makedirs(out, exist_ok=True)
  report.write_tables(out, table, info, robustness=[r for r in rows if "perturbation" in r])
  report.plot_matrix(table, os.path.join(out, "matrix.png"),
                     title=f"{os.path.basename(os.path.normpath(workdir))} ({view.mode})")
  if len(run.class_names) == 2:
    report.plot_roc(curves, os.path.join(out, "roc.png"))
  else:
    for r in plain:
      report.plot_confusion(r["confusion"], run.class_names, os.path.join(out, f"confusion_{r['test_set'].replace(':', '_').replace('/', '_')}.png"),
                            title=r["test_set"])
  if perturbations:
    report.plot_robustness(plain, [r for r in rows if "perturbation" in r], os.path.join(out, "robustness.png"))
  if view.rule != "mean_prob":
    examples.sort(key=lambda e: e[0])
    n = _TOP_N.value
    for tag, chosen in (("most_confident", examples[::-1][:n]), ("least_confident", examples[:n])):
      report.plot_patch_heatmaps(
          [(title, ds.decode(ds.source(_SPLIT.value)[i]), r) for _, title, ds, i, r in chosen],
          view.patch_size, os.path.join(out, f"patches_{tag}.png"), run.class_names)
  with open(os.path.join(out, "report.md")) as f:
    print(f.read())
  print(f"report written to {out}")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  cli.run(main, devices="shared")
