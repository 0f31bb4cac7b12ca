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

import array
import collections
import contextlib
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import time
import zipfile

from absl import logging
import numpy as np
from array_record.python import array_record_module
from etils import epath
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer
from tensorflow_datasets.core import naming
import tqdm

from fakejax import photo
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
  """The TFDS description of our records (features, splits): what `tfds.builder_from_directory`
  and `as_data_source` read. fakejax writes the records itself (`_RecordWriter`)."""

  VERSION = tfds.core.Version("2.0.0")

  def __init__(self, *, class_names=(REAL, "fake"), storage="png", **kwargs):
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

  # tfds' own writer is not used: with disable_shuffling it keys record i by i, every key of a
  # split falls in its first bucket, and that bucket is read back and sorted in memory (peak
  # memory grew with the split: 2.2 GB for 20k images of 256 px).
  def _split_generators(self, dl_manager):
    raise NotImplementedError("fakejax writes its records with builder._RecordWriter")

  def _generate_examples(self):
    raise NotImplementedError("fakejax writes its records with builder._RecordWriter")


# array_record options: uncompressed. PNG bytes are compressed already (tfds' default would zstd
# them a second time), and raw pixels are stored to be read fast: snappy or zstd cut a smooth
# 256-px image to 74 / 41 KiB but read 3-4x slower than the 192 KiB as they are
# (docs/performance.md).
RECORD_OPTIONS = "group_size:1,uncompressed"
# A new shard after this many bytes of records: files of a size that copies and syncs well.
SHARD_BYTES = 1 << 30


class _RecordWriter:
  """One split's records, written in order as they come to array_record shards.

  Nothing of the split stays in memory: each record is serialized with the dataset's features
  (the bytes `as_data_source` decodes) and written at once. Shards get their final
  `{name}-{split}.array_record-0000i-of-0000n` names when the split is complete.
  """

  def __init__(self, directory, split, features):
    self._template = naming.ShardedFileTemplate(
        data_dir=epath.Path(directory), dataset_name=FakejaxImages.name, split=split,
        filetype_suffix="array_record")
    self._features = features
    self._serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    self._directory, self._split = directory, split
    self._writer, self._paths = None, []
    self.shard_lengths, self.num_bytes, self._shard_bytes = [], 0, 0

  def _next_shard(self):
    if self._writer is not None:
      self._writer.close()
    self._paths.append(os.path.join(self._directory, f".{self._split}.shard{len(self._paths)}"))
    self._writer = array_record_module.ArrayRecordWriter(self._paths[-1], RECORD_OPTIONS)
    self.shard_lengths.append(0)
    self._shard_bytes = 0

  def write(self, example):
    data = self._serializer.serialize_example(self._features.encode_example(example))
    if self._writer is None or self._shard_bytes >= SHARD_BYTES:
      self._next_shard()
    self._writer.write(data)
    self.shard_lengths[-1] += 1
    self._shard_bytes += len(data)
    self.num_bytes += len(data)

  def finish(self):
    """Closes the last shard, names the shards, returns the split's tfds.core.SplitInfo."""
    if self._writer is None:  # An empty split still gets its (empty) file.
      self._next_shard()
    self._writer.close()
    for i, path in enumerate(self._paths):
      os.replace(path, self._template.sharded_filepath(shard_index=i, num_shards=len(self._paths)))
    return tfds.core.SplitInfo(name=self._split, shard_lengths=self.shard_lengths,
                               num_bytes=self.num_bytes, filename_template=self._template)


def builder_dir(path):
  return os.path.join(path, "fakejax_images", str(FakejaxImages.VERSION))


class _Index:
  """A split's side index (INDEX_COLUMNS), built row by row in compact form, about 60 bytes and
  the path a row: numbers in int32 arrays, repeated names (generator, category, folder, format)
  as codes into a table, content hashes as 16 bytes in one buffer, paths as UTF-8 in another."""

  NUMBERS = ("label", "class_label", "height", "width")
  NAMES = ("source", "category", "group", "format")

  def __init__(self):
    self._numbers = {k: array.array("i") for k in self.NUMBERS}
    self._codes = {k: array.array("i") for k in self.NAMES}
    self._tables = {k: {} for k in self.NAMES}  # name -> code.
    self.hashes, self._paths, self._ends = bytearray(), bytearray(), array.array("q")
    self.longest_path = 1

  def add(self, **row):
    for k in self.NUMBERS:
      self._numbers[k].append(row[k])
    for k in self.NAMES:
      table = self._tables[k]
      self._codes[k].append(table.setdefault(row[k], len(table)))
    digest = row["hash"]  # Hex (images.pixel_hash) or the 16 bytes.
    self.hashes += bytes.fromhex(digest) if isinstance(digest, str) else digest
    self._paths += row["path"].encode()
    self._ends.append(len(self._paths))
    self.longest_path = max(self.longest_path, len(row["path"]))

  def digest(self, row):
    return bytes(self.hashes[16 * row:16 * row + 16])

  def path(self, row):
    return self._paths[self._ends[row - 1] if row else 0:self._ends[row]].decode()

  def column(self, k, start=0, stop=None):
    """Rows [start, stop) of column k as a numpy array (hashes in hex, as images.pixel_hash)."""
    stop = len(self) if stop is None else min(stop, len(self))
    if k in self.NUMBERS:
      return np.asarray(self._numbers[k][start:stop], np.int64)
    if k in self.NAMES:
      names = np.asarray(list(self._tables[k]) or [""])
      return names[np.asarray(self._codes[k][start:stop], np.int64)]
    if k == "hash":
      return np.asarray([self.hashes[16 * i:16 * i + 16].hex() for i in range(start, stop)], "<U32")
    return np.asarray([self.path(i) for i in range(start, stop)], f"<U{self.longest_path}")

  def dtype(self, k):
    """The numpy dtype column k is saved with."""
    if k in self.NUMBERS:
      return np.dtype(np.int64)
    if k in self.NAMES:
      return np.dtype(f"<U{max(map(len, self._tables[k]), default=1) or 1}")
    return np.dtype("<U32" if k == "hash" else f"<U{self.longest_path}")

  def __len__(self):
    return len(self._ends)


def _save_index(path, index, chunk=4096):
  """Writes {split: _Index} as an .npz (keys 'split/column'), `chunk` rows at a time: no column
  is ever one array in memory (720k long paths as numpy unicode would take ~300 MB)."""
  with zipfile.ZipFile(path, "w", allowZip64=True) as z:
    for split, ix in index.items():
      for k in INDEX_COLUMNS:
        dtype = ix.dtype(k)
        with z.open(f"{split}/{k}.npy", "w", force_zip64=True) as f:
          np.lib.format.write_array_header_1_0(f, {
              "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (len(ix),)})
          for i in range(0, len(ix), chunk):
            f.write(ix.column(k, i, i + chunk).astype(dtype).tobytes())


def _write(out, examples, class_names, storage, meta, index):
  """Builds the dataset at `out`: records, then the side index and the metadata (last).

  Args:
    out: the dataset folder.
    examples: {split: zero-argument callable yielding example dicts}, in record order; each
      fills `index[split]` as it goes.
    class_names: the class_label names.
    storage: 'png' or 'raw'.
    meta: what fakejax.json records besides the format.
    index: {split: _Index}.
  """
  builder = FakejaxImages(class_names=class_names, storage=storage, data_dir=out,
                          file_format="array_record")
  directory = builder_dir(out)
  os.makedirs(directory, exist_ok=True)
  features = builder.info.features
  splits = []
  for split, gen in examples.items():
    writer = _RecordWriter(directory, split, features)
    for example in gen():
      writer.write(example)
    splits.append(writer.finish())
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.info.write_to_directory(directory)
  _save_index(os.path.join(directory, "index.npz"), index)
  meta = {"format_version": FORMAT_VERSION, "storage": storage, **meta}
  tmp = os.path.join(out, "fakejax.json.tmp")
  with open(tmp, "w") as f:  # Last, and whole: its presence means complete.
    json.dump(meta, f, indent=2)
  os.replace(tmp, os.path.join(out, "fakejax.json"))
  return meta


def _in_order(fn, tasks, pool, window):
  """fn over the iterable `tasks`, results in order; with a pool at most two windows of tasks
  are in flight (Pool.imap would run ahead of a slow writer and hold every decoded image in
  memory). Tasks are drawn a window at a time, never listed whole."""
  if pool is None:
    yield from map(fn, tasks)
    return
  tasks, pending = iter(tasks), collections.deque()
  while chunk := list(itertools.islice(tasks, window)):
    pending.append(pool.map_async(fn, chunk, chunksize=8))
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


def prepare_folder(root, out, *, layout="auto", fractions=(0.56, 0.24, 0.20), seed=0, dedup=False,
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
  pairs = _checked_pairs(pairs, items)
  _prepare_out(out)
  workers = default_workers(len(items)) if workers is None else workers
  index = {s: _Index() for s in items.counts}
  build = _FolderBuild(root, items, class_names, index, storage=storage, max_pixels=max_pixels,
                       min_size=min_size, dedup=dedup, workers=workers)
  t0 = time.perf_counter()
  meta = {"kind": "folder", "layout": layout, "classes": list(class_names),
          "root": os.path.abspath(root), "fractions": list(fractions), "seed": seed, "dedup": dedup,
          "pairs": pairs}
  splits = [s for s in SPLITS if s in items.counts]
  try:
    with _workers(workers) as pool:
      meta = _write(out, {s: build.examples(s, pool) for s in splits}, class_names, storage, meta,
                    {s: index[s] for s in splits})
  except BaseException:
    shutil.rmtree(os.path.join(out, "fakejax_images"), ignore_errors=True)
    raise
  finally:
    build.bar.close()
  seconds = time.perf_counter() - t0
  empty = [s for s in splits if not len(index[s])]
  if empty:
    shutil.rmtree(os.path.join(out, "fakejax_images"), ignore_errors=True)
    os.remove(os.path.join(out, "fakejax.json"))
    raise layouts.LayoutError(f"Split(s) {empty} of {root} have no usable image (see the skipped "
                              f"files: {build.skipped[:3]})")
  summary = {"root": os.path.abspath(root), "layout": layout, "classes": list(class_names),
             "storage": storage, "pairs": pairs, **build.summary(splits, ignored),
             "speed": {"images": len(items), "seconds": seconds, "images_per_s": len(items) / seconds,
                       "workers": max(workers, 1), "bytes_on_disk": _disk_bytes(builder_dir(out))}}
  with open(os.path.join(out, "build_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return reader.Dataset(out, meta), summary


def _checked_pairs(pairs, items):
  """`pairs` as a dict, once every real folder it names holds real images."""
  pairs = dict(pairs or {})
  unknown = sorted({g for gs in pairs.values() for g in gs} - items.groups(REAL))
  if unknown:
    raise layouts.LayoutError(f"--pair names real folder(s) {unknown} that hold no real images; "
                              f"real folders found: {sorted(g for g in items.groups(REAL) if g) or 'none'}")
  return pairs


class _FolderBuild:
  """A folder's examples, split by split, and what the build met on the way: files skipped,
  pixels already written to an earlier split (leakage; dropped with `dedup`)."""

  def __init__(self, root, items, class_names, index, *, storage, max_pixels, min_size, dedup, workers):
    self.root, self.items, self.class_names, self.index = root, items, class_names, index
    self.storage, self.max_pixels, self.min_size = storage, max_pixels, min_size
    self.dedup, self.workers = dedup, workers
    self.skipped, self.removed = [], []
    self.seen = _Seen(index)  # The hashes of the splits already written (leakage, --dedup).
    self.leaked, self.leaks = set(), {}  # Hashes in several splits; their paths (the first 20, without --dedup).
    self.bar = tqdm.tqdm(total=len(items), desc="prepare", unit="img", dynamic_ncols=True)

  def examples(self, split, pool):
    """A generator function of `split`'s examples, decoded in `pool`."""
    def gen():
      tasks = ((os.path.join(self.root, it.path), self.storage, self.max_pixels, self.min_size)
               for it in self.items.in_split(split))
      for it, res in zip(self.items.in_split(split),
                         _in_order(_decode_file, tasks, pool, 64 * max(self.workers, 1))):
        self.bar.update()
        example = self._record(split, it, res)
        if example is not None:
          yield example
      self.seen.add(split)
    return gen

  def _record(self, split, it, res):
    """Indexes one decoded file; its example, or None when it is skipped or dropped."""
    if res[0] == "bad":
      self.skipped.append({"path": it.path, "reason": res[1]})
      return None
    _, data, shape, digest, fmt = res
    digest = bytes.fromhex(digest)
    first = self.seen.find(digest)
    if first is not None:  # The same pixels in an earlier split.
      self.leaked.add(digest)
      if self.dedup:
        self.removed.append(it.path)
        return None
      if digest in self.leaks or len(self.leaks) < 20:
        self.leaks.setdefault(digest, [self.index[first[0]].path(first[1])]).append(it.path)
    label, class_label = int(it.class_name != REAL), self.class_names.index(it.class_name)
    self.index[split].add(label=label, class_label=class_label, source=it.source, category=it.category,
                          group=it.group, path=it.path, hash=digest, height=shape[0], width=shape[1],
                          format=fmt)
    return {"image": data, "shape": np.asarray(shape, np.int32), "label": label, "class_label": class_label}

  def summary(self, splits, ignored):
    """The build summary's counts, skipped files, class statistics and leakage."""
    stats = {c: checks.class_stats(*_class_columns(self.index, splits, self.class_names.index(c)))
             for c in self.class_names}
    return {"counts": {s: len(self.index[s]) for s in splits},
            "skipped": self.skipped, "ignored_non_image_files": ignored,
            "class_stats": stats, "warnings": checks.format_bias_warnings(stats),
            "leakage": {"n_hashes_in_several_splits": len(self.leaked),
                        "examples": list(self.leaks.values())[:20], "removed_by_dedup": self.removed}}


class _Seen:
  """The content hashes of the splits written so far, as sorted arrays of their first 8 bytes
  and of (row * 4 + split index): 16 bytes an image, where a dict of hashes took ~100."""

  def __init__(self, index):
    self._index = index
    self._prefix, self._code = np.zeros(0, np.uint64), np.zeros(0, np.int64)

  def add(self, split):
    """Adds the hashes of a finished split (its index's rows)."""
    ix = self._index[split]
    prefix = np.frombuffer(bytes(ix.hashes), np.uint8).reshape(-1, 16)[:, :8].copy().view("<u8")
    prefix = np.concatenate([self._prefix, prefix.ravel()])
    code = np.concatenate([self._code, np.arange(len(ix), dtype=np.int64) * 4 + SPLITS.index(split)])
    order = np.argsort(prefix, kind="stable")  # Earlier splits, then earlier rows, first.
    self._prefix, self._code = prefix[order], code[order]

  def find(self, digest):
    """(split, row) of the first record with these pixels in the splits added, or None."""
    key = np.uint64(int.from_bytes(digest[:8], "little"))
    i = int(np.searchsorted(self._prefix, key))
    while i < len(self._prefix) and self._prefix[i] == key:
      split, row = SPLITS[self._code[i] % 4], int(self._code[i] // 4)
      if self._index[split].digest(row) == digest:
        return split, row
      i += 1
    return None


def _class_columns(index, splits, class_label):
  """(formats, heights, widths) of one class's records over the splits, for checks.class_stats."""
  cols = collections.defaultdict(list)
  for s in splits:
    keep = index[s].column("class_label") == class_label
    for k in ("format", "height", "width"):
      cols[k].append(index[s].column(k)[keep])
  return tuple(np.concatenate(cols[k]) for k in ("format", "height", "width"))


def _disk_bytes(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _synthetic_group(task):
  """Worker: one real image of the synthetic benchmark and its fakes, encoded."""
  split_counts, size, seed, categories, families, storage, (split, cat, i) = task
  return [(ex["name"], ex["source"], ex["category"], images.encode(ex["image"], storage),
           images.pixel_hash(ex["image"])) for ex in synthetic.generate_one(split_counts, size, seed, families, (split, cat, i))]


def synthetic_dataset(root, size=64, counts=(("train", 200), ("val", 50), ("test", 50)), seed=0, *,
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
  out = _cache_folder(root, "synthetic", params, storage)
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
  index = {s: _Index() for s in tasks}
  bar = tqdm.tqdm(total=n_images, desc="synthetic benchmark", unit="img", dynamic_ncols=True)

  def examples(split, pool):
    def gen():
      for group in _in_order(_synthetic_group, tasks[split], pool, 32 * max(workers, 1)):
        for name, source, category, data, digest in group:
          bar.update()
          label, class_label = int(source != REAL), class_names.index(source)
          index[split].add(label=label, class_label=class_label, source=source, category=category,
                           group="", path=name, hash=digest, height=size, width=size, format="PNG")
          yield {"image": data, "shape": np.asarray((size, size, 3), np.int32), "label": label,
                 "class_label": class_label}
    return gen

  meta = {"kind": "synthetic", "layout": "synthetic", "classes": list(class_names), "pairs": {},
          **params}
  try:
    with _workers(workers) as pool:
      _write(tmp, {s: examples(s, pool) for s in tasks}, class_names, storage, meta, index)
    _publish(root, tmp, out)
  finally:
    bar.close()
    shutil.rmtree(tmp, ignore_errors=True)
  return reader.Dataset(out)


def _cache_folder(root, kind, params, storage):
  """ROOT/<kind>_<size>px_<key of the parameters>: one folder per parameter set; the storage
  joins `params` (and the key) when it is not the default PNG."""
  if storage != "png":
    params["storage"] = storage
  key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
  return os.path.join(root, f"{kind}_{params['size']}px_{key}")


def _publish(root, tmp, out):
  """Renames a complete benchmark build into place (a crash never leaves a half cache)."""
  os.makedirs(root, exist_ok=True)
  try:
    os.rename(tmp, out)
  except OSError:  # Another process finished the same cache first.
    if not os.path.exists(os.path.join(out, "fakejax.json")):
      raise


def _split_streams(rows, index, class_names, storage):
  """`examples(split)`: a generator function of the split's examples, taken in turn from one
  stream of (split, example) `rows` whose splits come in order, each indexed as it passes."""
  pending = {"row": next(rows, None)}

  def examples(split):
    def gen():
      while pending["row"] is not None and pending["row"][0] == split:
        ex = pending["row"][1]
        h, w = ex["image"].shape[:2]
        label, class_label = int(ex["source"] != REAL), class_names.index(ex["source"])
        index[split].add(label=label, class_label=class_label, source=ex["source"],
                         category=ex["category"], group=ex["group"], path=ex["name"],
                         hash=images.pixel_hash(ex["image"]), height=h, width=w, format="PNG")
        yield {"image": images.encode(ex["image"], storage), "shape": np.asarray((h, w, 3), np.int32),
               "label": label, "class_label": class_label}
        pending["row"] = next(rows, None)
    return gen
  return examples


def photo_dataset(root, size=64, counts=(("train", 2000), ("val", 400), ("test", 400)), seed=0, *,
                  families=photo.FAMILIES, postprocess="", gen_steps=photo.GEN_STEPS, storage="png",
                  photos=None, train_all=False):
  """The photo benchmark (fakejax.photo) under `root`, generated on first use.

  Args:
    root: cache folder; each parameter set (and set of photographs found) gets its own sub-folder.
    size: crop side (a multiple of 8).
    counts: (split, number of reals) pairs: train/val get as many fakes of the first family,
      test as many reals and fakes per family.
    seed: generation seed (generators' initialisation and training, crops, post-processing).
    families: generator families (photo.FAMILIES); the first is the training family.
    postprocess: '' or e.g. 'jpeg:65-100,resize:1-1.25', the same for reals and fakes.
    gen_steps: training steps of each generator.
    storage: 'png' or 'raw'.
    photos: the photographs (default: photo.find_photos()).
    train_all: train/val hold every family, each with its own reals (photo.generate).

  Returns:
    the reader.Dataset.
  """
  photos = photo.find_photos() if photos is None else photos
  params = {"size": size, "counts": [list(c) for c in counts], "seed": seed, "families": list(families),
            "postprocess": postprocess, "gen_steps": gen_steps, "version": FORMAT_VERSION,
            "generation": photo.GENERATION, "photos": [[p.name, os.path.getsize(p.path)] for p in photos]}
  if train_all:  # Only when set: the default's folder (its key) stays what it was.
    params["train_all"] = True
  out = _cache_folder(root, "photo", params, storage)
  if os.path.exists(os.path.join(out, "fakejax.json")):
    return reader.Dataset(out)
  logging.warning("Generating the photo benchmark in %s (%d photographs)", out, len(photos))
  tmp = f"{out}.tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  class_names = (REAL,) + tuple(families)
  splits = [s for s, n in counts if n > 0]
  index = {s: _Index() for s in splits}
  t0 = time.perf_counter()
  rows = photo.generate(dict((s, n) for s, n in counts if n > 0), size, seed, tuple(families),
                        pp=postprocess, gen_steps=gen_steps, photos=photos, log=logging.warning,
                        train_all=train_all)
  examples = _split_streams(rows, index, class_names, storage)
  meta = {"kind": "photo", "layout": "photo", "classes": list(class_names), "pairs": {}, **params}
  try:
    order = sorted(splits)  # photo.generate yields the splits in sorted order.
    _write(tmp, {s: examples(s) for s in order}, class_names, storage, meta, index)
    stats = {c: checks.class_stats(*_class_columns(index, order, class_names.index(c)))
             for c in class_names}
    with open(os.path.join(tmp, "build_summary.json"), "w") as f:
      json.dump({"class_stats": stats, "warnings": checks.format_bias_warnings(stats),
                 "seconds": time.perf_counter() - t0, "photos": [p.name for p in photos]}, f, indent=2)
    _publish(root, tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return reader.Dataset(out)
