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
variant), tiles, grid / random / confident voting, mean_logit / mean_prob (fakejax.scoring).
Every image is scored once, even when several sets share it (the reals of each generator's set).
Writes report.{json,csv,md} and PNGs (matrix, ROC, patch heatmaps, confusion matrix for
attribution, robustness curves) to --out (default RUN/eval_<mode>) and prints the table.
"""

import os

from absl import flags
import tqdm

from fakejax import augment
from fakejax import cli
from fakejax import datasets
from fakejax import report
from fakejax import runs
from fakejax import scoring
from fakejax import processes

if __name__ == "__main__":
  # Defined only when this file is the program, so other modules can import its functions.
  _F = cli.define_scoring_flags("evaluate")
  _DATASETS = flags.DEFINE_multi_string("dataset", [], "Prepared dataset folder(s), or 'synthetic' / 'photo' (the "
                                        "embedded benchmarks at their defaults); default: the run's.")
  _SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
  _GROUP_BY = flags.DEFINE_enum("group_by", "source", datasets.GROUP_BY,
                                "One test set per generator, per content category, or the whole split.")
  _SOURCES = flags.DEFINE_list("sources", [], "Keep only these generators (with their reals).")
  _PRESET = flags.DEFINE_enum("preset", "", [""] + list(scoring.PRESETS),
                              "A repository's official test transform (its mode, crop, resize and "
                              "padding; over --mode and --eval_resize): " + ", ".join(scoring.PRESETS) + ".")
  _EVAL_RESIZE = flags.DEFINE_integer("eval_resize", None, "Resize before the view (full: then crop; "
                                      "whole: to N x N). Default: the run's data.eval_resize.")
  _PERTURB = flags.DEFINE_multi_string("perturb", [], "Robustness: KIND:V1,V2 with KIND in "
                                       + ", ".join(augment.PERTURBATIONS) + " (each re-scores every set).")
  _DEBIAS = flags.DEFINE_string("debias", "", "Format-debiased protocol beside the plain one (DDA): 'jpeg' "
                                "(each fake JPEG'd at a quality drawn from the reals' own files) or 'jpeg:Q' "
                                "(every fake at Q; DDA's 96); the reals untouched. Rows 'debias_jpeg' in the "
                                "robustness table, with the reals' accuracy.")
  _SEED = flags.DEFINE_integer("seed", 0, "Seed of the random patches, TTA angles and noise.")
  _BATCH = flags.DEFINE_integer("batch_size", 0, "Global eval batch (default: the run's).")
  _TOP_N = flags.DEFINE_integer("top_n", 4, "Images in each patch-heatmap figure.")
  _OUT = flags.DEFINE_string("out", None, "Report folder (default: RUN/eval_<mode>).")
  _CALIBRATE = flags.DEFINE_string("calibrate", "", "Also report metrics at a threshold chosen from real "
                                   "images only: 'val' (the run's held-out reals: its dataset's val split) "
                                   "or a folder of your own real images. Never from test labels.")
  _TARGET_REAL = flags.DEFINE_float("target_real_acc", 0.95, "--calibrate: the share of those reals "
                                    "called real at the calibrated threshold.")
  cli.define_distributed_flags()


def test_sets(run, dataset_names, split, group_by, sources):
  """[(dataset, name, record indices)] of the protocol over `dataset_names` (default: the run's)."""
  if not (dataset_names or run.info["dataset"]):
    raise cli.UserError(f"{run.workdir} was converted, not trained on a dataset: name one with --dataset")
  names = dataset_names or [run.info["dataset"]]
  sets = []
  for path in names:
    ds = datasets.open_named(path)
    prefix = f"{os.path.basename(os.path.normpath(path))}:" if len(names) > 1 else ""
    sets += [(ds, name, idx) for name, idx in ds.test_sets(split, group_by, tuple(sources), prefix)]
  return sets


def write_report(out, run, view, rows, curves, examples, *, info, split, top_n):
  """report.{json,csv,md} and the figures into `out`; returns report.md's text."""
  plain = [r for r in rows if "perturbation" not in r]
  table = plain + ([scoring.mean_row(plain)] if len(plain) > 1 else [])
  os.makedirs(out, exist_ok=True)
  report.write_tables(out, table, info, robustness=[r for r in rows if "perturbation" in r])
  report.plot_matrix(table, os.path.join(out, "matrix.png"),
                     title=f"{os.path.basename(os.path.normpath(run.workdir))} ({view.mode})")
  if len(run.class_names) == 2:
    report.plot_roc(curves, os.path.join(out, "roc.png"))
  else:
    for r in plain:
      name = r["test_set"].replace(":", "_").replace("/", "_")
      report.plot_confusion(r["confusion"], run.class_names, os.path.join(out, f"confusion_{name}.png"),
                            title=r["test_set"])
  if len(plain) < len(rows):
    report.plot_robustness(plain, [r for r in rows if "perturbation" in r], os.path.join(out, "robustness.png"))
  if view.rule != "mean_prob":
    examples.sort(key=lambda e: e[0])
    for tag, chosen in (("most_confident", examples[::-1][:top_n]), ("least_confident", examples[:top_n])):
      report.plot_patch_heatmaps(
          [(title, ds.decode(ds.source(split)[i]), r) for _, title, ds, i, r in chosen],
          view.patch_size, os.path.join(out, f"patches_{tag}.png"), run.class_names)
  with open(os.path.join(out, "report.md")) as f:
    return f.read()


def main(argv):
  del argv
  f = flags.FLAGS
  processes.initialize(f.coordinator_address, f.num_processes, f.process_id)
  run = runs.Run(_F.workdir.value, _F.checkpoint.value, batch_size=_BATCH.value, threads=_F.threads.value,
                 dtype=_F.dtype.value)
  extra = {} if _EVAL_RESIZE.value is None else {"resize": _EVAL_RESIZE.value}
  preset = _PRESET.value or run.info.get("preset", "")  # A converted released detector's own.
  view = run.view(_F.mode.value, preset, seed=_SEED.value, **cli.view_settings(_F), **extra)
  copies = augment.tta_copies(_F.tta.value, _SEED.value)
  threshold = cli.threshold(_F, run)
  sets = test_sets(run, _DATASETS.value, _SPLIT.value, _GROUP_BY.value, _SOURCES.value)
  perturbations = augment.parse_perturbations(_PERTURB.value) + augment.parse_debias(_DEBIAS.value)
  with tqdm.tqdm(total=(1 + len(perturbations)) * scoring.distinct_images(sets), desc="evaluate", unit="img",
                 dynamic_ncols=True, disable=not processes.is_main()) as bar:
    done = [0, None]  # Images of finished conditions, the condition now.

    def progress(n, condition):
      if condition != done[1]:
        done[0], done[1] = bar.n, condition
        bar.set_postfix_str(condition)
      bar.update(done[0] + n - bar.n)

    rows, curves, examples = run.protocol(sets, view, _SPLIT.value, copies, perturbations,
                                              threshold=threshold, progress=progress)
  if not processes.is_main():
    return
  calibration = None
  if _CALIBRATE.value:
    cal_t, calibration = run.calibrate(view, _CALIBRATE.value, _TARGET_REAL.value, copies)
    scoring.add_calibrated([r for r in rows if "perturbation" not in r], curves, cal_t)
  out = _OUT.value or os.path.join(run.workdir, f"eval_{preset or view.mode}")
  info = {"workdir": os.path.abspath(run.workdir), "checkpoint_step": run.meta.get("step"),
          "mode": view.mode, "preset": preset or None, "view": view.__dict__, "tta": [c.name for c in copies],
          "threshold": threshold, "split": _SPLIT.value, "group_by": _GROUP_BY.value,
          "class_names": list(run.class_names),
          "datasets": [os.path.abspath(ds.path) for ds in {id(d): d for d, _, _ in sets}.values()],
          "training_indicators": report.training_indicators(os.path.join(run.workdir, "metrics.jsonl")),
          "calibration": calibration}
  print(write_report(out, run, view, rows, curves, examples, info=info, split=_SPLIT.value,
                     top_n=_TOP_N.value))
  print(f"report written to {out}")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  cli.run(main, devices="shared")
