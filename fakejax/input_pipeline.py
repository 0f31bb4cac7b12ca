"""The grain training pipeline over the TFDS array_record datasets.

seeded shuffle -> repeat -> random_map(decode + augment) -> this process's part of each global
batch -> batch -> [worker processes]. Augmentation randomness is drawn from the *global*
position of an example in the stream, and each process takes a contiguous block of every
global batch, so the global batch of a step - its examples, their order and their crops,
flips, blur and JPEG - is the same on 1 process or N. The iterator state goes into the
checkpoint, so a resumed run continues at the exact next batch.

Batches are dicts of numpy arrays, process-local: `image` uint8 (B, H, W, 3) (normalisation
happens on the device, which moves 4x fewer bytes), `label` int32 (B,) and `index` int32 (B,),
the record index in the split. Patch mode returns B*K patches. Which records a run trains on
(and which it holds out for validation) is the run's: runs.Selection; evaluation reads
through fakejax.scoring instead.

Paired training (`data.pairs`, aligned data: AlignedForensics, DDA): the stream is of (real, fake)
pairs, each fake the reconstruction of its real (`pairs_of`); both images of a pair get the
same augmentation (the same crop, flip, blur, JPEG, resize: one seed for the two), and a batch of
B images holds B/2 whole pairs, real then fake.
"""

import dataclasses
import os

import grain
import jax
import numpy as np

from fakejax import augment
from fakejax import cli
from fakejax import processes
from fakejax.datasets import images
from fakejax.datasets import layouts


@dataclasses.dataclass
class Subset:
  """A random-access view of some records of a TFDS data source (picklable)."""
  source: object
  indices: np.ndarray

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]


@dataclasses.dataclass
class TrainTransform:
  """Decode + augment one record (picklable, so it runs in grain worker processes)."""
  aug: object
  size: int
  key: str
  too_small: str
  storage: str
  patches: int = 0
  patch_size: int = 0

  def __call__(self, item, rng):
    return self.augmented(item, self.decode(item), rng)

  def decode(self, item):
    """The record's pixels."""
    _, ex = item
    return images.decode(ex["image"], ex["shape"], self.storage)

  def augmented(self, item, img, rng):
    """The batch entry of a record whose pixels are `img`, augmented with `rng`."""
    i, ex = item
    name = f"record {i}"
    if self.patches:
      img = augment.train_augment(img, rng, self.aug, 0, self.too_small, name)
      img = augment.fit(img, self.patch_size, self.too_small, name)
      img = augment.random_patches(img, self.patch_size, self.patches, rng)
    else:
      img = augment.train_augment(img, rng, self.aug, self.size, self.too_small, name)
    return {"image": img, "label": np.int32(ex[self.key]), "index": np.int32(i)}


@dataclasses.dataclass
class _Indexed:
  """Record i of a Subset, with its index in the split (for the batch's `index`)."""
  subset: Subset

  def __len__(self):
    return len(self.subset)

  def __getitem__(self, i):
    return int(self.subset.indices[i]), self.subset[i]


@dataclasses.dataclass
class _ProcessPart:
  """Element j of this process's stream: the examples [p*b, (p+1)*b) of every global batch."""
  parent: object
  global_batch: int
  local_batch: int
  process: int

  def __len__(self):
    return len(self.parent) // self.global_batch * self.local_batch

  def __getitem__(self, j):
    step, k = divmod(j, self.local_batch)
    return self.parent[step * self.global_batch + self.process * self.local_batch + k]


def pair_key(path):
  """The name a real and its aligned fake share: the path without its real/fake folder and
  extension ('vae/train/0_real/x.png' and 'vae/train/1_fake/x.png' -> 'vae/train/x')."""
  parts = str(path).split("/")
  names = {n.lower() for n in layouts.REAL_NAMES + layouts.FAKE_NAMES}
  k = next((i for i, part in enumerate(parts[:-1]) if part.lower() in names), None)
  if k is not None:
    parts = parts[:k] + parts[k + 1:]
  return os.path.splitext("/".join(parts))[0]


def pairs_of(dataset, indices, split="train"):
  """(n, 2) record indices [real, fake] of the aligned pairs among `indices` of `split`: a real
  and a fake whose paths differ only in their real/fake folder (pair_key), sorted by the real's.

  Raises:
    cli.UserError: when `indices` hold no such pair (data.pairs on a dataset that is not aligned).
  """
  idx = dataset.index(split)
  reals, fakes = {}, {}
  for i in indices:
    (reals if idx["label"][i] == 0 else fakes)[pair_key(idx["path"][i])] = int(i)
  pairs = sorted((r, fakes[k]) for k, r in reals.items() if k in fakes)
  if not pairs:
    raise cli.UserError(f"data.pairs: no real of {dataset.path} {split} has an aligned fake (the same path "
                        f"but for its real/fake folder, as fakejax.aligned and the photo benchmark's "
                        f"aligned family write them)")
  return np.asarray(pairs, np.int64)


@dataclasses.dataclass
class PairTransform:
  """Decode a (real, fake) pair, blend the fake with its real (DDA's pixel- and frequency-mix,
  augment.mix_pair, when asked), and augment both with one seed: the same crop, flip, blur, JPEG."""
  one: TrainTransform

  def __call__(self, pair, rng):
    seed = int(rng.integers(2**63))
    real, fake = (self.one.decode(item) for item in pair)
    fake = augment.mix_pair(real, fake, self.one.aug, rng)
    outs = [self.one.augmented(item, img, np.random.default_rng(seed)) for item, img in zip(pair, (real, fake))]
    return {k: np.stack([o[k] for o in outs]) for k in outs[0]}


@dataclasses.dataclass
class _IndexedPairs:
  """Pair i of a dataset source: ((record, example) of the real, of the fake)."""
  source: object
  pairs: np.ndarray

  def __len__(self):
    return len(self.pairs)

  def __getitem__(self, i):
    return tuple((int(r), self.source[int(r)]) for r in self.pairs[i])


def _flatten_pairs(batch):
  """(B, 2, ...) pairs -> (2B, ...), each real followed by its fake."""
  return {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}


def _flatten_patches(batch):
  """(B, K, P, P, 3) patches -> (B*K, P, P, 3), labels and indices repeated K times."""
  b, k = batch["image"].shape[:2]
  return {"image": batch["image"].reshape((b * k,) + batch["image"].shape[2:]),
          "label": np.repeat(batch["label"], k), "index": np.repeat(batch["index"], k)}


def make_train_iter(dataset, data_cfg, aug_cfg, global_batch, seed, *, indices, label_key,
                    process_index=None, process_count=None):
  """The training iterator (infinite, checkpointable).

  Args:
    dataset: a datasets.Dataset.
    data_cfg: the config's `data` block.
    aug_cfg: the config's `aug` block.
    global_batch: examples per step over all processes (patch mode: images).
    seed: shuffle and augmentation seed.
    indices: the training records (runs.Selection.train).
    label_key: the index column of the labels (runs.Task.label_key).
    process_index, process_count: this process and how many (default: jax's).

  Returns:
    a grain DatasetIterator of process-local batches.
  """
  nproc = jax.process_count() if process_count is None else process_count
  proc = jax.process_index() if process_index is None else process_index
  if global_batch % nproc:
    raise cli.UserError(f"Global batch {global_batch} is not divisible by the {nproc} processes")
  transform = TrainTransform(aug_cfg, data_cfg.image_size, label_key, data_cfg.too_small, dataset.storage,
                             data_cfg.patches_per_image, data_cfg.patch_size)
  per = 1
  if data_cfg.get("pairs", False):  # Runs saved before the key have none.
    if data_cfg.patches_per_image or global_batch % (2 * nproc):
      raise cli.UserError("data.pairs needs whole images (patches_per_image 0) and a global batch divisible "
                          f"by 2 x the {nproc} processes, got {global_batch}")
    src, transform, per = _IndexedPairs(dataset.source("train"), pairs_of(dataset, indices)), PairTransform(transform), 2
  else:
    if aug_cfg.get("pixel_mix_prob", 0.0) or aug_cfg.get("freq_mix_prob", 0.0):
      raise cli.UserError("aug.pixel_mix_prob / aug.freq_mix_prob blend a fake with its own real: set data.pairs")
    src = _Indexed(Subset(dataset.source("train"), indices))
  ds = grain.MapDataset.source(src).seed(seed).shuffle().repeat()
  # Randomness from the global position, before this process takes its part of each batch.
  ds = ds.random_map(transform)
  local = global_batch // nproc // per
  ds = grain.MapDataset.source(_ProcessPart(ds, global_batch // per, local, proc))
  ds = ds.batch(local, drop_remainder=True)
  if per == 2:
    ds = ds.map(_flatten_pairs)
  if data_cfg.patches_per_image:
    ds = ds.map(_flatten_patches)
  it = ds.to_iter_dataset(read_options(data_cfg))
  workers = worker_count(data_cfg.workers)
  if workers:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(it)


# Worker processes 'auto' starts at most: past this, one accelerator process is fed well enough.
MAX_AUTO_WORKERS = 32


def _cores():
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_count(workers, backend=None):
  """data.workers, or for -1 ('auto') what feeds this process's devices.

  On an accelerator: this process's share of the host's cores (the cores over the processes on
  the host, processes.local_processes) less one for the training loop, at most MAX_AUTO_WORKERS:
  a ResNet-50 step on one H100 eats thousands of images a second, ~700 per worker decoding raw
  pixels (docs/performance.md). On a CPU: 0, decoding in this process's threads, since the cores
  also compute the steps.
  """
  if workers >= 0:
    return workers
  if (backend or jax.default_backend()) == "cpu":
    return 0
  return max(1, min(_cores() // processes.local_processes() - 1, MAX_AUTO_WORKERS))


def read_options(data_cfg):
  """grain's reading threads and read-ahead, bounded: the elements here are whole batches, and
  grain's defaults (16 threads, 500 elements) would buffer up to 500 batches per worker (~6 GB
  for configs/xception.py) while training pauses for an evaluation.

  Threads: data.read_threads, or the cores shared among the worker processes (at most 16);
  read-ahead: data.prefetch batches.
  """
  workers = max(worker_count(data_cfg.workers), 1)
  threads = data_cfg.read_threads or min(max(_cores() // workers, 1), 16)
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(data_cfg.prefetch, 1))
