"""grain input pipelines over the TFDS array_record datasets.

Train: seeded shuffle -> repeat -> per-process shard -> random_map(augment) ->
batch(drop_remainder) -> [worker processes]. Its iterator state goes into the
checkpoint, so a resumed run continues at the exact next batch.

Eval: a fixed order where every example is seen exactly once; the last partial
batch is padded and carries mask=0 for the padding.

Batches are dicts of numpy arrays, process-local: `image` uint8 (B, H, W, 3)
(normalisation happens on the device, which moves 4x fewer bytes), `label`
int32 (B,), and for eval `mask` and `index`. Patch mode returns B*K patches.
"""

import dataclasses

import grain
import jax
import numpy as np

from fakejax import augment
from fakejax import datasets


@dataclasses.dataclass
class Subset:
  """A random-access view of some records of a TFDS data source (picklable)."""
  source: object
  indices: np.ndarray

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]


def label_key(data_cfg):
  """The record field used as the label: binary real/fake or the attribution class."""
  if data_cfg.task not in ("binary", "attribution"):
    raise ValueError(f"Unknown data.task {data_cfg.task!r}; known: binary, attribution")
  return "label" if data_cfg.task == "binary" else "class_label"


def num_classes(dataset, data_cfg):
  return 2 if data_cfg.task == "binary" else len(dataset.class_names)


def balance(indices, labels, seed):
  """Oversamples every class up to the largest one (deterministic)."""
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(labels, return_counts=True)
  out = []
  for c in classes:
    idx = indices[labels == c]
    extra = rng.choice(idx, counts.max() - len(idx)) if len(idx) < counts.max() else idx[:0]
    out.append(np.concatenate([idx, extra]))
  return np.sort(np.concatenate(out))


def _name(ex):
  p = ex["path"]
  return p.decode() if isinstance(p, bytes) else str(p)


@dataclasses.dataclass
class TrainTransform:
  """Decode + augment one record (picklable, so it runs in grain worker processes)."""
  aug: object
  size: int
  key: str
  too_small: str
  patches: int = 0
  patch_size: int = 0

  def __call__(self, ex, rng):
    img = datasets.decode_png(ex["image"])
    if self.patches:
      img = augment.train_augment(img, rng, self.aug, 0, self.too_small, _name(ex))
      img = augment.fit(img, self.patch_size, self.too_small, _name(ex))
      img = augment.random_patches(img, self.patch_size, self.patches, rng)
    else:
      img = augment.train_augment(img, rng, self.aug, self.size, self.too_small, _name(ex))
    return {"image": img, "label": np.int32(ex[self.key])}


def _flatten_patches(batch):
  """(B, K, P, P, 3) patches -> (B*K, P, P, 3), labels repeated K times."""
  b, k = batch["image"].shape[:2]
  return {"image": batch["image"].reshape((b * k,) + batch["image"].shape[2:]),
          "label": np.repeat(batch["label"], k)}


def train_indices(dataset, data_cfg, split="train"):
  """Record indices of the training subset the config asks for."""
  idx = dataset.select(split, tuple(data_cfg.train_sources), tuple(data_cfg.train_categories),
                       tuple(data_cfg.exclude_categories))
  if data_cfg.balance:
    idx = balance(idx, dataset.index(split)[label_key(data_cfg)][idx], data_cfg.seed)
  return idx


def make_train_iter(dataset, data_cfg, aug_cfg, global_batch, seed):
  """The training iterator (infinite, checkpointable).

  Args:
    dataset: a datasets.Dataset.
    data_cfg: the config's `data` block.
    aug_cfg: the config's `aug` block.
    global_batch: examples per step over all processes (patch mode: images).
    seed: shuffle and augmentation seed.

  Returns:
    a grain DatasetIterator of process-local batches.
  """
  nproc = jax.process_count()
  if global_batch % nproc:
    raise ValueError(f"Global batch {global_batch} is not divisible by the {nproc} processes")
  src = Subset(dataset.source("train"), train_indices(dataset, data_cfg))
  ds = grain.MapDataset.source(src).seed(seed).shuffle().repeat()
  ds = ds[jax.process_index()::nproc]  # Each process reads only its own shard.
  ds = ds.random_map(TrainTransform(aug_cfg, data_cfg.image_size, label_key(data_cfg),
                                    data_cfg.too_small, data_cfg.patches_per_image,
                                    data_cfg.patch_size))
  ds = ds.batch(global_batch // nproc, drop_remainder=True)
  if data_cfg.patches_per_image:
    ds = ds.map(_flatten_patches)
  it = ds.to_iter_dataset()
  if data_cfg.workers:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.workers))
  return iter(it)


@dataclasses.dataclass
class EvalTransform:
  """Index -> example for evaluation; indices past the end give masked padding."""
  source: object
  n: int
  size: int
  key: str
  too_small: str
  resize: int = 0

  def __call__(self, i):
    if i >= self.n:
      return {"image": np.zeros((self.size, self.size, 3), np.uint8), "label": np.int32(0),
              "mask": np.bool_(False), "index": np.int32(-1)}
    ex = self.source[i]
    img = augment.eval_preprocess(datasets.decode_png(ex["image"]), self.size, self.resize,
                                  self.too_small, _name(ex))
    return {"image": img, "label": np.int32(ex[self.key]), "mask": np.bool_(True),
            "index": np.int32(i)}


def make_eval_iter(source, data_cfg, global_batch, threads=4):
  """Every record of `source` exactly once, in order, padded to whole batches.

  Args:
    source: a random-access source (e.g. a Subset).
    data_cfg: the config's `data` block (image_size, task, too_small).
    global_batch: examples per batch over all processes.
    threads: decoding threads.

  Returns:
    an iterator of process-local batches with `mask` (False on padding) and
    `index` (position in `source`, -1 on padding).
  """
  nproc = jax.process_count()
  n = len(source)
  padded = -(-n // global_batch) * global_batch
  ds = grain.MapDataset.range(padded)[jax.process_index()::nproc]
  ds = ds.map(EvalTransform(source, n, data_cfg.image_size, label_key(data_cfg), data_cfg.too_small,
                            data_cfg.eval_resize))
  ds = ds.batch(global_batch // nproc, drop_remainder=False)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)))
