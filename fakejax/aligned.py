r"""Aligned training data: every real image beside its reconstruction through an autoencoder.

  python -m fakejax.aligned --reals COCO/train2017 --autoencoder sd2-vae/ --out aligned_coco
  python -m fakejax.prepare --root aligned_coco --out data/aligned_coco

What AlignedForensics (ICLR'25), DDA (NeurIPS'25) and B-Free train on: the fake of each real is
the real itself, encoded and decoded by a latent-diffusion VAE, so content, size and format are
the same and only the generator's trace tells them apart. As DDA's Reconstruction/vae_rec.py:
the real is centre-cropped to a multiple of 8 (of the autoencoder's down-sampling), mapped to
[-1, 1], encoded, a latent drawn from the posterior (`--latent sample`; `mode` takes its mean),
decoded, mapped back with ((x + 1) / 2 * 255) clipped and truncated to uint8 (`--rounding`).

Format alignment (DDA's quality file): when the real is a JPEG, its reconstruction is JPEG'd with
the real's own quantisation tables and chroma subsampling (the quality factor, estimated from the
tables as DDA records it, goes to the manifest); other reals leave their fakes lossless. Departure
from DDA, named: DDA JPEGs the fake at training time with probability 0.5 at the recorded quality;
here the fake is JPEG'd once, here, always (`--fake_jpeg match`), or never (`none`).

The output is an image folder that `prepare` reads as it reads GenImage (reals paired with their
fakes by folder): OUT/{name}/{split}/0_real/{path}.png and OUT/{name}/{split}/1_fake/{path}.png, both
lossless PNG (the fake's JPEG is applied to its pixels, not kept as a file: the two classes share a
file format). The split comes from the real's own split folder, or a seeded hash of its path: a
real and its fake always share one. Each file is written whole (a temporary name, then renamed);
a rerun skips every pair already written, so a killed run loses at most one batch.
"""

import collections
import concurrent.futures
import hashlib
import itertools
import os
import time

from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import tqdm

from fakejax import cli
from fakejax import runs
from fakejax.datasets import images
from fakejax.datasets import layouts

MANIFEST = "aligned.json"


def center_crop(rgb, multiple):
  """The centre of `rgb` with sides cut down to multiples of `multiple` (vae_rec.py's crop)."""
  h, w = rgb.shape[:2]
  nh, nw = h // multiple * multiple, w // multiple * multiple
  top, left = (h - nh) // 2, (w - nw) // 2
  return rgb[top:top + nh, left:left + nw]


def _split_of(rel, fractions, seed):
  """The real's split folder in its path, else a seeded hash split (layouts.hash_split)."""
  for part in rel.split(os.sep)[:-1]:
    if part.lower() in layouts.SPLIT_NAMES:
      return layouts.SPLIT_NAMES[part.lower()]
  return layouts.hash_split(rel, fractions, seed)


def image_key(seed, rel):
  """The latent draw's key of one image: its path's, so a result does not depend on batching."""
  return jax.random.fold_in(jax.random.key(seed), int.from_bytes(hashlib.sha256(rel.encode()).digest()[:4], "little"))


class Reconstructor:
  """Batches of equal-size uint8 images -> their reconstructions, uint8, jitted per shape."""

  def __init__(self, autoencoder, *, latent="sample", rounding="floor"):
    from fakejax.models import vae  # pylint: disable=g-import-not-at-top
    if latent not in ("sample", "mode"):
      raise cli.UserError(f"--latent must be sample or mode, got {latent!r}")
    graphdef, state = nnx.split(autoencoder)
    self.factor = max(8, autoencoder.factor)  # DDA crops to multiples of 8 (SD's factor) in any case.

    @jax.jit
    def run(state, pixels, keys):
      model = nnx.merge(graphdef, state)
      mean, logvar = model.encode(vae.from_uint8(pixels, model.dtype))
      if latent == "sample":  # One key an image: a draw does not depend on the batch.
        mean = jax.vmap(vae.draw)(mean, logvar, keys)
      return vae.to_uint8(model.decode(mean), rounding)

    self._run, self._state = run, state

  def __call__(self, pixels, keys):
    return np.asarray(self._run(self._state, jnp.asarray(pixels), keys))


def _load(task):
  """Worker: (rel, path) -> (rel, cropped pixels, JPEG settings or None) or (rel, None, reason)."""
  rel, path, multiple = task
  try:
    rgb, _ = images.load_rgb(path, min_size=multiple)
    settings = images.jpeg_settings(path)
  except (images.BadImage, OSError) as e:
    return rel, None, str(e)
  return rel, center_crop(rgb, multiple), settings


def _write_png(path, rgb):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  Image.fromarray(rgb).save(tmp, format="PNG", compress_level=1)
  os.replace(tmp, path)


class _Build:
  """One aligned folder: which reals remain, their batches by size, the files and the tallies."""

  def __init__(self, out, name, *, fake_jpeg, fractions, seed):
    self.out, self.name, self.fake_jpeg, self.fractions, self.seed = out, name, fake_jpeg, fractions, seed
    self.qualities, self.skipped, self.done = collections.Counter(), [], 0

  def paths(self, rel, split):
    stem = os.path.splitext(rel)[0] + ".png"
    base = os.path.join(self.out, self.name, split)
    return os.path.join(base, "0_real", stem), os.path.join(base, "1_fake", stem)

  def todo(self, reals):
    """[(rel, split)] of the reals whose pair is not on disk yet."""
    out = []
    for rel in reals:
      split = _split_of(rel, self.fractions, self.seed)
      if all(os.path.exists(p) for p in self.paths(rel, split)):
        self.done += 1
      else:
        out.append((rel, split))
    return out

  def usable(self, loaded):
    """The loaded reals, the unreadable ones recorded as skipped."""
    for rel, px, extra in loaded:
      if px is None:
        self.skipped.append({"path": rel, "reason": extra})
      else:
        if extra is not None:
          self.qualities[extra["quality"]] += 1
        yield rel, px, extra

  def save(self, item, fake):
    """Writes one pair, the fake JPEG'd like its real when --fake_jpeg match; the real last (a
    pair is complete when both exist, and the real's file is what `todo` checks second)."""
    rel, real, settings = item
    split = _split_of(rel, self.fractions, self.seed)
    if settings is not None and self.fake_jpeg == "match":
      fake = images.jpeg_like(fake, settings)
    real_path, fake_path = self.paths(rel, split)
    _write_png(fake_path, fake)
    _write_png(real_path, real)


def _batches(loaded, batch):
  """Groups loaded images of equal size into batches of `batch` (the last of each size shorter);
  at most 8 sizes wait at once (the oldest is flushed), so memory stays flat on mixed sizes."""
  pending = collections.OrderedDict()
  for item in loaded:
    group = pending.setdefault(item[1].shape, [])
    group.append(item)
    if len(group) == batch:
      yield pending.pop(item[1].shape)
    elif len(pending) > 8:
      yield pending.popitem(last=False)[1]
  yield from pending.values()


def build(reals, out, autoencoder, *, name="vae", batch=8, latent="sample", rounding="floor",
          fake_jpeg="match", fractions=(0.56, 0.24, 0.20), seed=0, threads=None, info=None):
  """Writes the aligned folder of the real images under `reals` to `out` (module docstring).

  Args:
    reals: a folder of real images (any tree; split folders are kept).
    out: the output folder (created; a partial one is completed).
    autoencoder: a models.vae.AutoencoderKL.
    name: the generator's folder name (the source in the prepared dataset).
    batch: images per autoencoder call (same size; on a GPU, as many as fit).
    latent: 'sample' (DDA) or 'mode'.
    rounding: 'floor' (DDA) or 'round'.
    fake_jpeg: 'match' or 'none'.
    fractions, seed: the hash split of reals without a split folder; `seed` also keys the draws.
    threads: decoding / encoding threads (default: the cores).
    info: what the manifest records about the autoencoder.

  Returns:
    the manifest dict (also OUT/aligned.json).
  """
  if fake_jpeg not in ("match", "none"):
    raise cli.UserError(f"--fake_jpeg must be match or none, got {fake_jpeg!r}")
  if not os.path.isdir(reals):
    raise cli.UserError(f"--reals {reals} is not a folder")
  folders, _ = layouts.walk_images(reals)
  b = _Build(out, name, fake_jpeg=fake_jpeg, fractions=fractions, seed=seed)
  todo = b.todo(os.path.join(folder, n) for folder, names in folders for n in names.split("\0"))
  recon = Reconstructor(autoencoder, latent=latent, rounding=rounding)
  t0, made = time.perf_counter(), 0
  with concurrent.futures.ThreadPoolExecutor(threads or os.cpu_count()) as pool, \
       tqdm.tqdm(total=len(todo), desc="aligned", unit="img", dynamic_ncols=True) as bar:
    tasks = ((rel, os.path.join(reals, rel), recon.factor) for rel, _ in todo)
    for group in _batches(b.usable(_windowed(pool, _load, tasks, 4 * batch)), batch):
      fakes = recon(np.stack([px for _, px, _ in group]), jnp.stack([image_key(seed, r) for r, _, _ in group]))
      list(pool.map(b.save, group, fakes))
      made += len(group)
      bar.update(len(group))
  seconds = time.perf_counter() - t0
  manifest = {"reals": os.path.abspath(reals), "name": name, "autoencoder": info or {},
              "latent": latent, "rounding": rounding, "fake_jpeg": fake_jpeg, "seed": seed,
              "fractions": list(fractions), "pairs": b.done + made, "made_now": made,
              "kept_from_before": b.done, "skipped": b.skipped,
              "jpeg_qualities": {str(q): n for q, n in sorted(b.qualities.items())},
              "speed": {"seconds": seconds, "images_per_s": made / seconds if seconds else 0.0}}
  runs.write_json(os.path.join(out, MANIFEST), manifest)
  return manifest


def _windowed(pool, fn, tasks, window):
  """fn over tasks in `pool`, in order, at most two windows in flight (flat memory)."""
  tasks, pending = iter(tasks), collections.deque()
  while chunk := list(itertools.islice(tasks, window)):
    pending.append(pool.map(fn, chunk))
    if len(pending) == 2:
      yield from pending.popleft()
  while pending:
    yield from pending.popleft()


def load_autoencoder(spec, *, dtype="float32", scaling_factor=None):
  """(AutoencoderKL, info) of `spec`: a diffusers folder or single file (convert.read_diffusers_vae)."""
  from fakejax import convert  # pylint: disable=g-import-not-at-top
  model = convert.load_diffusers_vae(spec, dtype=dtype, scaling_factor=scaling_factor)
  return model, {"source": os.path.abspath(spec), "dtype": dtype}


if __name__ == "__main__":
  _REALS = flags.DEFINE_string("reals", None, "Folder of real images.")
  _AE = flags.DEFINE_string("autoencoder", None, "diffusers autoencoder: a folder (config.json + weights; "
                            "a pipeline's vae/), or one .safetensors file (diffusers' or the original keys).")
  _OUT = flags.DEFINE_string("out", None, "Output image folder (a partial one is completed).")
  _NAME = flags.DEFINE_string("name", "vae", "Folder name of the fakes' generator (their source).")
  _BATCH = flags.DEFINE_integer("batch", 8, "Images per autoencoder call.")
  _LATENT = flags.DEFINE_enum("latent", "sample", ("sample", "mode"), "Posterior draw (DDA) or its mean.")
  _ROUNDING = flags.DEFINE_enum("rounding", "floor", ("floor", "round"), "To uint8: DDA's truncation or rounding.")
  _FAKE_JPEG = flags.DEFINE_enum("fake_jpeg", "match", ("match", "none"),
                                 "JPEG each fake like its real (when the real is a JPEG), or never.")
  _DTYPE = flags.DEFINE_enum("dtype", "float32", ("float32", "bfloat16"), "Autoencoder compute dtype.")
  _SCALING = flags.DEFINE_float("scaling_factor", None, "A single file's scaling factor (default 0.18215).")
  _FRACTIONS = flags.DEFINE_list("fractions", ["0.56", "0.24", "0.20"], "Hash split of reals without a split folder.")
  _SEED = flags.DEFINE_integer("seed", 0, "Seed of the hash split and of the latent draws.")


def main(argv):
  del argv
  for f in (_REALS, _AE, _OUT):
    if not f.value:
      raise cli.UserError(f"--{f.name} is required")
  model, info = load_autoencoder(_AE.value, dtype=_DTYPE.value, scaling_factor=_SCALING.value)
  m = build(_REALS.value, _OUT.value, model, name=_NAME.value, batch=_BATCH.value, latent=_LATENT.value,
            rounding=_ROUNDING.value, fake_jpeg=_FAKE_JPEG.value, fractions=tuple(map(float, _FRACTIONS.value)),
            seed=_SEED.value, info=info)
  print(f"{m['pairs']} pairs in {_OUT.value} ({m['made_now']} made now, {m['speed']['images_per_s']:.1f} img/s); "
        f"next: python -m fakejax.prepare --root {_OUT.value} --out DATASET")


if __name__ == "__main__":
  cli.run(main, devices="shared")
