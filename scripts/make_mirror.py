r"""Writes a small image-folder tree laid out like a published dataset, from the synthetic benchmark.

  python scripts/make_mirror.py --layout cnndetection --out /tmp/cnndet_mirror
  python -m fakejax.prepare --root /tmp/cnndet_mirror --out data/cnndet_mirror

A way to try the real-data path (prepare, the per-generator protocol, whole-image evaluation)
without downloading anything. The synthetic generator families stand in for published
generators: tconv = progan (the CNNDetection train set), nn_conv = stylegan, bilinear_conv =
biggan, pixel_shuffle = gaugan. As in the real test set, each generator folder has its own real
images, and progan/stylegan are split by content category while biggan/gaugan are flat.
"""

import argparse
import os

from PIL import Image

from fakejax import synthetic

NAMES = {"tconv": "progan", "nn_conv": "stylegan", "bilinear_conv": "biggan", "pixel_shuffle": "gaugan"}
NESTED = ("progan", "stylegan")


def _save(path, img):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(img).save(path)


def cnndetection(out, size, n_train, n_test, seed):
  """ROOT/{train,val}/<category>/{0_real,1_fake}; ROOT/test/<generator>[/<category>]/{0_real,1_fake}."""
  cats = synthetic.DEFAULT_CATEGORIES
  counts = {"train": n_train, "val": max(n_train // 4, 1), "test": n_test * len(NAMES)}
  for split in ("train", "val"):
    for cat in cats:
      for i in range(counts[split]):
        real, fake = synthetic.generate_one(counts, size, seed, ("tconv",), (split, cat, i))
        _save(f"{out}/{split}/{cat}/0_real/{i:05d}.png", real["image"])
        _save(f"{out}/{split}/{cat}/1_fake/{i:05d}.png", fake["image"])
  for g, (family, name) in enumerate(NAMES.items()):
    for cat in cats:
      for i in range(g * n_test, (g + 1) * n_test):  # Each generator gets reals of its own.
        real, fake = synthetic.generate_one(counts, size, seed, (family,), ("test", cat, i))
        where = f"{out}/test/{name}/{cat}" if name in NESTED else f"{out}/test/{name}"
        _save(f"{where}/0_real/{cat}_{i:05d}.png", real["image"])
        _save(f"{where}/1_fake/{cat}_{i:05d}.png", fake["image"])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--layout", default="cnndetection", choices=["cnndetection"])
  p.add_argument("--out", required=True)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--train", type=int, default=100, help="Real images per category in train.")
  p.add_argument("--test", type=int, default=20, help="Real images per category per generator in test.")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()
  if os.path.exists(a.out):
    raise SystemExit(f"{a.out} already exists")
  cnndetection(a.out, a.size, a.train, a.test, a.seed)
  n = sum(len(f) for _, _, f in os.walk(a.out))
  print(f"{n} images in {a.out} (CNNDetection layout); prepare it with\n"
        f"  python -m fakejax.prepare --root {a.out} --out data/{os.path.basename(os.path.normpath(a.out))}")


if __name__ == "__main__":
  main()
