r"""Image folders -> a fakejax dataset (TFDS array_record, lossless pixels); or the synthetic one.

  python -m fakejax.prepare --root /data/CNNDetection --out /data/fj/cnndetection
  python -m fakejax.prepare --root /data/diffusion_datasets --out /data/fj/ufd \
      --pair guided=imagenet --pair '*=laion'
  python -m fakejax.prepare --root /data/GenImage --out /data/fj/genimage --storage raw
  python -m fakejax.prepare --root /data/faces --layout binary --fractions 0.56,0.24,0.2
  python -m fakejax.prepare --synthetic --out data --size 128 --counts 500,100,100

Layouts (--layout, default auto: the first that fits every image):
  cnndetection         ROOT/{train,val}/<category>/{0_real,1_fake}, ROOT/test/<generator>[/<category>]/{0_real,1_fake}
  genimage             ROOT/<generator>/[<subfolder>/]{train,val}/{ai,nature}
  universalfakedetect  ROOT/<generator>/1_fake beside ROOT/<real set>/0_real (all test; --pair)
  binary               ROOT/{real,fake}/**   (split by a seeded hash of the path)
  attribution          ROOT/{train,val,test}/<class>/*
  general              a real/fake folder anywhere, a split folder anywhere (else the hash split),
                       generator and category from the folders between

Every core decodes, hashes and encodes (--workers). The build summary (skipped files and why,
formats and sizes per class with format-bias warnings, images found in several splits, the
build speed and size on disk) is printed and saved as OUT/build_summary.json. Train on the
result with --config.data.dir=OUT.
"""

import os

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
                                 "train,val,test fractions of the hash split (images without a split folder).")
  _SEED = flags.DEFINE_integer("seed", 0, "Seed of the hash split / of the synthetic benchmark.")
  _DEDUP = flags.DEFINE_bool("dedup", False, "Remove images whose pixels already appear in an earlier split.")
  _MAX_PIXELS = flags.DEFINE_integer("max_pixels", 1 << 28, "Larger images are skipped (decompression bombs).")
  _MIN_SIZE = flags.DEFINE_integer("min_size", 8, "Images with a smaller side are skipped.")
  _STORAGE = flags.DEFINE_enum("storage", "png", datasets.STORAGES,
                               "Lossless pixel storage: png (small) or raw (uint8, ~10x faster to read).")
  _WORKERS = flags.DEFINE_integer("workers", None, "Decoding processes (default: every core).")
  _PAIR = flags.DEFINE_multi_string("pair", [], "GENERATOR=REAL_FOLDER[,...]: score a generator's fakes "
                                    "against these reals ('*' for every other generator).")
  _REAL_NAMES = flags.DEFINE_list("real_names", list(datasets.layouts.REAL_NAMES), "Folder names of real images.")
  _FAKE_NAMES = flags.DEFINE_list("fake_names", list(datasets.layouts.FAKE_NAMES), "Folder names of fake images.")
  _TRAIN_SOURCE = flags.DEFINE_string("train_source", "progan",
                                      "cnndetection: the generator of the train/val splits.")
  _SYNTHETIC = flags.DEFINE_bool("synthetic", False, "Generate the synthetic benchmark instead.")
  _SIZE = flags.DEFINE_integer("size", 64, "Synthetic image size.")
  _COUNTS = flags.DEFINE_list("counts", ["200", "50", "50"],
                              "Synthetic real images per category for train,val,test.")
  _CATEGORIES = flags.DEFINE_list("categories", list(synthetic.DEFAULT_CATEGORIES),
                                  f"Synthetic content categories (of {', '.join(synthetic.CATEGORIES)}).")


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments {argv[1:]}")
  if not _OUT.value:
    raise cli.UserError("--out is required")
  if _SYNTHETIC.value:
    counts = tuple(zip(datasets.SPLITS, map(int, _COUNTS.value)))
    ds = datasets.synthetic_dataset(_OUT.value, _SIZE.value, counts, _SEED.value,
                                    categories=tuple(_CATEGORIES.value), families=synthetic.FAMILIES,
                                    storage=_STORAGE.value, workers=_WORKERS.value)
    print(f"synthetic benchmark: {ds.path} (splits: {', '.join(ds.splits)})")
    return
  if not _ROOT.value:
    raise cli.UserError("--root (an image folder) or --synthetic is required")
  if not os.path.isdir(_ROOT.value):
    raise cli.UserError(f"--root {_ROOT.value} is not a folder")
  fractions = tuple(float(f) for f in _FRACTIONS.value)
  names = datasets.Names(tuple(_REAL_NAMES.value), tuple(_FAKE_NAMES.value), _TRAIN_SOURCE.value)
  ds, summary = datasets.prepare_folder(
      _ROOT.value, _OUT.value, layout=_LAYOUT.value, fractions=fractions, seed=_SEED.value,
      dedup=_DEDUP.value, max_pixels=_MAX_PIXELS.value, min_size=_MIN_SIZE.value,
      storage=_STORAGE.value, workers=_WORKERS.value, pairs=datasets.parse_pairs(_PAIR.value),
      names=names)
  print(datasets.format_summary(summary))
  print(f"dataset: {ds.path}  (train with --config.data.dir={ds.path})")


if __name__ == "__main__":
  cli.run(main, devices="none")
