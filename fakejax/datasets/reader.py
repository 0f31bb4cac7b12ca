"""Reading a built dataset: TFDS data sources per split, the side index, and the test sets of
the field's protocol (each generator's fakes against its own reals)."""

import glob
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from fakejax import cli

from fakejax.datasets import images
from fakejax.datasets.layouts import REAL
from fakejax.datasets.layouts import SPLITS

GROUP_BY = ("source", "category", "none")


class DatasetError(cli.UserError):
  """A dataset that cannot serve what was asked (missing split, unpaired generator, ...)."""


class Dataset:
  """A built dataset: TFDS data sources per split plus a small index for selecting records."""

  def __init__(self, path, meta=None):
    self.path = path
    if meta is None:
      meta_file = os.path.join(path, "fakejax.json")
      if not os.path.exists(meta_file):
        raise DatasetError(f"{path} is not a fakejax dataset (no fakejax.json); "
                           "build one with `python -m fakejax.prepare`")
      with open(meta_file) as f:
        meta = json.load(f)
    if meta.get("format_version", 1) < 2:
      raise DatasetError(f"{path} was prepared by an older fakejax (format {meta.get('format_version', 1)}); "
                         "prepare it again with `python -m fakejax.prepare`")
    self.meta = meta
    self.class_names = tuple(meta["classes"])
    self.storage = meta.get("storage", "png")
    self.pairs = meta.get("pairs") or {}
    dirs = sorted(glob.glob(os.path.join(path, "fakejax_images", "*", "dataset_info.json")))
    if not dirs:
      raise DatasetError(f"{path} has no built records (fakejax_images/*/); prepare it again")
    self.builder_dir = os.path.dirname(dirs[-1])
    self._index = None
    self._builder = None

  def _tfds(self):
    if self._builder is None:
      self._builder = tfds.builder_from_directory(self.builder_dir)
    return self._builder

  @property
  def splits(self):
    return tuple(s for s in SPLITS if s in self._tfds().info.splits)

  def source(self, split):
    """The random-access TFDS data source of a split."""
    if split not in self.splits:
      raise DatasetError(f"{self.path} has no split {split!r}; it has {', '.join(self.splits)}")
    return self._tfds().as_data_source(split=split)

  def decode(self, record):
    """The uint8 HxWx3 pixels of a record of `source()`."""
    return images.decode(record["image"], record["shape"], self.storage)

  def index(self, split):
    """{column: array over the records of `split`} (builder.INDEX_COLUMNS)."""
    if self._index is None:
      with np.load(os.path.join(self.builder_dir, "index.npz")) as z:
        self._index = {k: z[k] for k in z.files}
    if f"{split}/label" not in self._index:
      raise DatasetError(f"{self.path} has no split {split!r}; it has {', '.join(self.splits)}")
    return {k.split("/", 1)[1]: v for k, v in self._index.items() if k.startswith(split + "/")}

  def paired_reals(self, split, generator):
    """Mask of the real images of `split` that generator's fakes are scored against.

    The declared pairing (prepare --pair) first, then the reals of the generator's own
    folder (CNNDetection, GenImage), then reals shared by every generator (binary layouts,
    the synthetic benchmark).

    Raises:
      DatasetError: naming the generator when no real image pairs with it.
    """
    idx = self.index(split)
    real = idx["label"] == 0
    declared = self.pairs.get(generator) or self.pairs.get("*")
    if declared:
      mask = real & np.isin(idx["group"], declared)
    else:
      mask = real & (idx["group"] == generator)
      if not mask.any():
        mask = real & (idx["group"] == "")
    if not mask.any():
      found = sorted(str(g) for g in set(idx["group"][real])) if real.any() else []
      raise DatasetError(
          f"No real images pair with generator {generator!r} in {self.path} split {split} "
          + (f"(real folders: {', '.join(g or '(shared)' for g in found)}); prepare with "
             f"--pair {generator}=REAL_FOLDER" if found else "(the split has no real images)"))
    return mask

  def select(self, split, sources=(), categories=(), exclude_categories=()):
    """Record indices of `split` whose source/category match.

    With `sources`, the fakes of those generators and the reals they pair with
    (`paired_reals`): a binary detector trained on generator A sees A's fakes and A's reals.
    """
    idx = self.index(split)
    fake = idx["label"] == 1
    if sources:
      known = set(idx["source"][fake])
      unknown = [s for s in sources if s not in known and s != REAL]
      if unknown:
        raise DatasetError(f"Unknown source(s) {unknown} in {self.path} split {split}; "
                           f"known: {', '.join(sorted(known))}")
      keep = fake & np.isin(idx["source"], list(sources))
      for s in sources:
        if s != REAL:
          keep |= self.paired_reals(split, s)
    else:
      keep = np.ones(len(fake), bool)
    if categories:
      keep &= np.isin(idx["category"], list(categories))
    if exclude_categories:
      keep &= ~np.isin(idx["category"], list(exclude_categories))
    sel = np.flatnonzero(keep)
    if not len(sel):
      raise DatasetError(f"No examples left in {self.path} split {split} for sources={sources} "
                         f"categories={categories} exclude_categories={exclude_categories}")
    return sel

  def test_sets(self, split, group_by="source", sources=(), prefix=""):
    """[(name, record indices)]: the field's protocol, one set per generator or category.

    'source': each generator's fakes with the reals it pairs with (CNNDetection,
    UniversalFakeDetect); 'category': the fakes of a content category with the reals of that
    category; 'none': the whole split. Names start with `prefix`.

    Raises:
      DatasetError: for a set without real images (never a silent row of fakes only).
    """
    if group_by not in GROUP_BY:
      raise DatasetError(f"Unknown group_by {group_by!r}; known: {', '.join(GROUP_BY)}")
    idx = self.index(split)
    fake = idx["label"] == 1
    gens = [str(s) for s in dict.fromkeys(idx["source"][fake]) if not sources or s in sources]
    if sources and not gens:
      raise DatasetError(f"No generator of {self.path} split {split} matches sources={list(sources)}; "
                         f"known: {', '.join(sorted(set(idx['source'][fake])))}")
    if group_by == "none":
      return [(prefix + "all", self.select(split, tuple(sources)))]
    if not gens:
      raise DatasetError(f"{self.path} split {split} has no fake images; use --group_by none")
    if group_by == "source":
      return [(prefix + g, np.flatnonzero((fake & (idx["source"] == g)) | self.paired_reals(split, g)))
              for g in sorted(gens)]
    reals = np.zeros(len(fake), bool)
    for g in gens:
      reals |= self.paired_reals(split, g)
    fakes = fake & np.isin(idx["source"], gens)
    cats = sorted(str(c) for c in set(idx["category"][fakes]) if c)
    if not cats:
      raise DatasetError(f"{self.path} has no content categories; use --group_by source or none")
    out = []
    for c in cats:
      in_c = idx["category"] == c
      if not (reals & in_c).any():
        raise DatasetError(f"Category {c!r} of {self.path} split {split} has fakes but no real images")
      out.append((prefix + c, np.flatnonzero((fakes | reals) & in_c)))
    return out
