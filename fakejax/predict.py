r"""Scores a folder (or list) of images with a trained run and writes a CSV.

  python -m fakejax.predict --workdir runs/quick photos/ more.png --out predictions.csv
  python -m fakejax.predict --workdir RUN photos/ --mode grid --sort_into sorted/
  python -m fakejax.predict --workdir RUN photos/ --tta flip

By default every image is judged whole ('auto': the image at its native size through the fully
convolutional model, or tiles averaged for photos over --max_whole_pixels), never by a crop of
it. CSV columns: path, p_fake, label, mode, view (the view used for that image), n_patches,
error. A file that cannot be scored (corrupt, not an image, too small, decompression bomb)
gets a row with its error and the run goes on; the exit status is non-zero only if no file
could be scored. --sort_into copies files into OUT/real and OUT/fake (or one folder per class
for attribution runs).
"""

import csv
import os
import shutil
import sys

from absl import flags
import tqdm

from fakejax import augment
from fakejax import cli
from fakejax import datasets
from fakejax import runs
from fakejax import scoring
from fakejax import processes

if __name__ == "__main__":
  # Defined only when this file is the program, so other modules can import its functions.
  _F = cli.define_scoring_flags("predict")
  _OUT = flags.DEFINE_string("out", "predictions.csv", "Output CSV.")
  _SORT_INTO = flags.DEFINE_string("sort_into", None, "Copy files into OUT/<predicted class>/.")
  _MAX_PIXELS = flags.DEFINE_integer("max_pixels", 1 << 28, "Larger images are refused (bombs).")
  _MAX_WHOLE = flags.DEFINE_integer("max_whole_pixels", 1 << 22, "'auto': larger images are judged "
                                    "by tiles of --tile px.")
  _TILE = flags.DEFINE_integer("tile", 1024, "Tile side of the 'tiles' view.")
  cli.define_distributed_flags()

COLUMNS = ("path", "p_fake", "label", "mode", "view", "n_patches", "error")


def predict(run, files, view, threshold, copies=(augment.Copy(),), max_pixels=1 << 28):
  """Rows of the CSV for `files` (dicts with COLUMNS)."""
  sizes, load = scoring.file_reader(files, max_pixels)
  with tqdm.tqdm(total=len(files), desc="predict", unit="img", disable=not processes.is_main()) as bar:
    res = run.evaluator.run(sizes, load, view, copies, threshold=threshold,
                            progress=lambda n: bar.update(n - bar.n))
  rows = []
  for path, r in zip(files, res):
    ok = not r.error
    rows.append({"path": path, "p_fake": f"{r.score:.6f}" if ok and r.score == r.score else "",
                 "label": run.label_name(r.pred) if ok else "", "mode": view.mode,
                 "view": r.view if ok else "", "n_patches": r.n_inputs, "error": r.error})
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
  processes.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes, flags.FLAGS.process_id)
  run = runs.Run(_F.workdir.value, _F.checkpoint.value, threads=_F.threads.value, dtype=_F.dtype.value)
  view = run.view(_F.mode.value, tile=_TILE.value, max_whole_pixels=_MAX_WHOLE.value, **cli.view_settings(_F))
  threshold = cli.threshold(_F, run)
  files = datasets.list_images(inputs)
  rows = predict(run, files, view, threshold, augment.tta_copies(_F.tta.value), _MAX_PIXELS.value)
  scored = [r for r in rows if not r["error"]]
  if processes.is_main():
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=COLUMNS)
      w.writeheader()
      w.writerows(rows)
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
  cli.run(main, devices="shared")
