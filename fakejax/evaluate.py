r"""Evaluates a trained run on test sets: one row per set (cross-GAN / cross-content).

  python -m fakejax.evaluate --workdir runs/quick
  python -m fakejax.evaluate --workdir runs/quick --mode grid --patch_size 16
  python -m fakejax.evaluate --workdir RUN --dataset PREPARED_A --dataset PREPARED_B \
      --group_by category --sources tconv

By default the run's own dataset, test split, one set per generator (each set:
the real test images + that generator's fakes). Writes report.{json,csv,md} and
PNGs (matrix heatmap, ROC curves, patch heatmaps) to --out (default
RUN/eval_<mode>) and prints the Markdown table.
"""

import os

from absl import flags
import numpy as np
import tqdm

from fakejax import cli
from fakejax import datasets
from fakejax import inference
from fakejax import input_pipeline
from fakejax import metrics as metrics_lib
from fakejax import report

if __name__ == "__main__":
  # Defined only when this file is the program, so other modules can import its functions.
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run folder written by fakejax.train.")
  _CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
  _DATASETS = flags.DEFINE_multi_string("dataset", [], "Prepared dataset folder(s); default: the run's.")
  _SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
  _GROUP_BY = flags.DEFINE_enum("group_by", "source", ["source", "category", "none"],
                                "One test set per generator, per content category, or the whole split.")
  _SOURCES = flags.DEFINE_list("sources", [], "Keep only these generators (real images always kept).")
  _MODE = flags.DEFINE_enum("mode", "full", inference.MODES, "Image-level decision rule.")
  _PATCH = flags.DEFINE_integer("patch_size", 32, "Patch side for the patch modes (16/32/64/128).")
  _K = flags.DEFINE_integer("k", 5, "Random patches per image in 'random' mode (odd).")
  _THETA = flags.DEFINE_float("theta", 0.5, "Confidence margin |p_fake - p_real| of 'confident' mode.")
  _THRESHOLD = flags.DEFINE_float("threshold", None, "p_fake threshold (default: the run's config).")
  _SEED = flags.DEFINE_integer("seed", 0, "Seed of the random patches.")
  _TOP_N = flags.DEFINE_integer("top_n", 4, "Images in each patch-heatmap figure.")
  _OUT = flags.DEFINE_string("out", None, "Report folder (default: RUN/eval_<mode>).")


def test_sets(dataset, split, group_by, sources=(), prefix=""):
  """[(name, record indices)] of a dataset split, one per group (names start with `prefix`)."""
  idx = dataset.index(split)
  if group_by == "source":
    fakes = [s for s in dict.fromkeys(idx["source"]) if s != datasets.REAL and (not sources or s in sources)]
    if not fakes:
      raise ValueError(f"No generator in {dataset.path} split {split} matches sources={sources}")
    return [(prefix + s, dataset.select(split, sources=(s,))) for s in sorted(fakes)]
  if group_by == "category":
    cats = sorted(c for c in set(idx["category"]) if c)
    if not cats:
      raise ValueError(f"{dataset.path} has no content categories; use --group_by source or none")
    return [(prefix + c, dataset.select(split, sources=tuple(sources), categories=(c,)))
            for c in cats]
  return [(prefix + "all", dataset.select(split, sources=tuple(sources)))]


def evaluate_set(run, view, dataset, split, indices, threshold, theta, bar=None):
  """Scores one test set; returns (metrics row, per-image results, labels)."""
  src = input_pipeline.Subset(dataset.source(split), indices)
  key = "label" if run.info["task"] == "binary" else "class_label"
  labels = dataset.index(split)[key][indices]

  def reader(i):
    ex = src[i]
    return ex["path"].decode(), ex["image"]

  res = inference.score_images(run, view, len(indices), reader, threshold, theta,
                               progress=(lambda n: bar.update(n - bar.n)) if bar else None)
  bad = [r["error"] for r in res if r["error"]]
  if bad:
    raise ValueError(f"{len(bad)} image(s) could not be evaluated, e.g.: {bad[0]}")
  scores = np.array([r["score"] for r in res])
  preds = np.array([r["pred"] for r in res])
  if len(run.class_names) == 2:
    # Voting modes already thresholded each patch: the image decision is score >= 0.5.
    row = metrics_lib.binary(labels, scores, 0.5 if view.mode in inference.VOTING else threshold)
  else:
    row = metrics_lib.attribution(labels, np.eye(len(run.class_names))[preds], run.class_names)
    if datasets.REAL in run.class_names:
      row.update({k: v for k, v in metrics_lib.binary(labels != 0, scores, threshold).items()})
  patch_labels = np.concatenate([np.full(r["n_patches"], l) for r, l in zip(res, labels)])
  patch_pred = np.concatenate([r["patch_logits"].argmax(-1) for r in res])
  row["patch_acc"] = float((patch_pred == patch_labels).mean())
  row["n_patches"] = int(len(patch_pred))
  return row, res, labels


def main(argv):
  del argv
  workdir = _WORKDIR.value
  run = inference.Run(workdir, _CHECKPOINT.value)
  view = inference.View(_MODE.value, _PATCH.value, _K.value, _SEED.value)
  threshold = run.config.threshold if _THRESHOLD.value is None else _THRESHOLD.value
  out = _OUT.value or os.path.join(workdir, f"eval_{view.mode}")
  os.makedirs(out, exist_ok=True)
  dataset_paths = _DATASETS.value or [run.info["dataset"]]
  rows, curves, examples = [], {}, []
  sets = []
  for path in dataset_paths:
    ds = datasets.Dataset(path)
    prefix = f"{os.path.basename(os.path.normpath(path))}:" if len(dataset_paths) > 1 else ""
    sets += [(ds, name, idx) for name, idx in test_sets(ds, _SPLIT.value, _GROUP_BY.value,
                                                         tuple(_SOURCES.value), prefix)]
  for dataset, name, idx in tqdm.tqdm(sets, desc="test sets", unit="set"):
    with tqdm.tqdm(total=len(idx), desc=name, unit="img", leave=False) as bar:
      row, res, labels = evaluate_set(run, view, dataset, _SPLIT.value, idx, threshold,
                                      _THETA.value, bar)
    rows.append({"test_set": name, **row})
    curves[name] = (labels, np.array([r["score"] for r in res]))
    src = dataset.source(_SPLIT.value)
    true = lambda l: run.class_names[l] if len(run.class_names) > 2 else ("fake" if l else "real")
    examples += [(abs(r["score"] - 0.5), f"{name} #{idx[i]} (true {true(labels[i])})", int(idx[i]),
                  src, r) for i, r in enumerate(res)]
  info = {"workdir": os.path.abspath(workdir), "checkpoint_step": run.meta.get("step"),
          "mode": view.mode, "patch_size": view.patch_size if view.mode != "full" else None,
          "k": view.k if view.mode == "random" else None, "threshold": threshold,
          "theta": _THETA.value if view.mode == "confident" else None, "split": _SPLIT.value,
          "class_names": list(run.class_names),
          "training_indicators": report.training_indicators(os.path.join(workdir, "metrics.jsonl"))}
  report.write_tables(out, rows, info)
  report.plot_matrix(rows, os.path.join(out, "matrix.png"), title=f"{os.path.basename(workdir)} ({view.mode})")
  if len(run.class_names) == 2:
    report.plot_roc(curves, os.path.join(out, "roc.png"))
  if view.mode != "full":
    examples.sort(key=lambda e: e[0])
    n = _TOP_N.value
    for tag, chosen in (("most_confident", examples[::-1][:n]), ("least_confident", examples[:n])):
      report.plot_patch_heatmaps(
          [(title, datasets.decode_png(src[i]["image"]), r) for _, title, i, src, r in chosen],
          view.patch_size, os.path.join(out, f"patches_{tag}.png"), run.class_names)
  print(open(os.path.join(out, "report.md")).read())
  print(f"report written to {out}")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  cli.run(main)
