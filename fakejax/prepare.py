r"""Image folders -> a fakejax dataset (TFDS array_record, lossless pixels); or the synthetic one.

  python -m fakejax.prepare --root /data/CNNDetection --out /data/fj/cnndetection [--dedup]
  python -m fakejax.prepare --root /data/faces --layout binary --fractions 0.56,0.24,0.2
  python -m fakejax.prepare --synthetic --out data --size 128 --train 500

Layouts (auto-detected):
  cnndetection  ROOT/{train,val,test}/<generator-or-category>/{0_real,1_fake}/*
  binary        ROOT/{real,fake}/**   (split by a seeded hash of the path)
  attribution   ROOT/{train,val,test}/<class>/*

The build summary (skipped files and why, formats and sizes per class with
format-bias warnings, images found in several splits) is printed and saved as
OUT/build_summary.json. Train on the result with --config.data.dir=OUT.
"""

from absl import flags

from fakejax import cli
from fakejax import datasets
from fakejax import synthetic

if __name__ == "__main__":
  # Defined only when this file is the program, so other modules can import its functions.
  _ROOT = flags.DEFINE_string("root", None, "Image-folder tree to convert.")
  _OUT = flags.DEFINE_string("out", None, "Output dataset folder (synthetic: the cache folder).")
  _LAYOUT = flags.DEFINE_enum("layout", "auto", ("auto",) + datasets.LAYOUTS, "Folder layout.")
  _FRACTIONS = flags.DEFINE_list("fractions", ["0.56", "0.24", "0.20"],
                                 "train,val,test fractions of the 'binary' layout.")
  _SEED = flags.DEFINE_integer("seed", 0, "Seed of the hash split / of the synthetic benchmark.")
  _DEDUP = flags.DEFINE_bool("dedup", False, "Remove images whose pixels already appear in an earlier split.")
  _MAX_PIXELS = flags.DEFINE_integer("max_pixels", 1 << 28, "Larger images are skipped (decompression bombs).")
  _MIN_SIZE = flags.DEFINE_integer("min_size", 8, "Images with a smaller side are skipped.")
  _SYNTHETIC = flags.DEFINE_bool("synthetic", False, "Generate the synthetic benchmark instead.")
  _SIZE = flags.DEFINE_integer("size", 64, "Synthetic image size.")
  _COUNTS = flags.DEFINE_list("counts", ["200", "50", "50"],
                              "Synthetic real images per category for train,val,test.")


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments {argv[1:]}")
  if not _OUT.value:
    raise cli.UserError("--out is required")
  if _SYNTHETIC.value:
    counts = tuple(zip(datasets.SPLITS, map(int, _COUNTS.value)))
    ds = datasets.synthetic_dataset(_OUT.value, _SIZE.value, counts, _SEED.value,
                                    synthetic.CATEGORIES, synthetic.FAMILIES)
    print(f"synthetic benchmark: {ds.path} (splits: {', '.join(ds.splits)})")
    return
  if not _ROOT.value:
    raise cli.UserError("--root (an image folder) or --synthetic is required")
  fractions = tuple(float(f) for f in _FRACTIONS.value)
  ds, summary = datasets.prepare_folder(_ROOT.value, _OUT.value, _LAYOUT.value, fractions,
                                        _SEED.value, _DEDUP.value, _MAX_PIXELS.value, _MIN_SIZE.value)
  print(datasets.format_summary(summary))
  print(f"dataset: {ds.path}  (train with --config.data.dir={ds.path})")


if __name__ == "__main__":
  cli.run(main)
