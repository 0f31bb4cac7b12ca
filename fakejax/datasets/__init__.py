"""Datasets: image folders and the synthetic benchmark as TFDS array_record files.

  images   decoding any image file to 8-bit RGB, lossless storage (PNG or raw), content hashes
  layouts  the folder conventions of published datasets, declared as path patterns
  checks   what a build reports: format/size bias, leakage between splits
  builder  the TFDS builder; `prepare_folder` and `synthetic_dataset`
  reader   `Dataset`: data sources, the side index, the field's test-set protocol
"""

from fakejax.datasets.builder import prepare_folder
from fakejax.datasets.builder import photo_dataset
from fakejax.datasets.builder import synthetic_dataset
from fakejax.datasets.checks import format_summary
from fakejax.datasets.images import BadImage
from fakejax.datasets.images import decode_png
from fakejax.datasets.images import list_images
from fakejax.datasets.images import load_rgb
from fakejax.datasets.images import STORAGES
from fakejax.datasets.layouts import FAKE
from fakejax.datasets.layouts import hash_split
from fakejax.datasets.layouts import LAYOUT_HELP
from fakejax.datasets.layouts import LayoutError
from fakejax.datasets.layouts import LAYOUTS
from fakejax.datasets.layouts import Names
from fakejax.datasets.layouts import parse_pairs
from fakejax.datasets.layouts import REAL
from fakejax.datasets.layouts import scan
from fakejax.datasets.layouts import SPLITS
from fakejax.datasets.reader import Dataset
from fakejax.datasets.reader import DatasetError
from fakejax.datasets.reader import GROUP_BY

__all__ = ["BadImage", "Dataset", "DatasetError", "FAKE", "GROUP_BY", "LAYOUT_HELP", "LAYOUTS",
           "LayoutError", "Names", "REAL", "SPLITS", "STORAGES", "decode_png", "format_summary",
           "hash_split", "list_images", "load_rgb", "open_dataset", "open_named", "parse_pairs", "photo_dataset",
           "prepare_folder", "scan", "synthetic_dataset"]


def open_dataset(data_cfg):
  """The Dataset named by a config's `data` block (a prepared folder, 'photo', or synthetic)."""
  if data_cfg.dir == "photo":
    p = data_cfg.photo
    return photo_dataset(data_cfg.cache_dir, size=p.size,
                         counts=(("train", p.train), ("val", p.val), ("test", p.test)), seed=p.seed,
                         families=tuple(p.families), postprocess=p.postprocess,
                         gen_steps=p.gen_steps, storage=p.storage, train_all=p.train_all,
                         aligned=p.get("aligned", False))
  if data_cfg.dir:
    return Dataset(data_cfg.dir)
  syn = data_cfg.synthetic
  return synthetic_dataset(data_cfg.cache_dir, size=syn.size,
                           counts=(("train", syn.train), ("val", syn.val), ("test", syn.test)),
                           seed=syn.seed, categories=tuple(syn.categories),
                           families=tuple(syn.families), storage=syn.get("storage", "png"))


def open_named(name):
  """A prepared dataset folder, or an embedded benchmark by name ('synthetic', 'photo') as the
  default config makes it."""
  if name in ("synthetic", "photo"):
    from fakejax import defaults  # pylint: disable=g-import-not-at-top
    data = defaults.get_config().data
    data.dir = "" if name == "synthetic" else name
    return open_dataset(data)
  return Dataset(name)
