"""Image-level decisions from a trained run: views (full / patches), batched forward, voting.

Used by `fakejax.evaluate` (datasets) and `fakejax.predict` (folders). Every
patch of every image goes through one jitted forward in fixed-size batches;
the per-image rules then run on host arrays.

Decision modes:
  full        the evaluation view of the config (centre crop of data.image_size).
  grid        non-overlapping PxP patches (a remainder strip smaller than P is
              left out); majority vote, a tie counts as fake.
  random      K random PxP crops, K odd, seeded; majority vote.
  confident   vote among patches with |p_fake - p_real| >= theta; all patches if none.
  mean_logit  average the patch logits (Chai et al. 2020).
  mean_prob   average the patch probabilities.
"""

import dataclasses
import json
import os

import grain
import ml_collections
import numpy as np

from fakejax import augment
from fakejax import checkpoint
from fakejax import datasets
from fakejax import defaults
from fakejax import metrics as metrics_lib
from fakejax import sharding
from fakejax import train

MODES = ("full", "grid", "random", "confident", "mean_logit", "mean_prob")
VOTING = ("grid", "random", "confident")


# ---------------------------------------------------------------------------
# Patches.
# ---------------------------------------------------------------------------
def grid_patches(img, size):
  """Non-overlapping size x size patches, row-major; a remainder smaller than `size` is dropped."""
  h, w = img.shape[:2]
  if h < size or w < size:
    raise augment.TooSmall(f"image is {w}x{h}, smaller than the {size}x{size} patch")
  ny, nx = h // size, w // size
  p = img[:ny * size, :nx * size].reshape(ny, size, nx, size, 3).swapaxes(1, 2)
  return p.reshape(ny * nx, size, size, 3), (ny, nx)


def random_patches(img, size, k, seed):
  if k % 2 == 0:
    raise ValueError(f"random mode needs an odd number of patches (no ties), got k={k}")
  h, w = img.shape[:2]
  if h < size or w < size:
    raise augment.TooSmall(f"image is {w}x{h}, smaller than the {size}x{size} patch")
  return augment.random_patches(img, size, k, np.random.default_rng(seed)), None


# ---------------------------------------------------------------------------
# Per-image rules (host side, hand-checkable).
# ---------------------------------------------------------------------------
def decide(mode, logits, threshold=0.5, theta=0.0):
  """One image's decision from its patch logits.

  Args:
    mode: one of MODES ('full' expects one patch).
    logits: (n_patches, n_classes).
    threshold: p_fake at or above which a patch/image is fake (binary).
    theta: confidence margin of the 'confident' mode.

  Returns:
    (image score, predicted class): for 2 classes the score is p_fake (the fraction
    of fake votes in the voting modes, so a tie is 0.5 and counts as fake).
  """
  logits = np.asarray(logits, np.float64)
  probs = metrics_lib.softmax(logits)
  n_classes = probs.shape[-1]
  if mode in ("full", "mean_prob"):
    p = probs.mean(0)
  elif mode == "mean_logit":
    p = metrics_lib.softmax(logits.mean(0))
  elif mode in VOTING:
    if mode == "confident":
      top2 = np.sort(probs, -1)[:, -2:]
      keep = (top2[:, 1] - top2[:, 0]) >= theta
      probs = probs[keep] if keep.any() else probs
    if n_classes == 2:
      votes = (probs[:, 1] >= threshold).astype(np.float64)
      score = votes.mean()
      return score, int(score >= 0.5)
    p = np.bincount(probs.argmax(-1), minlength=n_classes) / len(probs)
  else:
    raise ValueError(f"Unknown mode {mode!r}; known: {', '.join(MODES)}")
  if n_classes == 2:
    return float(p[1]), int(p[1] >= threshold)
  return float(1 - p[0]), int(np.argmax(p))


# ---------------------------------------------------------------------------
# A trained run.
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class View:
  """How an image becomes model inputs."""
  mode: str = "full"
  patch_size: int = 32
  k: int = 5
  seed: int = 0

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"Unknown mode {self.mode!r}; known: {', '.join(MODES)}")
    if self.mode == "random" and self.k % 2 == 0:
      raise ValueError(f"random mode needs an odd number of patches (no ties), got k={self.k}")
    if self.patch_size not in (16, 32, 64, 128):
      raise ValueError(f"patch_size must be 16, 32, 64 or 128, got {self.patch_size}")


class Run:
  """A trained model loaded from a workdir, with its config and class names."""

  def __init__(self, workdir, which="best", devices=None):
    cfg_path = os.path.join(workdir, "config.json")
    run_path = os.path.join(workdir, "run.json")
    if not os.path.exists(run_path):
      raise FileNotFoundError(f"{workdir} is not a fakejax run (no run.json); train one with "
                              "`python -m fakejax.train`")
    with open(cfg_path) as f:
      # Over today's defaults: a run saved before a key existed still loads.
      self.config = _merge(defaults.get_config(), json.load(f))
    with open(run_path) as f:
      self.info = json.load(f)
    self.class_names = tuple(self.info["class_names"])
    self.mesh = sharding.make_mesh(devices)
    ts = train.TrainState(self.config, self.info["num_classes"], 1, self.mesh)
    self.state, self.meta = checkpoint.restore_model(workdir, ts.abstract, which)
    self._forward = train.make_eval_step(ts)
    self.batch = self.config.eval_batch_size or self.config.batch_size
    sharding.check_batch(self.batch, self.mesh, "eval batch")

  def views(self, img, view, name=""):
    """(patches (n, P, P, 3), grid shape or None) of one decoded image."""
    if view.mode == "full":
      c = self.config.data
      return augment.eval_preprocess(img, c.image_size, c.eval_resize, c.too_small, name)[None], None
    if view.mode == "random":
      return random_patches(img, view.patch_size, view.k, view.seed)
    return grid_patches(img, view.patch_size)

  def logits(self, patches):
    """Logits of a (N, P, P, 3) uint8 stack, in fixed-size jitted batches."""
    out = []
    for i in range(0, len(patches), self.batch):
      chunk = patches[i:i + self.batch]
      pad = self.batch - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      res = sharding.to_host(self._forward(self.state, sharding.to_global(self.mesh, chunk)))
      out.append(res[:len(res) - pad])
    return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)


def _merge(config, saved):
  """Writes the saved values (a nested dict) into a ConfigDict."""
  for k, v in saved.items():
    if isinstance(v, dict) and isinstance(config.get(k), ml_collections.ConfigDict):
      _merge(config[k], v)
    else:
      config[k] = v
  return config


@dataclasses.dataclass
class _Load:
  """Loads and cuts one image into views (runs in grain threads)."""
  run: object
  view: View
  reader: object  # index -> (name, encoded image bytes or file path)
  max_pixels: int

  def __call__(self, i):
    name, data = self.reader(i)
    try:
      img, _ = datasets.load_rgb(data, self.max_pixels)
      patches, grid = self.run.views(img, self.view, name)
      return {"i": i, "patches": patches, "grid": grid, "error": ""}
    except (datasets.BadImage, augment.TooSmall, OSError) as e:
      return {"i": i, "patches": None, "grid": None, "error": str(e)}


def score_images(run, view, n, reader, threshold=0.5, theta=0.0, threads=4, progress=None,
                 max_pixels=1 << 28):
  """Scores n images; the patches of many images share each forward batch.

  Args:
    run: a Run.
    view: a View.
    n: number of images.
    reader: i -> (name, encoded image bytes or file path).
    threshold: p_fake threshold.
    theta: 'confident' margin.
    threads: decoding threads.
    progress: optional callable(n_done) for a progress bar.
    max_pixels: larger images are refused as decompression bombs.

  Returns:
    list of per-image dicts: score, pred, n_patches, patch_logits, grid, error.
  """
  ds = grain.MapDataset.range(n).map(_Load(run, view, reader, max_pixels))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads * 2))
  results = [None] * n
  buf, owners = [], []

  def flush():
    if not buf:
      return
    logits = run.logits(np.concatenate(buf))
    start = 0
    for item in owners:
      k = len(item["patches"])
      pl = logits[start:start + k]
      start += k
      score, pred = decide(view.mode, pl, threshold, theta)
      results[item["i"]] = {"score": score, "pred": pred, "n_patches": k, "patch_logits": pl,
                            "grid": item["grid"], "error": ""}
    buf.clear()
    owners.clear()
    if progress:
      progress(sum(r is not None for r in results))

  for item in it:
    if item["error"]:
      results[item["i"]] = {"score": float("nan"), "pred": -1, "n_patches": 0,
                            "patch_logits": None, "grid": None, "error": item["error"]}
      continue
    buf.append(item["patches"])
    owners.append(item)
    if sum(len(b) for b in buf) >= 4 * run.batch:
      flush()
  flush()
  return results
