"""The engine: images -> views -> batched jitted forward over the mesh -> per-image results.

Three steps, each its own piece:
  plan      from the images' sizes alone (no pixels): every input's shape and count, the batches
            (one compiled program per input shape), the images a view cannot use;
  load      a thread pool decodes, perturbs and cuts the images of this process's rows of the
            coming batches, `in_flight + 1` batches ahead of the forward;
  dispatch  each batch goes to the devices while earlier batches' outputs are fetched; an
            image's result is decided (scoring.rules) once all its inputs are back.

Several processes (jax.distributed): every process builds the same plan, loads only the images
of its part of each global batch, and receives every output, so each image is counted exactly
once and every process holds the same results.
"""

import collections
import concurrent.futures
import dataclasses
import os

from absl import logging
import jax
import numpy as np

from fakejax import augment
from fakejax import sharding
from fakejax.datasets import images
from fakejax.scoring import rules


@dataclasses.dataclass
class Result:
  """One image's outcome. `outputs` are the forward's per-input outputs of the first copy."""
  score: float = float("nan")
  pred: int = -1
  probs: np.ndarray = None
  copy_scores: tuple = ()
  n_inputs: int = 0
  view: str = ""
  grid: tuple = None
  outputs: dict = None
  error: str = ""

  @property
  def patch_logits(self):
    return None if self.outputs is None else self.outputs["logits"]


@dataclasses.dataclass
class _Plan:
  """What the images become before any is read."""
  results: list  # Result per image: view, n_inputs and grid set, or the error.
  expected: np.ndarray  # Inputs per image over every copy.
  valid: np.ndarray  # (n, 2): per image, its inputs' size before padding.
  batches: list  # (input shape, padded, [(image, copy, input), ...]) in dispatch order.


def _plan(sizes, view, n_copies, perturbation, batch_for):
  """The plan of images of `sizes` (an error string for an unreadable header) under `view`."""
  n = len(sizes)
  results = [Result() for _ in range(n)]
  buckets = collections.defaultdict(list)  # (input shape, padded) -> slots: one program each.
  expected, valid = np.zeros(n, int), np.zeros((n, 2), np.int32)
  for i, size in enumerate(sizes):
    if isinstance(size, str):
      results[i].error = size
      continue
    h, w = perturbation.size_after(*size) if perturbation else size
    try:
      shape, count = view.plan(h, w)
    except augment.TooSmall as e:
      results[i].error = str(e)
      continue
    results[i].view, results[i].n_inputs, results[i].grid = view.kind(h, w), count, view.grid(h, w)
    expected[i] = count * n_copies
    padded = view.pads(h, w)
    valid[i] = (h, w) if padded else shape
    for c in range(n_copies):
      buckets[shape, padded] += [(i, c, j) for j in range(count)]
  batches = [(shape, padded, slots[s:s + bs]) for (shape, padded), slots in buckets.items()
             for bs in [batch_for(shape)] for s in range(0, len(slots), bs)]
  return _Plan(results, expected, valid, batches)


class _Loader:
  """Host batches of this process's rows, their images decoded on a thread pool ahead of use."""

  def __init__(self, pool, prepare, plan, local_slots, ahead):
    self.pool, self.prepare, self.plan, self.local_slots, self.ahead = pool, prepare, plan, local_slots, ahead
    self.futures, self.errors = {}, {}  # image -> its cut inputs (pending); image -> its error.
    self.needed = [{i for i, _, _ in local_slots(shape, slots)[0]} for shape, _, slots in plan.batches]

  def _prefetch(self, k):
    for i in self.needed[k] if k < len(self.needed) else ():
      if i not in self.futures:
        self.futures[i] = self.pool.submit(self.prepare, i)

  def batch(self, k):
    """(images, decoded ok, valid sizes) of this process's rows of batch k."""
    if k == 0:
      self._prefetch(0)
    for a in range(1, self.ahead + 1):
      self._prefetch(k + a)
    shape, _, slots = self.plan.batches[k]
    mine, b = self.local_slots(shape, slots)
    x = np.zeros((b,) + tuple(shape) + (3,), np.uint8)
    ok = np.zeros(b, bool)
    v = np.tile(np.asarray(shape, np.int32), (b, 1))  # Dummy rows: unpadded.
    for row, (i, c, j) in enumerate(mine):
      v[row] = self.plan.valid[i]
      try:
        x[row] = self.futures[i].result()[c][0][j]
        ok[row] = True
      except (images.BadImage, augment.TooSmall, OSError, ValueError) as e:
        self.errors.setdefault(i, str(e))
    for i in self.needed[k] - set().union(*self.needed[k + 1:k + 1 + self.ahead]):
      self.futures.pop(i, None)  # Not needed by the batches decoded ahead: free its pixels.
    return x, ok, v


class _Gatherer:
  """Collects the outputs of dispatched batches and decides each image once all its inputs are back."""

  def __init__(self, plan, view, n_copies, threshold, has_real, errors):
    self.plan, self.view, self.n_copies = plan, view, n_copies
    self.threshold, self.has_real, self.errors = threshold, has_real, errors
    self.outputs = collections.defaultdict(dict)  # image -> {(copy, input): outputs}
    self.n_done = sum(1 for r in plan.results if r.error)

  def add(self, k, out, ok):
    """The fetched outputs of batch k (a dict of arrays, or the logits) and its rows' ok flags."""
    out = out if isinstance(out, dict) else {"logits": out}
    out, ok = sharding.to_host((out, ok))
    results = self.plan.results
    for row, (i, c, j) in enumerate(self.plan.batches[k][2]):
      if not ok[row]:
        if not results[i].error:
          results[i].error = self.errors.get(i, "could not be decoded")
          self.n_done += 1
        continue
      self.outputs[i][(c, j)] = {key: v[row] for key, v in out.items()}
      if len(self.outputs[i]) == self.plan.expected[i] and not results[i].error:
        self._decide(i)
        self.n_done += 1

  def _decide(self, i):
    r, got, view = self.plan.results[i], self.outputs.pop(i), self.view
    per_copy = [rules.decide(view.rule, np.stack([got[(c, j)]["logits"] for j in range(r.n_inputs)]),
                             self.threshold, view.theta) for c in range(self.n_copies)]
    r.probs = np.mean(per_copy, 0)
    r.score, r.pred = rules.verdict(r.probs, view.rule, self.threshold, self.has_real)
    r.copy_scores = tuple(rules.verdict(q, view.rule, self.threshold, self.has_real)[0] for q in per_copy)
    r.outputs = {k: np.stack([got[(0, j)][k] for j in range(r.n_inputs)]) for k in got[(0, 0)]}

  def results(self):
    for i, r in enumerate(self.plan.results):
      if r.error:
        self.outputs.pop(i, None)
        r.n_inputs = 0
    return self.plan.results


class Evaluator:
  """Batched forward of image views over a device mesh, on one process or many.

  Args:
    forward: jitted function (uint8 images (B, H, W, 3), global) -> logits (B, C), or a dict
      of arrays with a leading batch axis holding 'logits' (e.g. Grad-CAM maps).
    mesh: the data mesh (sharding.make_mesh()).
    batch_size: global batch of the crop-sized inputs; must divide by the device count.
    crop: the inputs' usual side: larger inputs (whole images) get proportionally smaller
      batches, so a batch always holds about batch_size * crop^2 pixels.
    threads: decoding threads per process (0: one per core).
    in_flight: batches dispatched to the devices before the oldest one's outputs are fetched.
    has_real: whether class 0 is 'real'; without a real class (attribution among generators
      only) there is no p_fake, and Result.score is NaN.

  `forward(x)` scores inputs of one size; the padded whole-image inputs of a View call
  `forward(x, valid)` with valid (B, 2), each input's size before padding (scoring.make_forward).
  """

  def __init__(self, forward, mesh, batch_size, crop, *, threads=0, in_flight=2, has_real=True):
    sharding.check_batch(batch_size, mesh, "eval batch")
    self.forward, self.mesh, self.batch, self.crop = forward, mesh, batch_size, crop
    self.threads = threads or os.cpu_count() or 1
    self.in_flight = max(in_flight, 1)
    self.has_real = has_real

  def bucket_batch(self, shape):
    """Global batch for inputs of `shape`: ~batch * crop^2 pixels, a multiple of the devices."""
    n = self.mesh.size
    fit = self.batch * self.crop * self.crop // max(shape[0] * shape[1], 1)
    return int(min(self.batch, max(n, fit // n * n)))

  def _local_slots(self, shape, slots):
    """(this process's slots of a global batch of inputs of `shape`, its local batch size)."""
    b = self.bucket_batch(shape) // jax.process_count()
    p = jax.process_index()
    return slots[p * b:(p + 1) * b], b

  def run(self, sizes, load, view, copies=(augment.Copy(),), perturbation=None, *, threshold=0.5,
          progress=None):
    """Scores images.

    Args:
      sizes: per image, (height, width) or an error string (unreadable header).
      load: i -> uint8 HxWx3 image i (may raise images.BadImage or OSError).
      view: a scoring.View.
      copies: test-time copies (augment.tta_copies); the identity first.
      perturbation: an augment.Perturbation applied to every image first, or None.
      threshold: p_fake threshold.
      progress: optional callable(number of images finished).

    Returns:
      list of Result, one per image, identical on every process.
    """
    plan = _plan(sizes, view, len(copies), perturbation, self.bucket_batch)

    def prepare(i):
      img = load(i)
      if perturbation:
        img = perturbation(img, np.random.default_rng([view.seed, i, 15485863]))
      return [view.cut(copy(img), i) for copy in copies]

    with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
      loader = _Loader(pool, prepare, plan, self._local_slots, self.in_flight + 1)
      gatherer = _Gatherer(plan, view, len(copies), threshold, self.has_real, loader.errors)
      in_flight = collections.deque()
      for k, (_, padded, _) in enumerate(plan.batches):
        x, ok, v = sharding.to_global(self.mesh, loader.batch(k))
        # Dispatched; runs while earlier batches' outputs are fetched.
        in_flight.append((k, self.forward(x, v) if padded else self.forward(x), ok))
        while len(in_flight) > self.in_flight:
          gatherer.add(*in_flight.popleft())
          if progress:
            progress(gatherer.n_done)
      while in_flight:
        gatherer.add(*in_flight.popleft())
        if progress:
          progress(gatherer.n_done)
    return gatherer.results()


def dataset_reader(dataset, split, indices):
  """(sizes, load) of some records of a dataset split, for Evaluator.run."""
  idx = dataset.index(split)
  src = dataset.source(split)
  sizes = [(int(h), int(w)) for h, w in zip(idx["height"][indices], idx["width"][indices])]
  return sizes, lambda i: dataset.decode(src[int(indices[i])])


DDA_QUALITY = 96  # The format-debiased protocol's fixed quality (Dual-Data-Alignment's README).


def debiased_reader(dataset, split, indices, quality, seed=0):
  """dataset_reader with the fakes re-encoded as JPEGs (augment.jpeg), the reals untouched: the
  format-debiased protocol (DDA). `quality` > 0: every fake at it (DDA's 96); 0: each fake at a
  quality drawn (seeded by its record) from the qualities of the split's real files, read from
  their JPEG tables where `prepare` found them (dataset.meta['root']); DDA_QUALITY, with a
  warning, when none of them is a JPEG (the embedded benchmarks, lossless reals)."""
  sizes, load = dataset_reader(dataset, split, indices)
  idx = dataset.index(split)
  fake = idx["label"][indices] != 0
  qualities = [] if quality else real_jpeg_qualities(dataset, split)
  if quality or not len(qualities):
    if not quality:
      logging.warning("debias: no real of %s %s is a JPEG file fakejax can read; every fake at quality %d "
                      "(DDA's)", dataset.path, split, DDA_QUALITY)
    drawn = np.full(len(indices), int(quality or DDA_QUALITY))
  else:
    drawn = np.array([np.random.default_rng([seed, int(i)]).choice(qualities) for i in indices])
  return sizes, lambda i: augment.jpeg(load(i), drawn[i]) if fake[i] else load(i)


def real_jpeg_qualities(dataset, split):
  """The IJG qualities of the JPEG files among a split's reals (datasets.images.jpeg_settings)
  that can still be read, as an array (empty when there is none)."""
  idx = dataset.index(split)
  root = dataset.meta.get("root") or ""
  found = []
  for path in idx["path"][idx["label"] == 0]:
    try:
      settings = images.jpeg_settings(os.path.join(root, str(path)))
    except OSError:
      continue
    if settings:
      found.append(settings["quality"])
  return np.asarray(found, int)


def file_reader(paths, max_pixels=1 << 28):
  """(sizes, load) of image files, for Evaluator.run (a bad file's size is its error)."""
  sizes = []
  for p in paths:
    try:
      sizes.append(images.image_size(p, max_pixels))
    except images.BadImage as e:
      sizes.append(str(e))
  return sizes, lambda i: images.load_rgb(paths[i], max_pixels)[0]
