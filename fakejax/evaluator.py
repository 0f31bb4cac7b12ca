"""The one evaluation path: views of images -> batched jitted forward -> per-image decisions.

The training loop (validation), `fakejax.evaluate`, `predict`, `serve` and `explain` all call
`Evaluator.run`; none of them loads, pads, batches or votes on its own.

Views (how an image becomes model inputs):
  full        the run's evaluation crop: [resize to eval_resize] then a centre crop of image_size.
  whole       the image at its native size (or resized to eval_resize x eval_resize) through the
              fully convolutional model: CNNDetection's "no crop" evaluation. So that hundreds of
              image sizes compile a handful of programs, an image is padded (edge pixels) to its
              size bucket, each side rounded up to the next of 32, 48, 64, 96, 128, 192, 256, ...
              (at most 1.5x), and the global pooling averages only the feature cells over its
              own pixels (models.layers.valid_region). The padding still reaches the border
              cells through the convolutions: measured against the exact per-size forward, the
              logits differ by at most BUCKET_RELATIVE_BOUND of their scale (tests/test_evaluate.py); `exact_sizes`
              compiles one program per size instead, with no difference.
  tiles       image_size-independent tiles of `tile` px covering the image (the last ones overlap),
              probabilities averaged: for photos too large to run whole.
  auto        whole, or tiles above `max_whole_pixels` (what `predict` uses by default).
  grid        non-overlapping PxP patches (a remainder strip smaller than P is left out);
              majority vote, a tie counts as fake.
  random      K random PxP crops, K odd, seeded per image; majority vote.
  confident   vote among grid patches with |p_fake - p_real| >= theta; all patches if none.
  mean_logit  grid patches, logits averaged (Chai et al. 2020).
  mean_prob   grid patches, probabilities averaged.

Test-time augmentation (augment.tta_copies) runs every view on each copy of the image and
averages the class probabilities (vote fractions in the voting modes) over the copies; the
identity copy's decision is kept beside it. A perturbation (augment.Perturbation, the
robustness protocol) is applied to the decoded image first.

Several processes (jax.distributed): every process builds the same plan from the image sizes
(no pixels needed), loads only the images of its part of each global batch, and receives every
output, so each image is counted exactly once and every process holds the same results.
"""

import collections
import concurrent.futures
import dataclasses
import json
import os

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fakejax import augment
from fakejax import checkpoint
from fakejax import cli
from fakejax import defaults
from fakejax import metrics as metrics_lib
from fakejax import models
from fakejax import sharding
from fakejax.datasets import images
from fakejax.models import layers

MODES = ("full", "whole", "tiles", "auto", "grid", "random", "confident", "mean_logit", "mean_prob")
VOTING = ("grid", "random", "confident")
MIN_WHOLE = 32  # The models down-sample by 32: smaller images give no feature map.
# The largest |logit difference| of a bucketed whole image against its exact-size forward, as a
# fraction of the largest |logit| (tests/test_evaluate.py; docs/evaluation.md has measurements).
BUCKET_RELATIVE_BOUND = 0.1


def bucket_side(n):
  """The side a whole image of side n is padded to: the next of 32, 48, 64, 96, 128, 192, ..."""
  side = 32
  while True:
    for m in (side, side * 3 // 2):
      if n <= m:
        return m
    side *= 2


# ---------------------------------------------------------------------------
# Views.
# ---------------------------------------------------------------------------
def grid_patches(img, size):
  """Non-overlapping size x size patches, row-major; a remainder smaller than `size` is dropped."""
  h, w = img.shape[:2]
  if h < size or w < size:
    raise augment.TooSmall(f"image is {w}x{h}, smaller than the {size}x{size} patch")
  ny, nx = h // size, w // size
  p = img[:ny * size, :nx * size].reshape(ny, size, nx, size, 3).swapaxes(1, 2)
  return p.reshape(ny * nx, size, size, 3), (ny, nx)


def _tile_starts(length, tile):
  n = -(-length // tile)
  return np.round(np.linspace(0, length - tile, n)).astype(int) if n > 1 else np.zeros(1, int)


# Each repository's own test transform (`evaluate --preset`), as View settings: published numbers
# depend on them. Resizes are PIL bilinear to N x N (torchvision's Resize((N, N)) on PIL images),
# crops torchvision's CenterCrop (augment.center_crop; images smaller than the crop zero-padded).
PRESETS = {
    # NPR test.py: ForenSynths (and DiffusionForensics, UniversalFakeDetect) Resize((256, 256)),
    # no crop; GANGen-Detection at native size.
    "npr_forensynths": dict(mode="whole", resize=256),
    "npr_gangen": dict(mode="whole", resize=0, exact_sizes=True),
    # SAFE data/datasets.py: CenterCrop(256), no resize.
    "safe": dict(mode="full", crop=256, resize=0, too_small="zero"),
    # UniversalFakeDetect validate.py: CenterCrop(224), no resize.
    "univfd": dict(mode="full", crop=224, resize=0, too_small="zero"),
    # CNNDetection: CenterCrop(224), or the whole image (no_crop).
    "cnndetection": dict(mode="full", crop=224, resize=0, too_small="zero"),
    "cnndetection_nocrop": dict(mode="whole", resize=0, exact_sizes=True),
}


@dataclasses.dataclass(frozen=True)
class View:
  """How an image becomes model inputs (see the module docstring)."""
  mode: str = "full"
  crop: int = 64
  resize: int = 0
  too_small: str = "error"
  patch_size: int = 32
  k: int = 5
  seed: int = 0
  theta: float = 0.5
  tile: int = 1024
  max_whole_pixels: int = 1 << 22
  exact_sizes: bool = False

  def __post_init__(self):
    if self.mode not in MODES:
      raise cli.UserError(f"Unknown mode {self.mode!r}; known: {', '.join(MODES)}")
    if self.mode == "random" and self.k % 2 == 0:
      raise cli.UserError(f"random mode needs an odd number of patches (no ties), got k={self.k}")
    if self.mode in VOTING + ("mean_logit", "mean_prob") and self.patch_size not in (16, 32, 64, 128):
      raise cli.UserError(f"patch_size must be 16, 32, 64 or 128, got {self.patch_size}")

  def kind(self, h, w):
    """The concrete view for an h x w image ('auto' picks whole or tiles)."""
    if self.mode == "auto":
      return "whole" if h * w <= self.max_whole_pixels or min(h, w) < self.tile else "tiles"
    return self.mode

  def grid(self, h, w):
    """(rows, cols) of the inputs of an h x w image laid out as a grid (grid-patch modes,
    tiles), else None: what a patch heatmap is drawn on."""
    kind = self.kind(h, w)
    if kind == "tiles":
      return len(_tile_starts(h, self.tile)), len(_tile_starts(w, self.tile))
    if kind in ("grid", "confident", "mean_logit", "mean_prob"):
      return h // self.patch_size, w // self.patch_size
    return None

  def pads(self, h, w):
    """Whether an h x w image's input is padded to a larger size bucket (whole view, no resize):
    only those go through `forward(x, valid)`; an image of its bucket's size is scored as is."""
    return (self.kind(h, w) == "whole" and not self.resize and not self.exact_sizes
            and (bucket_side(h), bucket_side(w)) != (h, w))

  def plan(self, h, w):
    """(input shape (H, W), number of inputs) for an h x w image, from its size alone.

    Raises:
      augment.TooSmall: when the image cannot give the view's inputs.
    """
    kind = self.kind(h, w)
    if kind == "full":
      rh, rw = (self.resize, self.resize) if self.resize else (h, w)
      if min(rh, rw) < self.crop and self.too_small not in ("pad", "zero"):
        raise augment.TooSmall(f"image is {rw}x{rh}, smaller than the {self.crop}x{self.crop} crop "
                               "(use --mode whole, or a run with data.too_small='pad')")
      return (self.crop, self.crop), 1
    if kind == "whole":
      if self.resize:
        return (self.resize, self.resize), 1
      if min(h, w) < MIN_WHOLE:
        raise augment.TooSmall(f"image is {w}x{h}, smaller than {MIN_WHOLE} px")
      return ((h, w) if self.exact_sizes else (bucket_side(h), bucket_side(w))), 1
    if kind == "tiles":
      return (self.tile, self.tile), len(_tile_starts(h, self.tile)) * len(_tile_starts(w, self.tile))
    if min(h, w) < self.patch_size:
      raise augment.TooSmall(f"image is {w}x{h}, smaller than the {self.patch_size}x{self.patch_size} patch")
    if kind == "random":
      return (self.patch_size, self.patch_size), self.k
    return (self.patch_size, self.patch_size), (h // self.patch_size) * (w // self.patch_size)

  def cut(self, img, image_id):
    """(inputs (n, H, W, 3) uint8, patch grid (rows, cols) or None) of one decoded image."""
    h, w = img.shape[:2]
    kind = self.kind(h, w)
    if kind == "full":
      if self.resize:
        img = augment.resize(img, self.resize)
      return augment.center_crop(augment.fit(img, self.crop, self.too_small), self.crop)[None], None
    if kind == "whole":
      if self.resize:
        return augment.resize(img, self.resize)[None], None
      (bh, bw), _ = self.plan(h, w)
      return np.pad(img, ((0, bh - h), (0, bw - w), (0, 0)), mode="edge")[None], None
    if kind == "tiles":
      ys, xs = _tile_starts(h, self.tile), _tile_starts(w, self.tile)
      t = self.tile
      return np.stack([img[y:y + t, x:x + t] for y in ys for x in xs]), (len(ys), len(xs))
    if kind == "random":
      rng = np.random.default_rng([self.seed, image_id])
      return augment.random_patches(img, self.patch_size, self.k, rng), None
    return grid_patches(img, self.patch_size)

  @property
  def rule(self):
    """The decision rule of this view's inputs (see `decide`)."""
    return "mean_prob" if self.mode in ("full", "whole", "tiles", "auto") else self.mode


# ---------------------------------------------------------------------------
# Per-image rules (host side, hand-checkable).
# ---------------------------------------------------------------------------
def decide(rule, logits, threshold=0.5, theta=0.0):
  """Class probabilities of one image from its inputs' logits.

  Args:
    rule: 'mean_prob', 'mean_logit', or a voting mode (VOTING).
    logits: (n_inputs, n_classes).
    threshold: p_fake at or above which a patch is fake (binary voting).
    theta: confidence margin of the 'confident' mode.

  Returns:
    (n_classes,) probabilities; in the voting modes the fraction of votes per class.
  """
  logits = np.asarray(logits, np.float64)
  probs = metrics_lib.softmax(logits)
  n_classes = probs.shape[-1]
  if rule == "mean_prob":
    return probs.mean(0)
  if rule == "mean_logit":
    return metrics_lib.softmax(logits.mean(0))
  if rule not in VOTING:
    raise ValueError(f"Unknown rule {rule!r}")
  if rule == "confident":
    top2 = np.sort(probs, -1)[:, -2:]
    keep = (top2[:, 1] - top2[:, 0]) >= theta
    probs = probs[keep] if keep.any() else probs
  if n_classes == 2:
    fake = (probs[:, 1] >= threshold).mean()
    return np.array([1 - fake, fake])
  return np.bincount(probs.argmax(-1), minlength=n_classes) / len(probs)


def verdict(p, rule, threshold=0.5, has_real=True):
  """(score, predicted class) of an image's probabilities: score = p(fake) = 1 - p(real).

  A voting mode already thresholded each patch: the image is fake when at least half the
  votes are (a tie counts as fake). Without a real class (has_real False: class 0 is a
  generator) there is no p_fake: the score is NaN and the class is the arg-max.
  """
  score = float(1 - p[0]) if has_real else float("nan")
  if len(p) == 2 and has_real:
    return score, int(score >= (0.5 if rule in VOTING else threshold))
  return score, int(np.argmax(p))


# ---------------------------------------------------------------------------
# The evaluator.
# ---------------------------------------------------------------------------
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
  `forward(x, valid)` with valid (B, 2), each input's size before padding (make_forward).
  """

  def __init__(self, forward, mesh, batch_size, crop, threads=0, in_flight=2, has_real=True):
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

  def run(self, sizes, load, view, copies=(augment.Copy(),), perturbation=None, threshold=0.5,
          progress=None):
    """Scores images.

    Args:
      sizes: per image, (height, width) or an error string (unreadable header).
      load: i -> uint8 HxWx3 image i (may raise images.BadImage or OSError).
      view: a View.
      copies: test-time copies (augment.tta_copies); the identity first.
      perturbation: an augment.Perturbation applied to every image first, or None.
      threshold: p_fake threshold.
      progress: optional callable(number of images finished).

    Returns:
      list of Result, one per image, identical on every process.
    """
    n = len(sizes)
    results = [Result() for _ in range(n)]
    # (input shape, padded) -> [(image, copy, input)]: one compiled program per key.
    buckets = collections.defaultdict(list)
    expected = np.zeros(n, int)
    valid = np.zeros((n, 2), np.int32)  # Per image, its inputs' size before padding.
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
      results[i].view = view.kind(h, w)
      results[i].n_inputs = count
      results[i].grid = view.grid(h, w)
      expected[i] = count * len(copies)
      padded = view.pads(h, w)
      valid[i] = (h, w) if padded else shape
      for c in range(len(copies)):
        buckets[shape, padded] += [(i, c, j) for j in range(count)]
    batches = [(shape, padded, slots[s:s + bs]) for (shape, padded), slots in buckets.items()
               for bs in [self.bucket_batch(shape)] for s in range(0, len(slots), bs)]

    nproc, proc = jax.process_count(), jax.process_index()
    local_errors, gathered = {}, collections.defaultdict(dict)  # image -> {(copy, input): outputs}
    n_done = sum(1 for r in results if r.error)

    def local_slots(shape, slots):
      b = self.bucket_batch(shape) // nproc
      return slots[proc * b:(proc + 1) * b], b

    def prepare(i):
      img = load(i)
      if perturbation:
        img = perturbation(img, np.random.default_rng([view.seed, i, 15485863]))
      return [view.cut(copy(img), i) for copy in copies]

    def finish(i):
      per_copy = [decide(view.rule, np.stack([gathered[i][(c, j)]["logits"]
                                                for j in range(results[i].n_inputs)]),
                         threshold, view.theta) for c in range(len(copies))]
      p = np.mean(per_copy, 0)
      r = results[i]
      r.probs = p
      r.score, r.pred = verdict(p, view.rule, threshold, self.has_real)
      r.copy_scores = tuple(verdict(q, view.rule, threshold, self.has_real)[0] for q in per_copy)

      r.outputs = {k: np.stack([gathered[i][(0, j)][k] for j in range(r.n_inputs)])
                   for k in gathered[i][(0, 0)]}
      del gathered[i]

    with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
      futures = {}
      needed = [{i for i, _, _ in local_slots(shape, slots)[0]} for shape, _, slots in batches]

      def prefetch(k):
        for i in needed[k] if k < len(needed) else ():
          if i not in futures:
            futures[i] = pool.submit(prepare, i)

      def host_batch(k):
        shape, _, slots = batches[k]
        mine, b = local_slots(shape, slots)
        x = np.zeros((b,) + tuple(shape) + (3,), np.uint8)
        ok = np.zeros(b, bool)
        v = np.tile(np.asarray(shape, np.int32), (b, 1))  # Dummy rows: unpadded.
        for row, (i, c, j) in enumerate(mine):
          v[row] = valid[i]
          try:
            x[row] = futures[i].result()[c][0][j]
            ok[row] = True
          except (images.BadImage, augment.TooSmall, OSError, ValueError) as e:
            local_errors.setdefault(i, str(e))
        return x, ok, v

      ahead = self.in_flight + 1  # Batches whose images are being decoded ahead of the forward.
      prefetch(0)
      in_flight = collections.deque()
      for k in range(len(batches) + 1):
        if k < len(batches):
          for a in range(1, ahead + 1):
            prefetch(k + a)
          x, ok, v = host_batch(k)
          xg, okg, vg = sharding.to_global(self.mesh, (x, ok, v))
          # Dispatched; runs while earlier batches' outputs are fetched.
          in_flight.append((k, self.forward(xg, vg) if batches[k][1] else self.forward(xg), okg))
          done_here = needed[k] - set().union(*needed[k + 1:k + 1 + ahead])
          for i in done_here:
            futures.pop(i, None)
        while len(in_flight) > self.in_flight or (k == len(batches) and in_flight):
          kk, out, okg = in_flight.popleft()
          out = out if isinstance(out, dict) else {"logits": out}
          out, okh = sharding.to_host((out, okg))
          for row, (i, c, j) in enumerate(batches[kk][2]):
            if not okh[row]:
              if not results[i].error:
                results[i].error = local_errors.get(i, "could not be decoded")
                n_done += 1
              continue
            gathered[i][(c, j)] = {key: v[row] for key, v in out.items()}
            if len(gathered[i]) == expected[i] and not results[i].error:
              finish(i)
              n_done += 1
          if progress:
            progress(n_done)
    for i, r in enumerate(results):
      if r.error:
        gathered.pop(i, None)
        r.n_inputs = 0
    return results


# ---------------------------------------------------------------------------
# Metrics of a test set.
# ---------------------------------------------------------------------------
def set_metrics(results, labels, class_names, view, threshold=0.5):
  """The report row of a test set: binary (or attribution) metrics from the results.

  With test-time copies, the 'plain_*' keys hold the identity copy's accuracy and AP, for
  the side-by-side the TTA study reports.
  """
  bad = [r.error for r in results if r.error]
  if bad:
    raise cli.UserError(f"{len(bad)} image(s) could not be evaluated, e.g.: {bad[0]}")
  labels = np.asarray(labels)
  probs = np.stack([r.probs for r in results]) if results else np.zeros((0, len(class_names)))
  cut = 0.5 if view.rule in VOTING else threshold
  row = metrics_lib.summarize(labels, probs, class_names, cut, loss=view.rule not in VOTING)
  if results and len(results[0].copy_scores) > 1 and len(class_names) == 2:
    plain = np.array([r.copy_scores[0] for r in results])
    row.update({f"plain_{k}": v for k, v in metrics_lib.binary(labels, plain, cut).items()
                if k in ("accuracy", "ap", "auc")})
  if view.rule != "mean_prob" or any(r.n_inputs > 1 for r in results):  # Patches or tiles.
    patch_pred = np.concatenate([r.patch_logits.argmax(-1) for r in results])
    patch_labels = np.concatenate([np.full(r.n_inputs, l) for r, l in zip(results, labels)])
    row["patch_acc"] = float(np.mean(patch_pred == patch_labels))
    row["n_patches"] = int(len(patch_pred))
  return row


# ---------------------------------------------------------------------------
# A trained run.
# ---------------------------------------------------------------------------
def make_forward(model_def, preprocess, dtype, outputs=None):
  """The jitted eval forward: (model state, uint8 images[, valid]) -> logits (or a dict with them).

  `outputs(state, x)` replaces the plain logits (e.g. Grad-CAM). With `valid` ((B, 2) sizes
  before padding), the global pools average each input's valid cells only (View's buckets).
  """
  dtype = jnp.dtype(models.resolve_dtype(dtype))

  def logits(state, x):
    model = nnx.merge(model_def, state)
    return model(models.preprocess(x, preprocess, dtype))

  fn = outputs or logits

  def forward(state, x, valid=None):
    with layers.valid_region(valid, x.shape[1:3]):
      return fn(state, x)

  return jax.jit(forward)


class Folder:
  """The inference model of a model's weights: BatchNorm folded (models.for_inference; the same
  logits, tested per model) and its jitted forward (make_forward). One forward serves every
  state of the same model: validation after each epoch compiles once.

  Args:
    model_def: the plain eval-mode graph definition.
    preprocess: the input normalisation (models.resolve_preprocess).
    dtype: compute dtype.
  """

  def __init__(self, model_def, preprocess, dtype):
    self.model_def, self.preprocess, self.dtype = model_def, preprocess, dtype
    self.forward = None

  def __call__(self, state):
    """(jitted forward(state, x[, valid]), the folded state) of the plain model's `state`."""
    fast_def, folded = nnx.split(models.for_inference(nnx.merge(self.model_def, state)))
    if self.forward is None:
      self.forward = make_forward(fast_def, self.preprocess, self.dtype)
    return self.forward, folded


def _merge(config, saved):
  """Writes the saved values (a nested dict) into a ConfigDict."""
  for k, v in saved.items():
    if isinstance(v, dict) and isinstance(config.get(k), ml_collections.ConfigDict):
      _merge(config[k], v)
    else:
      config[k] = v
  return config


def load_config(workdir):
  """A run's config (over today's defaults: a run saved before a key existed still loads)."""
  with open(os.path.join(workdir, "config.json")) as f:
    return _merge(defaults.get_config(), json.load(f))


class Run:
  """A trained model loaded from a workdir (model weights only), ready to evaluate."""

  def __init__(self, workdir, which="best", devices=None, batch_size=0, threads=0, dtype=""):
    """`dtype`: the compute dtype ('auto', 'float32', 'bfloat16'; '' = the one the run trained
    with): a run trained in bf16 on a GPU scores in float32 on a CPU with dtype='auto'."""
    run_path = os.path.join(workdir, "run.json")
    if not os.path.exists(run_path):
      raise cli.UserError(f"{workdir} is not a fakejax run (no run.json); train one with "
                          "`python -m fakejax.train`")
    self.workdir = workdir
    self.config = load_config(workdir)
    self.config.model.dtype = models.resolve_dtype(dtype or self.config.model.dtype)
    with open(run_path) as f:
      self.info = json.load(f)
    self.class_names = tuple(self.info["class_names"])
    self.mesh = sharding.make_mesh(devices)
    c = self.config
    model = nnx.eval_shape(lambda: models.from_config(c.model, self.info["num_classes"]))
    model.eval()
    self.model_def, abstract = nnx.split(model)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=sharding.replicated(self.mesh)),
                            abstract)
    self.preprocess = models.resolve_preprocess(c.model.name, c.model.preprocess, front=c.model.front)
    self._abstract = abstract
    self._folder = Folder(self.model_def, self.preprocess, c.model.dtype)
    self.load(which)
    self.forward = self._folder.forward
    self.batch = batch_size or c.eval_batch_size or c.batch_size
    self.evaluator = Evaluator(lambda x, valid=None: self.forward(self.inference_state, x, valid),
                               self.mesh, self.batch, c.data.image_size, threads=threads or c.eval_threads,
                               has_real=self.class_names[0] == "real")

  def load(self, which):
    """Loads another checkpoint of the run ('best', 'latest' or a step): same shapes, so the
    compiled forward is reused."""
    self.state, self.meta = checkpoint.restore_model(self.workdir, self._abstract, which)
    # Scores come from the inference model (Folder, the forward training validates with);
    # model_def / state stay the plain model (explain differentiates through it).
    _, self.inference_state = self._folder(self.state)

  def view(self, mode="full", preset=None, **kw):
    """A View with this run's crop, eval resize and too-small policy; a `preset` (PRESETS) sets
    its own mode, crop, resize and padding over those and over `kw`. Without one, mode 'auto'
    takes the run's own preset (a converted released detector's test transform: `predict` and
    `serve` score UnivFD's ViT on its 224 center crop, not on whole images)."""
    if preset is None:
      preset = self.info.get("preset", "") if mode == "auto" else ""
    d = self.config.data
    settings = dict(crop=d.image_size, too_small=d.too_small, resize=d.eval_resize, **kw)
    if preset:
      if preset not in PRESETS:
        raise cli.UserError(f"Unknown preset {preset!r}; known: {', '.join(PRESETS)}")
      settings.update(PRESETS[preset])
      mode = settings.pop("mode")
    return View(mode, **settings)

  def label_name(self, pred):
    return self.class_names[pred] if len(self.class_names) > 2 else ("fake" if pred else "real")


def dataset_reader(dataset, split, indices):
  """(sizes, load) of some records of a dataset split, for Evaluator.run."""
  idx = dataset.index(split)
  src = dataset.source(split)
  sizes = [(int(h), int(w)) for h, w in zip(idx["height"][indices], idx["width"][indices])]
  return sizes, lambda i: dataset.decode(src[int(indices[i])])


def file_reader(paths, max_pixels=1 << 28):
  """(sizes, load) of image files, for Evaluator.run (a bad file's size is its error)."""
  sizes = []
  for p in paths:
    try:
      sizes.append(images.image_size(p, max_pixels))
    except images.BadImage as e:
      sizes.append(str(e))
  return sizes, lambda i: images.load_rgb(paths[i], max_pixels)[0]
