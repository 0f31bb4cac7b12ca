r"""Scores a folder (or list) of images with a trained run and writes a CSV.

  python -m fakejax.predict --workdir runs/quick photos/ more.png --out predictions.csv
  python -m fakejax.predict --workdir RUN photos/ --mode grid --sort_into sorted/

CSV columns: path, p_fake, label, mode, n_patches, error. A file that cannot be
scored (corrupt, not an image, too small, decompression bomb) gets a row with
its error and the run goes on; the exit status is non-zero only if no file
could be scored. --sort_into copies files into OUT/real and OUT/fake (or one
folder per class for attribution runs).
"""

import csv
import os
import shutil
import sys

from absl import flags
import tqdm

from fakejax import cli
from fakejax import inference

if __name__ == "__main__":
  # Defined only when this file is the program, so other modules can import its functions.
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run folder written by fakejax.train.")
  _CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
  _OUT = flags.DEFINE_string("out", "predictions.csv", "Output CSV.")
  _SORT_INTO = flags.DEFINE_string("sort_into", None, "Copy files into OUT/<predicted class>/.")
  _MODE = flags.DEFINE_enum("mode", "full", inference.MODES, "Image-level decision rule.")
  _PATCH = flags.DEFINE_integer("patch_size", 32, "Patch side for the patch modes.")
  _K = flags.DEFINE_integer("k", 5, "Random patches per image in 'random' mode (odd).")
  _THETA = flags.DEFINE_float("theta", 0.5, "Confidence margin of 'confident' mode.")
  _THRESHOLD = flags.DEFINE_float("threshold", None, "p_fake threshold (default: the run's config).")
  _MAX_PIXELS = flags.DEFINE_integer("max_pixels", 1 << 28, "Larger images are refused (bombs).")


def list_images(inputs):
  """Files named directly, plus every file below named folders (sorted)."""
  files = []
  for p in inputs:
    if os.path.isdir(p):
      for dirpath, dirnames, filenames in os.walk(p):
        dirnames.sort()
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    elif os.path.exists(p):
      files.append(p)
    else:
      raise FileNotFoundError(f"{p} does not exist")
  return files


def predict(run, files, view, threshold, theta, max_pixels=1 << 28):
  """Rows of the CSV for `files`."""

  with tqdm.tqdm(total=len(files), desc="predict", unit="img") as bar:
    res = inference.score_images(run, view, len(files), lambda i: (files[i], files[i]), threshold,
                                 theta, progress=lambda n: bar.update(n - bar.n),
                                 max_pixels=max_pixels)
  rows = []
  for path, r in zip(files, res):
    ok = not r["error"]
    label = ""
    if ok:
      label = run.class_names[r["pred"]] if len(run.class_names) > 2 else ("fake" if r["pred"] else "real")
    rows.append({"path": path, "p_fake": f"{r['score']:.6f}" if ok else "", "label": label,
                 "mode": view.mode, "n_patches": r["n_patches"], "error": r["error"]})
  return rows


def _copy_into(path, folder):
  """Copies a file into folder without overwriting a namesake from another input folder."""
  os.makedirs(folder, exist_ok=True)
  base, ext = os.path.splitext(os.path.basename(path))
  dest, n = os.path.join(folder, base + ext), 0
  while os.path.exists(dest):
    n += 1
    dest = os.path.join(folder, f"{base}_{n}{ext}")
  shutil.copy2(path, dest)


def main(argv):
  inputs = argv[1:]
  if not inputs:
    raise cli.UserError("name at least one image or folder to score")
  run = inference.Run(_WORKDIR.value, _CHECKPOINT.value)
  view = inference.View(_MODE.value, _PATCH.value, _K.value)
  threshold = run.config.threshold if _THRESHOLD.value is None else _THRESHOLD.value
  files = list_images(inputs)
  rows = predict(run, files, view, threshold, _THETA.value, _MAX_PIXELS.value)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["path", "p_fake", "label", "mode", "n_patches", "error"])
    w.writeheader()
    w.writerows(rows)
  scored = [r for r in rows if not r["error"]]
  if _SORT_INTO.value:
    for r in scored:
      _copy_into(r["path"], os.path.join(_SORT_INTO.value, r["label"]))
  n_fake = sum(r["label"] != "real" for r in scored)
  print(f"{len(scored)}/{len(rows)} image(s) scored ({n_fake} not real, {len(rows) - len(scored)} "
        f"error(s)); CSV: {_OUT.value}")
  if not scored:
    sys.exit(1)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  cli.run(main)
