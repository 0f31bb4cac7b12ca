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

A folder build (`prepare_folder`) resumes: killed at any point, the same command keeps every shard
it had closed and goes on from the first image after them, decoding none of them again; the result
is the same, byte for byte, as an uninterrupted build's. While it runs, `_Checkpoints` keeps in
OUT/fakejax_images/2.0.0/.resume/ what it is made from and what each closed shard holds; the folder
goes once the dataset is complete. A build made with other parameters (or from a changed tree) is
cleared instead.
"""

import array
import collections
import contextlib
import functools
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
# A new shard once this many bytes of records are in the current one: files of a size that copies
# and syncs well. The environment variable FAKEJAX_SHARD_BYTES overrides it (read when a split's
# writer is created; tests make tiny shards with it). A build resumes only with the shard size it
# started with: the shards' boundaries depend on it.
SHARD_BYTES = 1 << 30


def shard_bytes():
  """The shard size in effect: FAKEJAX_SHARD_BYTES, else SHARD_BYTES."""
  return int(os.environ.get("FAKEJAX_SHARD_BYTES") or SHARD_BYTES)


def _fsync(path):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


class _RecordWriter:
  """One split's records, written in order as they come to array_record shards.

  Nothing of the split stays in memory: each record is serialized with the dataset's features
  (the bytes `as_data_source` decodes) and written at once. A shard is closed as soon as it holds
  `shard_bytes()` of records (the same records, the same shards). Shards are written as
  `.{split}.shard{i}` and get their final `{name}-{split}.array_record-0000i-of-0000n` names when
  the split is complete.
  """

  def __init__(self, directory, split, features, *, done=(), on_shard=None):
    """`done`: (records, bytes) of the split's shards already on disk (a resumed build), which this
    writer continues; `on_shard(i, records, bytes)`: called once shard i is closed and synced."""
    self._template = naming.ShardedFileTemplate(
        data_dir=epath.Path(directory), dataset_name=FakejaxImages.name, split=split,
        filetype_suffix="array_record")
    self._features = features
    self._serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    self._directory, self._split = directory, split
    self._writer, self._on_shard, self._limit = None, on_shard, shard_bytes()
    self._paths = [self._temp_path(i) for i in range(len(done))]
    self.shard_lengths = [n for n, _ in done]
    self.num_bytes, self._shard_bytes = sum(b for _, b in done), 0

  def _temp_path(self, i):
    return os.path.join(self._directory, f".{self._split}.shard{i}")

  def _open_shard(self):
    self._paths.append(self._temp_path(len(self._paths)))
    self._writer = array_record_module.ArrayRecordWriter(self._paths[-1], RECORD_OPTIONS)
    self.shard_lengths.append(0)
    self._shard_bytes = 0

  def _close_shard(self):
    self._writer.close()
    self._writer = None
    if self._on_shard is not None:
      _fsync(self._paths[-1])  # On disk before a checkpoint vouches for it.
      self._on_shard(len(self._paths) - 1, self.shard_lengths[-1], self._shard_bytes)

  def write(self, example):
    # deterministic: the features in key order. Else a map's order varies from process to process
    # (string hashing), and so would the bytes of the same record (a resumed build's shards).
    data = self._serializer.get_tf_example(self._features.encode_example(example)).SerializeToString(
        deterministic=True)
    if self._writer is None:
      self._open_shard()
    self._writer.write(data)
    self.shard_lengths[-1] += 1
    self._shard_bytes += len(data)
    self.num_bytes += len(data)
    if self._shard_bytes >= self._limit:
      self._close_shard()

  def close(self):
    """Closes the last shard (an empty split still gets its empty one)."""
    if not self._paths:
      self._open_shard()
    if self._writer is not None:
      self._close_shard()

  def finish(self):
    """Closes the last shard, names the shards, returns the split's tfds.core.SplitInfo."""
    self.close()
    for i, path in enumerate(self._paths):
      final = self._template.sharded_filepath(shard_index=i, num_shards=len(self._paths))
      if os.path.exists(path) or not os.path.exists(final):  # A resumed split may be named already.
        os.replace(path, final)
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


def _write(out, examples, class_names, storage, meta, index, *, resume=None):
  """Builds the dataset at `out`: records, then the side index and the metadata (last).

  Args:
    out: the dataset folder.
    examples: {split: zero-argument callable yielding example dicts}, in record order; each
      fills `index[split]` as it goes.
    class_names: the class_label names.
    storage: 'png' or 'raw'.
    meta: what fakejax.json records besides the format.
    index: {split: _Index}.
    resume: None, or what continues a killed build and checkpoints this one (`_write_split`).
  """
  builder = FakejaxImages(class_names=class_names, storage=storage, data_dir=out,
                          file_format="array_record")
  directory = builder_dir(out)
  os.makedirs(directory, exist_ok=True)
  features = builder.info.features
  splits = [_write_split(directory, split, gen, features, resume) for split, gen in examples.items()]
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.info.write_to_directory(directory)
  _save_index(os.path.join(directory, "index.npz"), index)
  meta = {"format_version": FORMAT_VERSION, "storage": storage, **meta}
  tmp = os.path.join(out, "fakejax.json.tmp")
  with open(tmp, "w") as f:  # Last, and whole: its presence means complete.
    json.dump(meta, f, indent=2)
  os.replace(tmp, os.path.join(out, "fakejax.json"))
  return meta


def _write_split(directory, split, gen, features, resume=None):
  """One split's records; its tfds.core.SplitInfo.

  `resume` (a `_FolderBuild`) has `shards[split]`, the (records, bytes) of the split's shards a
  killed build closed (the generator then starts after their images), `complete`, the splits it
  finished (their generator is not run), and is told of every shard closed (`shard_closed`) and
  of the split's end (`split_closed`), before the shards are renamed.
  """
  if resume is None:
    writer = _RecordWriter(directory, split, features)
  else:
    writer = _RecordWriter(directory, split, features, done=resume.shards[split],
                           on_shard=functools.partial(resume.shard_closed, split))
  if resume is None or split not in resume.complete:
    for example in gen():
      writer.write(example)
    writer.close()
    if resume is not None:
      resume.split_closed(split)
  return writer.finish()


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


def _prepare_out(out, params):
  """Refuses to overwrite a dataset. What a killed build left is resumed when it was made from the
  same `params` (`_build_params`), else cleared. Returns the build's `_Checkpoints`."""
  if os.path.exists(os.path.join(out, "fakejax.json")):
    raise FileExistsError(f"{out} already holds a dataset; choose another --out or delete it first")
  checkpoints = _Checkpoints(builder_dir(out))
  if os.path.isdir(os.path.join(out, "fakejax_images")):
    found = checkpoints.params()
    if found == params:
      logging.warning("Resuming the incomplete build in %s", out)
      return checkpoints
    logging.warning("Removing the incomplete build in %s%s", out,
                    "" if found is None else " (made with other parameters or from another tree)")
    shutil.rmtree(os.path.join(out, "fakejax_images"))
  checkpoints.start(params)
  return checkpoints


def _build_params(items, meta, **args):
  """What a folder build is made from, as JSON: a fingerprint of the scan (every file with its
  split, class and roles, in order), `meta` (fakejax.json's fields), the other arguments that
  shape the records and the shard size. A killed build resumes only when these are the same
  (files whose bytes changed under the same names are not noticed)."""
  h = hashlib.sha256()
  for it in items:
    h.update("\0".join((it.path, it.split, it.class_name, it.source, it.category, it.group, "\n")).encode())
  params = {"format_version": FORMAT_VERSION, "shard_bytes": shard_bytes(), "n_files": len(items),
            "scan_sha256": h.hexdigest(), **meta, **args}
  return json.loads(json.dumps(params))  # As read back (lists, not tuples).


def prepare_folder(root, out, *, layout="auto", fractions=(0.56, 0.24, 0.20), seed=0, dedup=False,
                   max_pixels=1 << 28, min_size=8, storage="png", workers=None, pairs=None,
                   names=layouts.Names()):
  """Turns an image-folder tree into a dataset at `out` (see `fakejax.prepare`).

  A build killed before its end resumes when run again with the same arguments (module docstring);
  `workers` may differ.

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
  meta = {"kind": "folder", "layout": layout, "classes": list(class_names),
          "root": os.path.abspath(root), "fractions": list(fractions), "seed": seed, "dedup": dedup,
          "pairs": pairs}
  checkpoints = _prepare_out(out, _build_params(items, meta, storage=storage, max_pixels=max_pixels,
                                                min_size=min_size))
  workers = default_workers(len(items)) if workers is None else workers
  index = {s: _Index() for s in items.counts}
  build = _FolderBuild(root, items, class_names, index, storage=storage, max_pixels=max_pixels,
                       min_size=min_size, dedup=dedup, workers=workers, checkpoints=checkpoints)
  t0 = time.perf_counter()
  splits = [s for s in SPLITS if s in items.counts]
  try:
    with _workers(workers) as pool:
      meta = _write(out, {s: build.examples(s, pool) for s in splits}, class_names, storage, meta,
                    {s: index[s] for s in splits}, resume=build)
  except BaseException:
    logging.warning("The build in %s stopped; the same command resumes it", out)
    raise
  finally:
    build.bar.close()
  checkpoints.remove()
  summary = _folder_summary(out, build, meta, splits, ignored, time.perf_counter() - t0)
  return reader.Dataset(out, meta), summary


def _folder_summary(out, build, meta, splits, ignored, seconds):
  """The build summary of a folder build (fakejax.json's `meta`), saved as OUT/build_summary.json;
  a LayoutError (and no dataset) when a split has no usable image."""
  empty = [s for s in splits if not len(build.index[s])]
  if empty:
    shutil.rmtree(os.path.join(out, "fakejax_images"), ignore_errors=True)
    os.remove(os.path.join(out, "fakejax.json"))
    raise layouts.LayoutError(f"Split(s) {empty} of {meta['root']} have no usable image (see the "
                              f"skipped files: {build.skipped[:3]})")
  n, workers = len(build.items), max(build.workers, 1)
  summary = {**{k: meta[k] for k in ("root", "layout", "classes", "storage", "pairs")},
             **build.summary(splits, ignored),
             # images_per_s: of the files this run decoded (not those a killed build had).
             "speed": {"images": n, "resumed_images": build.resumed, "seconds": seconds,
                       "images_per_s": (n - build.resumed) / seconds, "workers": workers,
                       "bytes_on_disk": _disk_bytes(builder_dir(out))}}
  with open(os.path.join(out, "build_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


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
  pixels already written to an earlier split (leakage; dropped with `dedup`).

  It also keeps the build's checkpoints (`_Checkpoints`): the state after each closed shard, as
  what changed since the one before, so that a killed build resumes where its last shard ended.
  """

  def __init__(self, root, items, class_names, index, *, storage, max_pixels, min_size, dedup, workers,
               checkpoints):
    self.root, self.items, self.class_names, self.index = root, items, class_names, index
    self.storage, self.max_pixels, self.min_size = storage, max_pixels, min_size
    self.dedup, self.workers, self.checkpoints = dedup, workers, checkpoints
    self.skipped, self.removed = [], []
    self.seen = _Seen(index)  # The hashes of the splits already written (leakage, --dedup).
    self.leaked, self.leaks = set(), {}  # Hashes in several splits; their paths (the first 20, without --dedup).
    self.consumed = {s: 0 for s in index}  # Files of each split taken (written, skipped or dropped).
    self.shards = {s: [] for s in index}  # (records, bytes) of each split's closed shards.
    self.complete = set()  # The splits whose every shard is closed.
    self._new_leaked, self._marks = [], None
    self.resumed = self._restore()
    self.bar = tqdm.tqdm(total=len(items), initial=self.resumed, desc="prepare", unit="img",
                         dynamic_ncols=True)

  def examples(self, split, pool):
    """A generator function of `split`'s examples, decoded in `pool`, after those resumed."""
    def gen():
      start = self.consumed[split]
      todo = lambda: itertools.islice(self.items.in_split(split), start, None)
      tasks = ((os.path.join(self.root, it.path), self.storage, self.max_pixels, self.min_size)
               for it in todo())
      for it, res in zip(todo(), _in_order(_decode_file, tasks, pool, 64 * max(self.workers, 1))):
        self.bar.update()
        self.consumed[split] += 1
        example = self._record(split, it, res)
        if example is not None:
          yield example
      self.seen.add(split)
    return gen

  def shard_closed(self, split, i, records, nbytes):
    """Checkpoints shard i of `split`, closed and on disk: a rerun keeps it."""
    self.shards[split].append((records, nbytes))
    self.checkpoints.save(f"{split}.shard{i}", {"records": records, "bytes": nbytes, **self._delta(split)})

  def split_closed(self, split):
    """Checkpoints the end of `split` (what its last files met after its last shard closed)."""
    self.complete.add(split)
    self.checkpoints.save(f"{split}.done", self._delta(split))

  def _delta(self, split):
    """What the build met since the last checkpoint, as JSON (`_apply` replays it)."""
    rows, skipped, removed, leaks = self._marks
    ix = self.index[split]
    delta = {"consumed": self.consumed[split],
             "rows": {k: ix.column(k, rows.get(split, 0)).tolist() for k in INDEX_COLUMNS},
             "skipped": self.skipped[skipped:], "removed": self.removed[removed:],
             "leaked": [d.hex() for d in self._new_leaked],
             "leaks": {d.hex(): paths[leaks.get(d, 0):] for d, paths in self.leaks.items()
                       if len(paths) > leaks.get(d, 0)}}
    self._mark()
    return delta

  def _mark(self):
    """Notes how far the build's state is checkpointed."""
    self._marks = ({s: len(ix) for s, ix in self.index.items()}, len(self.skipped), len(self.removed),
                   {d: len(paths) for d, paths in self.leaks.items()})
    self._new_leaked = []

  def _apply(self, split, delta):
    """Replays a checkpoint's `_delta`."""
    rows = delta["rows"]
    for values in zip(*(rows[k] for k in INDEX_COLUMNS)):
      self.index[split].add(**dict(zip(INDEX_COLUMNS, values)))
    self.consumed[split] = delta["consumed"]
    self.skipped += delta["skipped"]
    self.removed += delta["removed"]
    self.leaked.update(bytes.fromhex(d) for d in delta["leaked"])
    for d, paths in delta["leaks"].items():
      self.leaks.setdefault(bytes.fromhex(d), []).extend(paths)

  def _restore(self):
    """The state of a killed build from its checkpoints (none for a new build): closed shards,
    index rows, skipped files, leakage; removes the shards no checkpoint vouches for. Returns the
    number of files already taken."""
    for split in (s for s in SPLITS if s in self.index):
      shards, done = self.checkpoints.entries(split)
      for delta in shards + [done] * (done is not None):
        self._apply(split, delta)
      self.shards[split] = [(e["records"], e["bytes"]) for e in shards]
      if done is not None:
        self.complete.add(split)
        self.seen.add(split)
      self.checkpoints.remove_shards(split, start=len(shards))
    self._mark()
    return sum(self.consumed.values())

  def _record(self, split, it, res):
    """Indexes one decoded file; its example, or None when it is skipped or dropped."""
    if res[0] == "bad":
      self.skipped.append({"path": it.path, "reason": res[1]})
      return None
    _, data, shape, digest, fmt = res
    digest = bytes.fromhex(digest)
    first = self.seen.find(digest)
    if first is not None:  # The same pixels in an earlier split.
      if digest not in self.leaked:
        self.leaked.add(digest)
        self._new_leaked.append(digest)
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


class _Checkpoints:
  """A folder build's progress on disk, so that a killed build resumes (`_FolderBuild`).

  In BUILDER_DIR/.resume/, each file JSON, written whole (temporary file, fsync, rename):

    params.json            what the build is made from (`_build_params`), written first
    {split}.shard{i}.json  written once shard i (BUILDER_DIR/.{split}.shard{i}) is closed and synced:
                           its records and bytes, the files of the split taken through it, and
                           what they added since the previous checkpoint: index rows (hashes in
                           hex), skipped files, files removed by --dedup, leaked hashes and paths
    {split}.done.json      the split's end (what its last files added), written before its
                           shards are renamed to their final names

  A shard without its checkpoint is the one being written when the build was killed: removed.
  The folder is removed once the dataset is complete.
  """

  def __init__(self, directory):
    self.directory = directory
    self.path = os.path.join(directory, ".resume")

  def params(self):
    """The parameters of the build that left these checkpoints, or None."""
    return self._load("params")

  def start(self, params):
    os.makedirs(self.path, exist_ok=True)
    self.save("params", params)

  def save(self, name, obj):
    tmp = os.path.join(self.path, f"{name}.json.tmp")
    with open(tmp, "w") as f:
      json.dump(obj, f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, os.path.join(self.path, f"{name}.json"))

  def _load(self, name):
    try:
      with open(os.path.join(self.path, f"{name}.json")) as f:
        return json.load(f)
    except FileNotFoundError:
      return None

  def entries(self, split):
    """([checkpoint of each closed shard, in order], the split's end or None)."""
    shards = []
    while (entry := self._load(f"{split}.shard{len(shards)}")) is not None:
      shards.append(entry)
    return shards, self._load(f"{split}.done")

  def remove_shards(self, split, start):
    """Removes the split's temporary shard files from number `start` on."""
    prefix = f".{split}.shard"
    for name in os.listdir(self.directory):
      number = name[len(prefix):]
      if name.startswith(prefix) and number.isdigit() and int(number) >= start:
        os.remove(os.path.join(self.directory, name))

  def remove(self):
    shutil.rmtree(self.path, ignore_errors=True)


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
                  photos=None, train_all=False, aligned=False):
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
    aligned: train/val pairs of reals and their reconstructions (photo.generate; families[0] kl_vae).

  Returns:
    the reader.Dataset.
  """
  photos = photo.find_photos() if photos is None else photos
  params = {"size": size, "counts": [list(c) for c in counts], "seed": seed, "families": list(families),
            "postprocess": postprocess, "gen_steps": gen_steps, "version": FORMAT_VERSION,
            "generation": photo.GENERATION, "photos": [[p.name, os.path.getsize(p.path)] for p in photos]}
  if train_all:  # Only when set: the default's folder (its key) stays what it was.
    params["train_all"] = True
  if aligned:
    params["aligned"] = True
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
                        train_all=train_all, aligned=aligned)
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
