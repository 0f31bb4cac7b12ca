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
from fakejax import evaluator
from fakejax import sharding

if __name__ == "__main__":
  # Defined only when this file is the program, so other modules can import its functions.
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run folder written by fakejax.train.")
  _CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
  _DTYPE = cli.define_dtype_flag()
  _OUT = flags.DEFINE_string("out", "predictions.csv", "Output CSV.")
  _SORT_INTO = flags.DEFINE_string("sort_into", None, "Copy files into OUT/<predicted class>/.")
  _MODE = flags.DEFINE_enum("mode", "auto", evaluator.MODES, "View and image-level decision rule.")
  _PATCH = flags.DEFINE_integer("patch_size", 32, "Patch side for the patch modes.")
  _K = flags.DEFINE_integer("k", 5, "Random patches per image in 'random' mode (odd).")
  _THETA = flags.DEFINE_float("theta", 0.5, "Confidence margin of 'confident' mode.")
  _THRESHOLD = flags.DEFINE_float("threshold", None, "p_fake threshold (default: the run's config).")
  _TTA = flags.DEFINE_multi_string("tta", [], "Test-time copies: flip, rot=DEG, rand=RANGE:N.")
  _MAX_PIXELS = flags.DEFINE_integer("max_pixels", 1 << 28, "Larger images are refused (bombs).")
  _MAX_WHOLE = flags.DEFINE_integer("max_whole_pixels", 1 << 22, "'auto': larger images are judged "
                                    "by tiles of --tile px.")
  _TILE = flags.DEFINE_integer("tile", 1024, "Tile side of the 'tiles' view.")
  _THREADS = flags.DEFINE_integer("threads", 0, "Image-decoding threads (default: the run's eval_threads, "
                                  "0: one per core).")
  _EXACT = flags.DEFINE_bool("exact_sizes", False, "Whole images: one compiled program per image "
                             "size, no padding (default: padded to size buckets, see fakejax.evaluator).")
  cli.define_distributed_flags()

COLUMNS = ("path", "p_fake", "label", "mode", "view", "n_patches", "error")


def list_images(inputs):
  """Files named directly, plus every file below named folders (sorted; hidden files skipped)."""
  files = []
  for p in inputs:
    if os.path.isdir(p):
      for dirpath, dirnames, filenames in os.walk(p):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    elif os.path.exists(p):
      files.append(p)
    else:
      raise FileNotFoundError(f"{p} does not exist")
  return files


def predict(run, files, view, threshold, copies=(augment.Copy(),), max_pixels=1 << 28):
  """Rows of the CSV for `files` (dicts with COLUMNS)."""
  sizes, load = evaluator.file_reader(files, max_pixels)
  with tqdm.tqdm(total=len(files), desc="predict", unit="img", disable=not sharding.is_main()) as bar:
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
  sharding.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes, flags.FLAGS.process_id)
  run = evaluator.Run(_WORKDIR.value, _CHECKPOINT.value, threads=_THREADS.value, dtype=_DTYPE.value)
  view = run.view(_MODE.value, patch_size=_PATCH.value, k=_K.value, theta=_THETA.value,
                  tile=_TILE.value, max_whole_pixels=_MAX_WHOLE.value, exact_sizes=_EXACT.value)
  threshold = run.config.threshold if _THRESHOLD.value is None else _THRESHOLD.value
  files = list_images(inputs)
  rows = predict(run, files, view, threshold, augment.tta_copies(_TTA.value), _MAX_PIXELS.value)
  scored = [r for r in rows if not r["error"]]
  if sharding.is_main():
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
