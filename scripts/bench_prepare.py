r"""Peak memory and speed of `fakejax.prepare` as the dataset grows (a benchmark, not a test).

  python scripts/bench_prepare.py --sizes 10000,100000 --storages raw,png --work /tmp/bench_prepare

For each size it writes a binary tree (real/, fake/) of distinct 256 px PNG files once, then,
for each storage, runs `python -m fakejax.prepare` in a child process and reads the child's
peak resident memory from the kernel (wait4's ru_maxrss: the largest of the main process and
its worker processes) and the build speed from its build_summary.json. Each build is deleted
after it is measured; the image trees are kept for reruns (--keep_trees=false deletes them).
Results: docs/performance.md ("Prepare: memory at any size").
"""

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image


def flags():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", default="10000,100000", help="Numbers of images, comma-separated.")
  p.add_argument("--storages", default="raw,png", help="Storages to build, comma-separated.")
  p.add_argument("--work", default="/tmp/bench_prepare", help="Scratch folder (trees and builds).")
  p.add_argument("--side", type=int, default=256, help="Image side.")
  p.add_argument("--workers", type=int, default=0, help="prepare --workers (0: its default, every core).")
  p.add_argument("--keep_trees", type=int, default=1, help="Keep the generated image trees (1) or not (0).")
  return p


def _image(i, side):
  """A distinct, photo-like (smooth, so PNG stays fast) image: seeded low-frequency noise."""
  rng = np.random.default_rng(i)
  low = rng.integers(0, 256, (side // 16, side // 16, 3)).astype(np.float32)
  img = np.kron(low, np.ones((16, 16, 1), np.float32))[:side, :side]
  img += rng.normal(0, 4, img.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


def _write(task):
  root, i, side = task
  cls = "fake" if i % 2 else "real"
  Image.fromarray(_image(i, side)).save(os.path.join(root, cls, f"{i:07d}.png"), compress_level=1)


def make_tree(root, n, side):
  """A real/fake tree of n distinct PNGs (skipped when a complete one is there)."""
  done = os.path.join(root, ".complete")
  if os.path.exists(done):
    return
  for cls in ("real", "fake"):
    os.makedirs(os.path.join(root, cls), exist_ok=True)
  with multiprocessing.Pool() as pool:
    for _ in pool.imap_unordered(_write, [(root, i, side) for i in range(n)], chunksize=256):
      pass
  open(done, "w").close()


def measure(tree, out, storage, workers):
  """(peak RSS MiB, seconds, build summary) of one prepare run in a child process."""
  shutil.rmtree(out, ignore_errors=True)
  cmd = [sys.executable, "-m", "fakejax.prepare", f"--root={tree}", f"--out={out}", f"--storage={storage}"]
  if workers:
    cmd.append(f"--workers={workers}")
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _, status, usage = os.wait4(proc.pid, 0)
  seconds = time.perf_counter() - t0
  if os.waitstatus_to_exitcode(status) != 0:
    raise SystemExit(f"prepare failed ({status}): {' '.join(cmd)}")
  with open(os.path.join(out, "build_summary.json")) as f:
    summary = json.load(f)
  shutil.rmtree(out, ignore_errors=True)
  return usage.ru_maxrss / 1024, seconds, summary


def main(argv=None):
  args = flags().parse_args(argv)
  rows = []
  for n in map(int, args.sizes.split(",")):
    tree = os.path.join(args.work, f"tree_{n}_{args.side}px")
    t0 = time.perf_counter()
    make_tree(tree, n, args.side)
    print(f"tree of {n} images ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    for storage in args.storages.split(","):
      rss, seconds, summary = measure(tree, os.path.join(args.work, "out"), storage, args.workers)
      sp = summary["speed"]
      row = {"images": n, "storage": storage, "peak_rss_MiB": round(rss), "wall_s": round(seconds, 1),
             "build_images_per_s": round(sp["images_per_s"]), "workers": sp["workers"],
             "GiB_on_disk": round(sp["bytes_on_disk"] / 2**30, 2)}
      rows.append(row)
      print(json.dumps(row), flush=True)
    if not args.keep_trees:
      shutil.rmtree(tree)
  print("images | storage | peak RSS MiB | build img/s | workers | wall s | GiB on disk")
  for r in rows:
    print(f"{r['images']} | {r['storage']} | {r['peak_rss_MiB']} | {r['build_images_per_s']} | "
          f"{r['workers']} | {r['wall_s']} | {r['GiB_on_disk']}")


if __name__ == "__main__":
  main()
