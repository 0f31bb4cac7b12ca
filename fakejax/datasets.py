"""Datasets on disk: image folders and the synthetic benchmark -> TFDS array_record.

One builder (`FakejaxImages`) writes every dataset, so real folders and the
embedded synthetic benchmark flow through exactly the same files and pipeline.
Pixels are stored losslessly as PNG bytes (TensorFlow is not needed to write or
read them); the grain pipeline decodes them with PIL.

A dataset directory looks like::

    OUT/fakejax.json              what was built (layout, classes, parameters)
    OUT/build_summary.json        skipped files, format-bias and leakage report
    OUT/fakejax_images/1.0.0/     the TFDS array_record files + index.npz
"""

import collections
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import resource
import shutil
import warnings

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle
import tqdm

from fakejax import synthetic

SPLITS = ("train", "val", "test")
LAYOUTS = ("cnndetection", "binary", "attribution")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
REAL, FAKE = "real", "fake"
LAYOUT_HELP = {
    "cnndetection": "ROOT/{train,val,test}/<generator-or-category>/{0_real,1_fake}/*.png",
    "binary": "ROOT/{real,fake}/**/*.png  (split by a seeded hash of the path)",
    "attribution": "ROOT/{train,val,test}/<class>/*.png  (one folder per class, e.g. real, stylegan, pggan)",
}


class BadImage(Exception):
  """A file that cannot be used as an image; the message is the reason."""


class LayoutError(ValueError):
  """The folder tree does not have the expected layout."""


# ---------------------------------------------------------------------------
# Images.
# ---------------------------------------------------------------------------
def load_rgb(path_or_bytes, max_pixels=1 << 28, min_size=1):
  """Decodes an image file to 8-bit RGB.

  Grayscale, palette, CMYK and 16-bit images are converted; an alpha channel is
  dropped (the colour channels are kept exactly).

  Args:
    path_or_bytes: a file path or the encoded bytes.
    max_pixels: larger declared sizes are refused as decompression bombs.
    min_size: smaller images (height or width) are refused.

  Returns:
    (uint8 array HxWx3, file format name such as 'PNG' or 'JPEG').

  Raises:
    BadImage: with the reason, for anything that is not a usable image.
  """
  is_bytes = isinstance(path_or_bytes, bytes)
  if (len(path_or_bytes) if is_bytes else os.path.getsize(path_or_bytes)) == 0:
    raise BadImage("empty file (0 bytes)")
  src = io.BytesIO(path_or_bytes) if is_bytes else path_or_bytes
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(src) as im:
        w, h = im.size
        if w * h > max_pixels:
          raise BadImage(f"decompression bomb: {w}x{h} is over the {max_pixels}-pixel limit")
        if min(w, h) < min_size:
          raise BadImage(f"too small: {w}x{h}, the minimum side is {min_size}")
        fmt = im.format or "unknown"
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
          a = np.asarray(im).astype(np.uint32)
          a = (a >> 8) if a.max(initial=0) > 255 else a  # 16-bit -> 8-bit keeps the top bits.
          rgb = np.repeat(a.astype(np.uint8)[..., None], 3, -1)
        elif im.mode == "F":
          raise BadImage("unsupported mode F (floating-point image)")
        else:
          rgb = np.asarray(im.convert("RGB"))
  except BadImage:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise BadImage(f"decompression bomb: {e}") from None
  except Image.UnidentifiedImageError:
    raise BadImage("not an image (unrecognised format)") from None
  except (OSError, SyntaxError, ValueError) as e:
    raise BadImage(f"cannot decode: {e}") from None
  return np.ascontiguousarray(rgb), fmt


def encode_png(rgb):
  """Lossless PNG bytes of a uint8 HxWx3 array."""
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def decode_png(data):
  """Inverse of encode_png."""
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"))


def pixel_hash(rgb):
  """A content hash of the decoded pixels (same pixels => same hash, any container)."""
  h = hashlib.blake2b(digest_size=16)
  h.update(np.asarray(rgb.shape, np.int64).tobytes())
  h.update(rgb.tobytes())
  return h.hexdigest()


# ---------------------------------------------------------------------------
# Folder layouts.
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Item:
  """One file to put in a dataset."""
  path: str  # Relative to the root.
  split: str
  class_name: str
  source: str  # Generator name, or 'real'.
  category: str = ""


def _walk_images(root):
  """Sorted relative paths of the image files below root, and the ignored others."""
  images, others = [], []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for f in sorted(filenames):
      rel = os.path.relpath(os.path.join(dirpath, f), root)
      (images if f.lower().endswith(IMAGE_EXTS) else others).append(rel)
  return images, others


def _subdirs(path):
  return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


def detect_layout(root):
  """Guesses the layout of an image-folder tree (see LAYOUT_HELP)."""
  top = set(_subdirs(root))
  if {REAL, FAKE} <= top:
    return "binary"
  if "train" in top:
    train = os.path.join(root, "train")
    for d in _subdirs(train):
      if {"0_real", "1_fake"} & set(_subdirs(os.path.join(train, d))) or d in ("0_real", "1_fake"):
        return "cnndetection"
    return "attribution"
  raise LayoutError(f"Cannot tell the layout of {root}: expected one of\n" + "\n".join(
      f"  {k}: {v}" for k, v in LAYOUT_HELP.items()))


def hash_split(rel_path, fractions, seed):
  """Deterministic split of a path from a seeded hash: the same file, the same split."""
  h = hashlib.sha256(f"{seed}:{rel_path}".encode()).digest()
  u = int.from_bytes(h[:8], "little") / 2**64
  edges = np.cumsum(fractions) / np.sum(fractions)
  return SPLITS[int(np.searchsorted(edges, u, side="right"))]


def scan(root, layout="auto", fractions=(0.56, 0.24, 0.20), seed=0):
  """Lists the files of an image-folder dataset.

  Args:
    root: the folder.
    layout: one of LAYOUTS, or 'auto'.
    fractions: train/val/test fractions for the 'binary' layout.
    seed: seed of the 'binary' layout's hash split.

  Returns:
    (layout, class names, list of Item, list of ignored non-image files).

  Raises:
    LayoutError: naming the folder and showing the expected layout.
  """
  if not os.path.isdir(root):
    raise LayoutError(f"{root} is not a folder")
  layout = detect_layout(root) if layout == "auto" else layout
  if layout not in LAYOUTS:
    raise LayoutError(f"Unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
  expected = f"expected layout '{layout}': {LAYOUT_HELP[layout]}"
  items, ignored = [], []

  def need(path):
    if not os.path.isdir(path):
      raise LayoutError(f"Missing folder {path}; {expected}")
    images, others = _walk_images(path)
    ignored.extend(os.path.join(os.path.relpath(path, root), o) for o in others)
    if not images:
      raise LayoutError(f"No images in {path}; {expected}")
    return [os.path.relpath(os.path.join(path, i), root) for i in images]

  if layout == "binary":
    class_names = (REAL, FAKE)
    for cls in class_names:
      for rel in need(os.path.join(root, cls)):
        items.append(Item(rel, hash_split(rel, fractions, seed), cls, REAL if cls == REAL else FAKE))
    present = {i.split for i in items}
    for s, frac in zip(SPLITS, fractions):
      if frac > 0 and s not in present:
        raise LayoutError(f"Split {s!r} of {root} is empty (too few images for fractions {fractions})")
  else:
    splits = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
    if "train" not in splits and "test" not in splits:
      raise LayoutError(f"No train/ or test/ folder in {root}; {expected}")
    if layout == "attribution":
      class_names = sorted({c for s in splits for c in _subdirs(os.path.join(root, s))},
                           key=lambda c: (c != REAL, c))
      for s in splits:
        for cls in class_names:
          for rel in need(os.path.join(root, s, cls)):
            items.append(Item(rel, s, cls, cls))
    else:  # cnndetection
      class_names = (REAL, FAKE)
      for s in splits:
        groups = _subdirs(os.path.join(root, s))
        groups = [""] if {"0_real", "1_fake"} <= set(groups) else groups
        if not groups:
          raise LayoutError(f"{os.path.join(root, s)} is empty; {expected}")
        for g in groups:
          for cls, sub in ((REAL, "0_real"), (FAKE, "1_fake")):
            for rel in need(os.path.join(root, s, g, sub)):
              items.append(Item(rel, s, cls, REAL if cls == REAL else (g or FAKE), g))
  return layout, tuple(class_names), items, ignored


# ---------------------------------------------------------------------------
# The builder.
# ---------------------------------------------------------------------------
class FakejaxImages(tfds.core.GeneratorBasedBuilder):
  """Images for fake-image detection, written as array_record without TensorFlow."""

  VERSION = tfds.core.Version("1.0.0")
  # Keep the order in which examples are generated: a dataset is reproducible to the record.
  disable_shuffling = True

  def __init__(self, *, examples=None, class_names=(REAL, FAKE), **kwargs):
    self._examples = examples  # {split: zero-argument callable yielding (key, example)}.
    self._class_names = list(class_names)
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="fakejax image dataset (lossless PNG pixels).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # PNG bytes.
            "label": tfds.features.ClassLabel(names=[REAL, FAKE]),
            "class_label": tfds.features.ClassLabel(names=self._class_names),
            "source": tfds.features.Text(),
            "category": tfds.features.Text(),
            "path": tfds.features.Text(),
            "hash": tfds.features.Text(),
            "orig_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "orig_format": tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(fn) for split, fn in self._examples.items()}

  def _generate_examples(self, fn):
    yield from fn()


def _example(rgb, class_names, class_name, source, category, path, fmt, orig_size):
  return {
      "image": encode_png(rgb),
      "label": 0 if class_name == REAL else 1,
      "class_label": class_names.index(class_name),
      "source": source, "category": category, "path": path,
      "hash": pixel_hash(rgb), "orig_size": np.asarray(orig_size, np.int32), "orig_format": fmt,
  }


# tfds shuffles each split in memory until it holds 1 GB of encoded examples, then spills to
# disk buckets; a smaller threshold keeps the build's memory flat whatever the dataset size.
SHUFFLE_MEMORY_BYTES = 64 << 20


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
def _bounded_memory_shuffler():
  """tfds' shuffler spilling to local files above SHUFFLE_MEMORY_BYTES (no public option: module globals)."""
  saved = tfds_shuffle.MAX_MEM_BUFFER_SIZE, tfds_shuffle.tf
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  want = max(soft, min(hard, 4096))  # tfds keeps one file open per bucket (1000).
  resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
  tfds_shuffle.MAX_MEM_BUFFER_SIZE, tfds_shuffle.tf = SHUFFLE_MEMORY_BYTES, _LocalGfile
  try:
    yield
  finally:
    tfds_shuffle.MAX_MEM_BUFFER_SIZE, tfds_shuffle.tf = saved
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _write(out, examples, class_names, meta):
  """Builds the dataset at `out` and writes its index and metadata."""
  builder = FakejaxImages(examples=examples, class_names=class_names, data_dir=out,
                          file_format="array_record")
  with _bounded_memory_shuffler():
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS))
  shutil.rmtree(os.path.join(out, "downloads"), ignore_errors=True)  # Empty: nothing is downloaded.
  ds = Dataset(out, meta)
  ds.write_index()
  with open(os.path.join(out, "fakejax.json"), "w") as f:
    json.dump(meta, f, indent=2)
  return Dataset(out, meta)


# ---------------------------------------------------------------------------
# Preparing a folder: scan (metadata only) -> report -> write (decode again).
# Two passes keep memory bounded: no pass holds more than one image.
# ---------------------------------------------------------------------------
def _class_stats(records):
  n = len(records)
  fmts = collections.Counter(r["format"] for r in records)
  sizes = collections.Counter(f"{r['size'][1]}x{r['size'][0]}" for r in records)
  pixels = [r["size"][0] * r["size"][1] for r in records]
  return {
      "n": n,
      "formats": dict(fmts),
      "jpeg_share": round(fmts.get("JPEG", 0) / max(n, 1), 4),
      "median_pixels": float(np.median(pixels)) if pixels else 0.0,
      "top_sizes": dict(sizes.most_common(5)),
  }


def format_bias_warnings(stats):
  """Warnings when real and fake classes differ in file format or image size."""
  out = []
  if REAL not in stats:
    return out
  real = stats[REAL]
  for cls, s in stats.items():
    if cls == REAL:
      continue
    if abs(s["jpeg_share"] - real["jpeg_share"]) > 0.1:
      out.append(f"format bias: JPEG share is {real['jpeg_share']:.0%} for real but "
                 f"{s['jpeg_share']:.0%} for {cls}; a detector can learn 'JPEG vs PNG'.")
    ratio = s["median_pixels"] / max(real["median_pixels"], 1)
    if not 0.8 <= ratio <= 1.25:
      out.append(f"size bias: median image of {cls} has {ratio:.2f}x the pixels of real; "
                 "a detector can learn the size instead of the fingerprint.")
  return out


def leakage(records):
  """{hash: sorted splits} for content hashes present in more than one split."""
  where = collections.defaultdict(set)
  for r in records:
    where[r["hash"]].add(r["split"])
  return {h: sorted(s, key=SPLITS.index) for h, s in where.items() if len(s) > 1}


def prepare_folder(root, out, layout="auto", fractions=(0.56, 0.24, 0.20), seed=0, dedup=False,
                   max_pixels=1 << 28, min_size=8):
  """Turns an image-folder tree into a dataset at `out` (see `fakejax.prepare`).

  Returns:
    (Dataset, summary dict). The summary is also saved as OUT/build_summary.json.
  """
  if os.path.exists(os.path.join(out, "fakejax.json")):
    raise FileExistsError(f"{out} already holds a dataset; choose another --out or delete it first")
  layout, class_names, items, ignored = scan(root, layout, fractions, seed)
  records, skipped = [], []
  for it in tqdm.tqdm(items, desc="scan", unit="img"):
    try:
      rgb, fmt = load_rgb(os.path.join(root, it.path), max_pixels, min_size)
    except BadImage as e:
      skipped.append({"path": it.path, "reason": str(e)})
      continue
    records.append({"item": it, "split": it.split, "hash": pixel_hash(rgb), "format": fmt,
                    "size": rgb.shape[:2], "class": it.class_name})
  leaks = leakage(records)
  removed = []
  if dedup:
    keep = []
    for r in records:
      if r["hash"] in leaks and r["split"] != leaks[r["hash"]][0]:
        removed.append(r["item"].path)
      else:
        keep.append(r)
    records = keep
  by_split = collections.defaultdict(list)
  for r in records:
    by_split[r["split"]].append(r)
  for s in {i.split for i in items}:
    if not by_split[s]:
      raise LayoutError(f"Split {s!r} of {root} has no usable image; {LAYOUT_HELP[layout]}")
  stats = {c: _class_stats([r for r in records if r["class"] == c]) for c in class_names}
  warns = format_bias_warnings(stats)
  leak_paths = collections.defaultdict(list)
  for r in records if not dedup else []:
    if r["hash"] in leaks:
      leak_paths[r["hash"]].append(r["item"].path)
  summary = {
      "root": os.path.abspath(root), "layout": layout, "classes": list(class_names),
      "counts": {s: len(by_split[s]) for s in SPLITS if by_split.get(s)},
      "skipped": skipped, "ignored_non_image_files": ignored,
      "class_stats": stats, "warnings": warns,
      "leakage": {"n_hashes_in_several_splits": len(leaks),
                  "examples": [v for _, v in list(leak_paths.items())[:20]],
                  "removed_by_dedup": removed},
  }

  def examples(split):
    def gen():
      for r in tqdm.tqdm(by_split[split], desc=f"write {split}", unit="img"):
        it = r["item"]
        rgb, fmt = load_rgb(os.path.join(root, it.path), max_pixels, min_size)
        yield it.path, _example(rgb, class_names, it.class_name, it.source, it.category, it.path,
                                fmt, rgb.shape[:2])
    return gen

  meta = {"kind": "folder", "layout": layout, "classes": list(class_names), "root": summary["root"],
          "fractions": list(fractions), "seed": seed, "dedup": dedup}
  os.makedirs(out, exist_ok=True)
  ds = _write(out, {s: examples(s) for s in by_split}, class_names, meta)
  with open(os.path.join(out, "build_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return ds, summary


def format_summary(summary):
  """A readable text version of a build summary."""
  lines = [f"layout: {summary['layout']}   classes: {', '.join(summary['classes'])}",
           "examples: " + ", ".join(f"{k}={v}" for k, v in summary["counts"].items())]
  for cls, s in summary["class_stats"].items():
    lines.append(f"  {cls:>12}: n={s['n']} formats={s['formats']} jpeg={s['jpeg_share']:.0%} "
                 f"sizes={s['top_sizes']}")
  if summary["skipped"]:
    lines.append(f"skipped {len(summary['skipped'])} file(s):")
    lines += [f"  {s['path']}: {s['reason']}" for s in summary["skipped"]]
  if summary["ignored_non_image_files"]:
    lines.append(f"ignored {len(summary['ignored_non_image_files'])} non-image file(s)")
  lk = summary["leakage"]
  if lk["n_hashes_in_several_splits"]:
    lines.append(f"LEAKAGE: {lk['n_hashes_in_several_splits']} image(s) appear in more than one split"
                 + (f"; --dedup removed {len(lk['removed_by_dedup'])}" if lk["removed_by_dedup"]
                    else " (use --dedup to remove them)"))
    lines += [f"  same pixels: {' == '.join(e)}" for e in lk["examples"][:10]]
  lines += [f"WARNING {w}" for w in summary["warnings"]]
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# The synthetic benchmark, built once per parameter set and cached.
# ---------------------------------------------------------------------------
def synthetic_dataset(root, size=64, counts=(("train", 200), ("val", 50), ("test", 50)), seed=0,
                      categories=synthetic.CATEGORIES, families=synthetic.FAMILIES):
  """The synthetic benchmark under `root`, generated on first use.

  Args:
    root: cache folder; each parameter set gets its own sub-folder.
    size: image side.
    counts: (split, number of real images per category) pairs; each real image
      comes with one fake per family.
    seed: generation seed.
    categories: content categories.
    families: generator families.

  Returns:
    the Dataset.
  """
  params = {"size": size, "counts": [list(c) for c in counts], "seed": seed,
            "categories": list(categories), "families": list(families), "version": 1}
  key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
  out = os.path.join(root, f"synthetic_{size}px_{key}")
  if os.path.exists(os.path.join(out, "fakejax.json")):
    return Dataset(out)
  class_names = (REAL,) + tuple(families)
  logging.info("Generating the synthetic benchmark in %s", out)

  def examples(split, n):
    def gen():
      with tqdm.tqdm(total=n * len(categories) * (1 + len(families)), desc=f"synthetic {split}",
                     unit="img") as bar:
        for _, ex in synthetic.generate({split: n}, size, seed, categories, families):
          bar.update()
          cls = ex["source"]
          yield ex["name"], _example(ex["image"], class_names, cls, cls, ex["category"],
                                     ex["name"], "PNG", (size, size))
    return gen

  meta = {"kind": "synthetic", "layout": "synthetic", "classes": list(class_names), **params}
  return _write(out, {s: examples(s, n) for s, n in counts if n > 0}, class_names, meta)


# ---------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------
class Dataset:
  """A built dataset: TFDS data sources per split plus a small index for filtering."""

  def __init__(self, path, meta=None):
    self.path = path
    if meta is None:
      meta_file = os.path.join(path, "fakejax.json")
      if not os.path.exists(meta_file):
        raise FileNotFoundError(f"{path} is not a fakejax dataset (no fakejax.json); "
                                "build one with `python -m fakejax.prepare`")
      with open(meta_file) as f:
        meta = json.load(f)
    self.meta = meta
    self.class_names = tuple(meta["classes"])
    self.builder_dir = os.path.join(path, "fakejax_images", str(FakejaxImages.VERSION))
    self._index = None

  @property
  def splits(self):
    return tuple(s for s in SPLITS if s in self._builder().info.splits)

  def _builder(self):
    return tfds.builder_from_directory(self.builder_dir)

  def source(self, split):
    """The random-access TFDS data source of a split."""
    if split not in self.splits:
      raise ValueError(f"{self.path} has no split {split!r}; it has {', '.join(self.splits)}")
    return self._builder().as_data_source(split=split)

  def write_index(self):
    """Scans every split once and stores label/source/category per record."""
    index = {}
    for split in self.splits:
      src = self.source(split)
      cols = collections.defaultdict(list)
      for i in range(len(src)):
        ex = src[i]
        for k in ("label", "class_label"):
          cols[k].append(int(ex[k]))
        for k in ("source", "category", "hash"):
          cols[k].append(ex[k].decode() if isinstance(ex[k], bytes) else ex[k])
      for k, v in cols.items():
        index[f"{split}/{k}"] = np.asarray(v)
    np.savez(os.path.join(self.builder_dir, "index.npz"), **index)

  def index(self, split):
    """{column: array over the records of `split`} for label, class_label, source, category, hash."""
    if self._index is None:
      with np.load(os.path.join(self.builder_dir, "index.npz")) as z:
        self._index = {k: z[k] for k in z.files}
    return {k.split("/", 1)[1]: v for k, v in self._index.items() if k.startswith(split + "/")}

  def select(self, split, sources=(), categories=(), exclude_categories=()):
    """Record indices of `split` whose source/category match.

    Real images are always kept when `sources` names generators: a binary
    detector trained on generator A sees real images and A's fakes.
    """
    idx = self.index(split)
    keep = np.ones(len(idx["label"]), bool)
    if sources:
      known = set(idx["source"])
      unknown = [s for s in sources if s not in known]
      if unknown:
        raise ValueError(f"Unknown source(s) {unknown} in {self.path} split {split}; "
                         f"known: {', '.join(sorted(known))}")
      keep &= np.isin(idx["source"], list(sources) + [REAL])
    if categories:
      keep &= np.isin(idx["category"], list(categories))
    if exclude_categories:
      keep &= ~np.isin(idx["category"], list(exclude_categories))
    sel = np.flatnonzero(keep)
    if not len(sel):
      raise ValueError(f"No examples left in {self.path} split {split} for sources={sources} "
                       f"categories={categories} exclude_categories={exclude_categories}")
    return sel


def open_dataset(data_cfg):
  """The Dataset named by a config's `data` block (a prepared folder, or synthetic)."""
  if data_cfg.dir:
    return Dataset(data_cfg.dir)
  syn = data_cfg.synthetic
  return synthetic_dataset(data_cfg.cache_dir, size=syn.size,
                           counts=(("train", syn.train), ("val", syn.val), ("test", syn.test)),
                           seed=syn.seed, categories=tuple(syn.categories),
                           families=tuple(syn.families))
