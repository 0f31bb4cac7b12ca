"""Building datasets: image folders and the synthetic benchmark -> TFDS array_record files.

One builder (`FakejaxImages`) writes every dataset, so real folders and the embedded synthetic
benchmark flow through the same files and pipeline. A build is one pass over the images:
worker processes decode, hash and encode them (every core), the main process writes the
records in a fixed order and collects the report. Records hold only what the input pipeline
reads (pixels, shape, labels); everything else about an image (path, generator, category,
pairing group, content hash, size, format) goes to a side index read by `Dataset`.

A dataset directory looks like::

    OUT/fakejax.json              what was built (layout, classes, storage, pairs, parameters)
    OUT/build_summary.json        skipped files, format-bias and leakage report, build speed
    OUT/fakejax_images/2.0.0/     the TFDS array_record files + index.npz
"""

import collections
import contextlib
import hashlib
import json
import multiprocessing
import os
import resource
import shutil
import time

from absl import logging
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core import shuffle as tfds_shuffle
import tqdm

from fakejax import synthetic
from fakejax.datasets import checks
from fakejax.datasets import images
from fakejax.datasets import layouts
from fakejax.datasets import reader
from fakejax.datasets.layouts import REAL
from fakejax.datasets.layouts import SPLITS

FORMAT_VERSION = 2
INDEX_COLUMNS = ("label", "class_label", "source", "category", "group", "path", "hash", "height",
                 "width", "format")


class FakejaxImages(tfds.core.GeneratorBasedBuilder):
  """Images for fake-image detection, written as array_record without TensorFlow."""

  VERSION = tfds.core.Version("2.0.0")

  def __init__(self, *, examples=None, class_names=(REAL, "fake"), storage="png", **kwargs):
    self._examples = examples  # {split: zero-argument callable yielding (key, example)}.
    self._class_names = list(class_names)
    self._storage = storage
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"fakejax image dataset (lossless pixels, {self._storage} storage).",
        # Records in the order generated: a dataset is reproducible to the record, and the
        # side index lines up with the records.
        disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # PNG or raw bytes.
            "shape": tfds.features.Tensor(shape=(3,), dtype=np.int32),
            "label": tfds.features.ClassLabel(names=[REAL, "fake"]),
            "class_label": tfds.features.ClassLabel(names=self._class_names),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(fn) for split, fn in self._examples.items()}

  def _generate_examples(self, fn):
    yield from fn()

  # tfds prints "Downloading and preparing dataset ..." around a build; ours shows its own bar.
  def _log_download_bytes(self):
    pass

  def _log_download_done(self):
    pass


# tfds shuffles each split in memory until it holds 1 GB of encoded examples, then spills to
# disk buckets; a smaller threshold keeps the build's memory flat whatever the dataset size.
SHUFFLE_MEMORY_BYTES = 64 << 20
# array_record options: uncompressed. PNG bytes are compressed already (tfds' default would zstd
# them a second time), and raw pixels are stored to be read fast: snappy or zstd cut a smooth
# 256-px image to 74 / 41 KiB but read 3-4x slower than the 192 KiB as they are
# (docs/performance.md).
RECORD_OPTIONS = "group_size:1,uncompressed"


class _LocalGfile:
  """The part of `tf` that tfds' shuffler uses for its disk buckets, on local files.

  tfds reads and writes those buckets with tf.io.gfile, so without TensorFlow a split
  over the memory threshold would fail to build. Our datasets are local folders.
  """

  class io:  # pylint: disable=invalid-name
    class gfile:  # pylint: disable=invalid-name
      GFile = staticmethod(open)
      exists = staticmethod(os.path.exists)
      remove = staticmethod(os.remove)

  class errors:  # pylint: disable=invalid-name
    class ResourceExhaustedError(Exception):
      pass


@contextlib.contextmanager
def _tfds_writer():
  """tfds set up for our builds (no public options: module globals, restored after).

  Its shuffler spills to local files above SHUFFLE_MEMORY_BYTES; records are written with
  RECORD_OPTIONS; tfds' own progress bars are off (the build shows one of its own).
  """
  saved = tfds_shuffle.MAX_MEM_BUFFER_SIZE, tfds_shuffle.tf
  adapter = file_adapters.ArrayRecordFileAdapter
  saved_write = adapter.__dict__["write_examples"]
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  want = max(soft, min(hard, 4096))  # tfds keeps one file open per bucket (1000).
  resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
  tfds_shuffle.MAX_MEM_BUFFER_SIZE, tfds_shuffle.tf = SHUFFLE_MEMORY_BYTES, _LocalGfile

  def write_examples(cls, path, iterator):
    del cls
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    writer = array_record_module.ArrayRecordWriter(os.fspath(path), RECORD_OPTIONS)
    for _, serialized in iterator:
      writer.write(serialized)
    writer.close()

  adapter.write_examples = classmethod(write_examples)
  tfds.disable_progress_bar()
  try:
    yield
  finally:
    tfds.enable_progress_bar()
    adapter.write_examples = saved_write
    tfds_shuffle.MAX_MEM_BUFFER_SIZE, tfds_shuffle.tf = saved
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def builder_dir(path):
  return os.path.join(path, "fakejax_images", str(FakejaxImages.VERSION))


def _write(out, examples, class_names, storage, meta, index):
  """Builds the dataset at `out`: records, then the side index and the metadata (last)."""
  builder = FakejaxImages(examples=examples, class_names=class_names, storage=storage, data_dir=out,
                          file_format="array_record")
  with _tfds_writer():
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS))
  shutil.rmtree(os.path.join(out, "downloads"), ignore_errors=True)  # Empty: nothing is downloaded.
  np.savez(os.path.join(builder_dir(out), "index.npz"),
           **{f"{s}/{k}": np.asarray(v) for s, cols in index.items() for k, v in cols.items()})
  meta = {"format_version": FORMAT_VERSION, "storage": storage, **meta}
  with open(os.path.join(out, "fakejax.json"), "w") as f:  # Last: its presence means complete.
    json.dump(meta, f, indent=2)
  return meta


def _example(rgb, storage, class_names, class_name):
  return {"image": images.encode(rgb, storage), "shape": np.asarray(rgb.shape, np.int32),
          "label": 0 if class_name == REAL else 1, "class_label": class_names.index(class_name)}


def _in_order(fn, tasks, pool, window):
  """fn over tasks, results in order; with a pool at most two windows of tasks are in flight
  (Pool.imap would run ahead of a slow writer and hold every decoded image in memory)."""
  if pool is None:
    yield from map(fn, tasks)
    return
  pending = collections.deque()
  for start in range(0, len(tasks), window):
    pending.append(pool.map_async(fn, tasks[start:start + window], chunksize=8))
    if len(pending) == 2:
      yield from pending.popleft().get()
  while pending:
    yield from pending.popleft().get()


@contextlib.contextmanager
def _workers(n):
  """A pool of `n` fresh worker processes (spawned: the parent may hold threads), or None."""
  if n <= 1:
    yield None
    return
  with multiprocessing.get_context("spawn").Pool(n) as pool:
    yield pool


def default_workers(n_images):
  """Every core for a real build; in-process for tiny ones (spawning costs ~2 s a worker)."""
  return os.cpu_count() or 1 if n_images >= 500 else 0


def _decode_file(task):
  """Worker: one file -> ('ok', bytes, shape, hash, format) or ('bad', reason)."""
  path, storage, max_pixels, min_size = task
  try:
    rgb, fmt = images.load_rgb(path, max_pixels, min_size)
  except images.BadImage as e:
    return ("bad", str(e))
  return ("ok", images.encode(rgb, storage), rgb.shape, images.pixel_hash(rgb), fmt)


def _prepare_out(out):
  """Refuses to overwrite a dataset; clears what a crashed build left."""
  if os.path.exists(os.path.join(out, "fakejax.json")):
    raise FileExistsError(f"{out} already holds a dataset; choose another --out or delete it first")
  if os.path.isdir(os.path.join(out, "fakejax_images")):
    logging.warning("Removing the incomplete build in %s", out)
    shutil.rmtree(os.path.join(out, "fakejax_images"))
  os.makedirs(out, exist_ok=True)


def prepare_folder(root, out, layout="auto", fractions=(0.56, 0.24, 0.20), seed=0, dedup=False,
                   max_pixels=1 << 28, min_size=8, storage="png", workers=None, pairs=None,
                   names=layouts.Names()):
  """Turns an image-folder tree into a dataset at `out` (see `fakejax.prepare`).

  Args:
    root: the image folder.
    out: the dataset folder to create.
    layout: one of layouts.LAYOUTS or 'auto'.
    fractions: train/val/test fractions of the hash split (images without a split folder).
    seed: seed of the hash split.
    dedup: drop images whose pixels already appear in an earlier split.
    max_pixels: larger images are skipped (decompression bombs).
    min_size: images with a smaller side are skipped.
    storage: 'png' or 'raw' (images.STORAGES).
    workers: decoding processes (None: every core for large builds, 0: in this process).
    pairs: {generator or '*': [real folders]} pairing fakes with reals (UniversalFakeDetect).
    names: the folder names that mean real / fake.

  Returns:
    (reader.Dataset, summary dict). The summary is also saved as OUT/build_summary.json.
  """
  if storage not in images.STORAGES:
    raise layouts.LayoutError(f"Unknown storage {storage!r}; known: {', '.join(images.STORAGES)}")
  layout, class_names, items, ignored = layouts.scan(root, layout, fractions, seed, names)
  pairs = dict(pairs or {})
  groups = {i.group for i in items if i.class_name == REAL}
  unknown = sorted({g for gs in pairs.values() for g in gs} - groups)
  if unknown:
    raise layouts.LayoutError(f"--pair names real folder(s) {unknown} that hold no real images; "
                              f"real folders found: {sorted(g for g in groups if g) or 'none'}")
  _prepare_out(out)
  by_split = collections.defaultdict(list)
  for it in items:
    by_split[it.split].append(it)
  workers = default_workers(len(items)) if workers is None else workers
  records, skipped, removed = [], [], []
  index = {s: collections.defaultdict(list) for s in by_split}
  seen_before = set()  # Content hashes of the splits already written (for --dedup).
  t0 = time.perf_counter()
  bar = tqdm.tqdm(total=len(items), desc="prepare", unit="img", dynamic_ncols=True)

  def examples(split, pool):
    def gen():
      tasks = [(os.path.join(root, it.path), storage, max_pixels, min_size) for it in by_split[split]]
      hashes = set()
      for it, res in zip(by_split[split], _in_order(_decode_file, tasks, pool, 64 * max(workers, 1))):
        bar.update()
        if res[0] == "bad":
          skipped.append({"path": it.path, "reason": res[1]})
          continue
        _, data, shape, digest, fmt = res
        records.append({"split": split, "hash": digest, "format": fmt, "size": shape[:2],
                        "class": it.class_name, "path": it.path})
        if dedup and digest in seen_before:
          removed.append(it.path)
          continue
        hashes.add(digest)
        cols = index[split]
        for k, v in (("label", int(it.class_name != REAL)), ("class_label", class_names.index(it.class_name)),
                     ("source", it.source), ("category", it.category), ("group", it.group),
                     ("path", it.path), ("hash", digest), ("height", shape[0]), ("width", shape[1]),
                     ("format", fmt)):
          cols[k].append(v)
        yield it.path, {"image": data, "shape": np.asarray(shape, np.int32),
                        "label": int(it.class_name != REAL),
                        "class_label": class_names.index(it.class_name)}
      seen_before.update(hashes)
    return gen

  meta = {"kind": "folder", "layout": layout, "classes": list(class_names),
          "root": os.path.abspath(root), "fractions": list(fractions), "seed": seed, "dedup": dedup,
          "pairs": pairs}
  splits = [s for s in SPLITS if s in by_split]
  try:
    with _workers(workers) as pool:
      meta = _write(out, {s: examples(s, pool) for s in splits}, class_names, storage, meta,
                    {s: index[s] for s in splits})
  except BaseException:
    shutil.rmtree(os.path.join(out, "fakejax_images"), ignore_errors=True)
    raise
  finally:
    bar.close()
  seconds = time.perf_counter() - t0
  empty = [s for s in splits if not index[s]["label"]]
  if empty:
    shutil.rmtree(os.path.join(out, "fakejax_images"), ignore_errors=True)
    os.remove(os.path.join(out, "fakejax.json"))
    raise layouts.LayoutError(f"Split(s) {empty} of {root} have no usable image (see the skipped "
                              f"files: {skipped[:3]})")
  leaks = checks.leakage(records)
  leak_paths = collections.defaultdict(list)
  for r in records if not dedup else []:
    if r["hash"] in leaks:
      leak_paths[r["hash"]].append(r["path"])
  stats = {c: checks.class_stats([r for r in records if r["class"] == c]) for c in class_names}
  summary = {
      "root": os.path.abspath(root), "layout": layout, "classes": list(class_names),
      "storage": storage, "pairs": pairs,
      "counts": {s: len(index[s]["label"]) for s in splits},
      "skipped": skipped, "ignored_non_image_files": ignored,
      "class_stats": stats, "warnings": checks.format_bias_warnings(stats),
      "leakage": {"n_hashes_in_several_splits": len(leaks),
                  "examples": [v for _, v in list(leak_paths.items())[:20]],
                  "removed_by_dedup": removed},
      "speed": {"images": len(items), "seconds": seconds, "images_per_s": len(items) / seconds,
                "workers": max(workers, 1), "bytes_on_disk": _disk_bytes(builder_dir(out))},
  }
  with open(os.path.join(out, "build_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return reader.Dataset(out, meta), summary


def _disk_bytes(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _synthetic_group(task):
  """Worker: one real image of the synthetic benchmark and its fakes, encoded."""
  split_counts, size, seed, categories, families, storage, (split, cat, i) = task
  return [(ex["name"], ex["source"], ex["category"], images.encode(ex["image"], storage),
           images.pixel_hash(ex["image"])) for ex in synthetic.generate_one(split_counts, size, seed, families, split, cat, i)]


def synthetic_dataset(root, size=64, counts=(("train", 200), ("val", 50), ("test", 50)), seed=0,
                      categories=synthetic.DEFAULT_CATEGORIES, families=synthetic.FAMILIES, storage="png",
                      workers=None):
  """The synthetic benchmark under `root`, generated on first use.

  Args:
    root: cache folder; each parameter set gets its own sub-folder.
    size: image side.
    counts: (split, number of real images per category) pairs; each real image
      comes with one fake per family.
    seed: generation seed.
    categories: content categories (synthetic.CATEGORIES).
    families: generator families.
    storage: 'png' or 'raw'.
    workers: generating processes (None: every core for large builds).

  Returns:
    the reader.Dataset.
  """
  params = {"size": size, "counts": [list(c) for c in counts], "seed": seed,
            "categories": list(categories), "families": list(families), "version": FORMAT_VERSION}
  if storage != "png":
    params["storage"] = storage
  key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
  out = os.path.join(root, f"synthetic_{size}px_{key}")
  if os.path.exists(os.path.join(out, "fakejax.json")):
    return reader.Dataset(out)
  class_names = (REAL,) + tuple(families)
  logging.info("Generating the synthetic benchmark in %s", out)
  tmp = f"{out}.tmp{os.getpid()}"  # Renamed when complete: a crash never leaves a half cache.
  shutil.rmtree(tmp, ignore_errors=True)
  split_counts = dict(counts)
  tasks = {s: [(split_counts, size, seed, tuple(categories), tuple(families), storage, (s, c, i))
               for c in categories for i in range(n)] for s, n in counts if n > 0}
  n_images = sum(len(t) for t in tasks.values()) * (1 + len(families))
  workers = default_workers(n_images) if workers is None else workers
  index = {s: collections.defaultdict(list) for s in tasks}
  bar = tqdm.tqdm(total=n_images, desc="synthetic benchmark", unit="img", dynamic_ncols=True)

  def examples(split, pool):
    def gen():
      for group in _in_order(_synthetic_group, tasks[split], pool, 32 * max(workers, 1)):
        for name, source, category, data, digest in group:
          bar.update()
          cols = index[split]
          for k, v in (("label", int(source != REAL)), ("class_label", class_names.index(source)),
                       ("source", source), ("category", category), ("group", ""), ("path", name),
                       ("hash", digest),
                       ("height", size), ("width", size), ("format", "PNG")):
            cols[k].append(v)
          yield name, {"image": data, "shape": np.asarray((size, size, 3), np.int32),
                       "label": int(source != REAL), "class_label": class_names.index(source)}
    return gen

  meta = {"kind": "synthetic", "layout": "synthetic", "classes": list(class_names), "pairs": {},
          **params}
  try:
    with _workers(workers) as pool:
      _write(tmp, {s: examples(s, pool) for s in tasks}, class_names, storage, meta, index)
    os.makedirs(root, exist_ok=True)
    try:
      os.rename(tmp, out)
    except OSError:  # Another process finished the same cache first.
      if not os.path.exists(os.path.join(out, "fakejax.json")):
        raise
  finally:
    bar.close()
    shutil.rmtree(tmp, ignore_errors=True)
  return reader.Dataset(out)
