"""grain pipelines and augmentations."""

import numpy as np
import pytest

from fakejax import augment
from fakejax import datasets
from fakejax import defaults
from fakejax import input_pipeline
from fakejax import runs
from tests.conftest import train_records


def _cfg(**data):
  c = defaults.get_config()
  c.data.image_size = 32
  for k, v in data.items():
    c.data[k] = v
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return all(np.array_equal(x["image"], y["image"]) and np.array_equal(x["label"], y["label"])
             for x, y in zip(a, b))


def test_process_shards_are_disjoint_cover_the_epoch_and_rebuild_the_global_batch(tiny_synthetic):
  """2 processes: each step's two local batches are the 1-process global batch (same records,
  order and augmentation draws), and an epoch's shards are disjoint and cover the data."""
  c = _cfg()
  c.aug.jpg_prob, c.aug.blur_prob = 0.5, 0.5
  n = len(train_records(tiny_synthetic, c.data))
  steps = n // 16
  one = _take(runs.train_iter(tiny_synthetic, c.data, c.aug, 16, seed=2, process_index=0,
                                             process_count=1), steps)
  parts = [_take(runs.train_iter(tiny_synthetic, c.data, c.aug, 16, seed=2,
                                                process_index=p, process_count=2), steps)
           for p in range(2)]
  seen = []
  for s in range(steps):
    joined = {k: np.concatenate([parts[0][s][k], parts[1][s][k]]) for k in one[s]}
    assert _same([one[s]], [joined]) and np.array_equal(joined["index"], one[s]["index"])
    assert not set(parts[0][s]["index"]) & set(parts[1][s]["index"])
    seen += list(joined["index"])
  assert len(seen) == len(set(seen)) == steps * 16  # No record twice within the epoch.
  assert set(seen) <= set(train_records(tiny_synthetic, c.data))


def test_same_seed_same_batches_and_restore(tiny_synthetic):
  c = _cfg()
  c.aug.jpg_prob, c.aug.blur_prob = 0.5, 0.5
  it = runs.train_iter(tiny_synthetic, c.data, c.aug, 8, seed=3)
  first = _take(it, 3)
  state = it.get_state()
  after = _take(it, 3)
  again = _take(runs.train_iter(tiny_synthetic, c.data, c.aug, 8, seed=3), 3)
  assert _same(first, again)
  other = _take(runs.train_iter(tiny_synthetic, c.data, c.aug, 8, seed=4), 3)
  assert not _same(first, other)
  fresh = runs.train_iter(tiny_synthetic, c.data, c.aug, 8, seed=3)
  fresh.set_state(state)
  assert _same(after, _take(fresh, 3))


def test_worker_processes_give_the_same_batches(tiny_synthetic):
  c = _cfg()
  serial = _take(runs.train_iter(tiny_synthetic, c.data, c.aug, 8, seed=1), 4)
  c.data.workers = 2
  it = runs.train_iter(tiny_synthetic, c.data, c.aug, 8, seed=1)
  try:
    assert _same(serial, _take(it, 4))
  finally:
    it.close()


def test_validation_fraction_is_held_out_of_training(tiny_synthetic):
  c = _cfg(train_sources=())
  ds = _NoVal(tiny_synthetic)
  with pytest.raises(datasets.DatasetError, match="val_fraction"):
    runs.Selection.from_config(c.data, ds).validation(ds)
  c.data.val_fraction = 0.25
  split, held, fraction = runs.Selection.from_config(c.data, ds).validation(ds)
  train = train_records(ds, c.data)
  total = len(tiny_synthetic.index("train")["label"])
  assert split == "train" and fraction == 0.25 and len(held) == round(0.25 * total)
  assert not set(held) & set(train) and len(held) + len(train) == total
  again = runs.Selection.from_config(c.data, ds).validation(ds)[1]
  assert np.array_equal(held, again)  # Seeded.
  assert runs.Selection.from_config(c.data, tiny_synthetic).validation(tiny_synthetic)[::2] == ("val", 0.0)


class _NoVal:
  """A dataset as released without a validation split."""

  def __init__(self, ds):
    self._ds = ds
    self.splits = ("train", "test")

  def __getattr__(self, name):
    return getattr(self._ds, name)


def test_train_subset_and_balance(tiny_synthetic):
  c = _cfg(train_sources=("pixel_shuffle",))
  idx = train_records(tiny_synthetic, c.data)
  src = tiny_synthetic.index("train")["source"][idx]
  assert set(src) == {"real", "pixel_shuffle"}
  c = _cfg(train_sources=(), balance=True)
  idx = train_records(tiny_synthetic, c.data)
  labels = tiny_synthetic.index("train")["label"][idx]
  assert (labels == 0).sum() == (labels == 1).sum() == 4 * 3 * 8  # Reals oversampled to 96.


def test_attribution_labels(tiny_synthetic):
  c = _cfg(task="attribution", train_sources=())
  assert runs.Task.from_config(c.data, tiny_synthetic).num_classes == 5
  batch = next(runs.train_iter(tiny_synthetic, c.data, c.aug, 64, seed=0))
  assert set(batch["label"]) <= set(range(5)) and len(set(batch["label"])) > 2


def test_patch_mode(tiny_synthetic):
  c = _cfg(patches_per_image=3, patch_size=16)
  batch = next(runs.train_iter(tiny_synthetic, c.data, c.aug, 4, seed=0))
  assert batch["image"].shape == (12, 16, 16, 3)
  assert (batch["label"].reshape(4, 3) == batch["label"][::3, None]).all()


def _aug(**kw):
  a = defaults.get_config().aug
  a.flip = 0.0
  for k, v in kw.items():
    a[k] = v
  return a


def test_augmentations_change_pixels_as_expected():
  img = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
  rng = lambda: np.random.default_rng(5)
  # Crop is an exact sub-array; no augmentation touches a pixel value by default.
  out = augment.train_augment(img, rng(), _aug(), 32)
  r = rng()
  y, x = r.integers(0, 9), r.integers(0, 17)
  np.testing.assert_array_equal(out, img[y:y + 32, x:x + 32])
  # Flip is exact.
  flipped = augment.train_augment(img, rng(), _aug(flip=1.0, crop="center"), 32)
  np.testing.assert_array_equal(flipped, augment.center_crop(img, 32)[:, ::-1])
  # JPEG at q=30 changes pixels, and more than q=95 does.
  q30 = augment.jpeg(img, 30)
  q95 = augment.jpeg(img, 95)
  assert q30.shape == img.shape
  err = lambda a: np.abs(a.astype(int) - img).mean()
  assert err(q30) > err(q95) > 0
  # Blur lowers high-frequency energy.
  hf = lambda a: np.abs(np.diff(a.astype(int), axis=1)).mean()
  assert hf(augment.gaussian_blur(img, 2.0)) < 0.5 * hf(img)
  # blur_prob / jpg_prob = 1 go through both; = 0 through neither.
  both = augment.train_augment(img, rng(), _aug(blur_prob=1.0, jpg_prob=1.0, crop="center"), 32)
  assert not np.array_equal(both, augment.center_crop(img, 32))
  # Rotation by 0 with shift/zoom 0 is the identity; a real rotation resamples.
  assert np.array_equal(augment.affine(img, rng()), img)
  assert not np.array_equal(augment.affine(img, rng(), rotate=20), img)
  # AlignedForensics' additions: quarter turns are exact, grayscale is torchvision's weights,
  # noise of variance drawn from noise_var.
  turned = augment.train_augment(img, rng(), _aug(rot90=1.0, crop="center", flip=0.0), 0)
  assert any(np.array_equal(turned, np.rot90(img, k)) for k in range(4))
  gray = augment.train_augment(img, rng(), _aug(grayscale=1.0, flip=0.0), 0).astype(int)
  want = np.round(0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2])
  assert (gray == gray[..., :1]).all() and np.abs(gray[..., 0] - want).max() <= 1
  flat = np.full((64, 64, 3), 128, np.uint8)
  noisy = augment.train_augment(flat, rng(), _aug(noise_prob=1.0, noise_var=(25.0, 25.0), flip=0.0), 0)
  assert abs(noisy.astype(float).std() - 5.0) < 0.3


def test_too_small_image_is_a_clear_error_or_padded():
  img = np.zeros((20, 30, 3), np.uint8)
  with pytest.raises(augment.TooSmall, match=r"cat\.png is 30x20, smaller than the 32x32"):
    augment.train_augment(img, np.random.default_rng(0), _aug(), 32, name="cat.png")
  out = augment.train_augment(img, np.random.default_rng(0), _aug(), 32, too_small="pad")
  assert out.shape == (32, 32, 3)


def test_auto_workers_share_the_hosts_cores_among_its_processes(monkeypatch):
  """data.workers=-1: on an accelerator, this process's share of the cores less one (at most 32);
  on a CPU none (the cores compute the steps); a number given is kept."""
  for k in ("SLURM_JOB_ID", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_NODEID",
            "FAKEJAX_LOCAL_PROCESSES"):
    monkeypatch.delenv(k, raising=False)
  monkeypatch.setattr(input_pipeline, "_cores", lambda: 16)
  assert input_pipeline.worker_count(-1, backend="gpu") == 15
  assert input_pipeline.worker_count(-1, backend="cpu") == 0
  assert input_pipeline.worker_count(3, backend="gpu") == 3
  monkeypatch.setenv("FAKEJAX_LOCAL_PROCESSES", "8")  # One process per GPU of an 8-GPU host.
  assert input_pipeline.worker_count(-1, backend="gpu") == 1
  monkeypatch.delenv("FAKEJAX_LOCAL_PROCESSES")
  monkeypatch.setenv("SLURM_TASKS_PER_NODE", "4(x2)")
  assert input_pipeline.worker_count(-1, backend="gpu") == 3
  monkeypatch.delenv("SLURM_TASKS_PER_NODE")
  monkeypatch.setattr(input_pipeline, "_cores", lambda: 128)
  assert input_pipeline.worker_count(-1, backend="gpu") == input_pipeline.MAX_AUTO_WORKERS


def _twin_folder(root, n=12):
  """An aligned folder whose every fake is its real's exact copy: any augmentation difference shows."""
  from tests.conftest import random_image, write_png  # pylint: disable=g-import-not-at-top
  for i in range(n):
    for label in ("0_real", "1_fake"):
      for split in ("train", "val"):
        d = root / "vae" / split / label
        d.mkdir(parents=True, exist_ok=True)
        write_png(d / f"im{i}.png", random_image(i, 40, 44))
  (root / "vae" / "train" / "1_fake" / "im0.png").unlink()  # A real without its fake is left out.


def test_pairs_come_whole_and_are_augmented_alike(tmp_path):
  from fakejax import datasets  # pylint: disable=g-import-not-at-top
  _twin_folder(tmp_path / "aligned")
  ds, _ = datasets.prepare_folder(str(tmp_path / "aligned"), str(tmp_path / "ds"), workers=0)
  c = _cfg(pairs=True, train_sources=(), too_small="pad")
  c.aug.jpg_prob, c.aug.blur_prob, c.aug.flip = 0.5, 0.5, 0.5
  idx = train_records(ds, c.data)
  pairs = input_pipeline.pairs_of(ds, idx)
  paths = ds.index("train")["path"]
  assert len(pairs) == 11 and all(paths[r].replace("0_real", "1_fake") == paths[f] for r, f in pairs)
  batches = _take(runs.train_iter(ds, c.data, c.aug, 6, seed=0), 8)
  seen = set()
  for b in batches:
    assert list(b["label"]) == [0, 1] * 3
    assert [paths[i].replace("0_real", "1_fake") for i in b["index"][0::2]] == [paths[i] for i in b["index"][1::2]]
    np.testing.assert_array_equal(b["image"][0::2], b["image"][1::2])  # The same crop, flip, blur, JPEG.
    seen.update(int(i) for i in b["index"])
  assert len(seen) > 12  # Different pairs, not one repeated.
  # Without pairs the twins are augmented apart: the test above can fail.
  c.data.pairs = False
  b = next(runs.train_iter(ds, c.data, c.aug, 22, seed=0))
  by_path = {paths[i]: im for i, im in zip(b["index"], b["image"])}
  twins = [(by_path[p], by_path[p.replace("0_real", "1_fake")]) for p in by_path
           if "0_real" in p and p.replace("0_real", "1_fake") in by_path]
  assert twins and any(not np.array_equal(a, f) for a, f in twins)


def test_pairs_need_an_aligned_dataset(tiny_synthetic):
  c = _cfg(pairs=True)
  with pytest.raises(input_pipeline.cli.UserError, match="no real .* has an aligned fake"):
    runs.train_iter(tiny_synthetic, c.data, c.aug, 8, seed=0)


def test_dda_mixes_by_hand():
  """Pixel-mix: weight x fake + (1 - weight) x real, truncated (DDA's astype); frequency-mix in the
  whole image's orthonormal DCT equals the same blend in pixels (the DCT is linear), rounded."""
  real = np.random.default_rng(0).integers(0, 256, (20, 24, 3), np.uint8)
  fake = np.full_like(real, 200)
  np.testing.assert_array_equal(augment.pixel_mix(np.zeros_like(real), fake, 0.3), np.full_like(real, 60))
  want = np.floor(0.25 * 200 + 0.75 * real.astype(np.float64))
  assert np.abs(augment.pixel_mix(real, fake, 0.25).astype(np.float64) - want).max() <= 1
  got = augment.frequency_mix(real, fake, 0.7).astype(np.float64)
  assert np.abs(got - np.round(0.7 * real + 0.3 * 200.0)).max() <= 1
  # A fake of another size is resized to the real's first (their resize before the blend).
  assert augment.pixel_mix(real, fake[:10, :12], 0.5).shape == real.shape
  # Off (both probabilities 0): the fake unchanged and no random draw consumed.
  aug = defaults.get_config().aug
  a, b = np.random.default_rng(1), np.random.default_rng(1)
  assert augment.mix_pair(real, fake, aug, a) is fake and a.random() == b.random()


@pytest.mark.parametrize("kind", ["pixel", "freq"])
def test_pairs_mix_the_fake_with_its_own_real(tmp_path, kind):
  """With a mix at probability 1, each batch's fake is its own real's blend with the constant
  fake, one weight per pair within the ratio, and the real is left as it was."""
  from fakejax import datasets  # pylint: disable=g-import-not-at-top
  from tests.conftest import random_image, write_png  # pylint: disable=g-import-not-at-top
  for i in range(6):
    for split in ("train", "val"):
      for label, img in (("0_real", random_image(i, 32, 32)), ("1_fake", np.full((32, 32, 3), 200, np.uint8))):
        (tmp_path / "a" / "vae" / split / label).mkdir(parents=True, exist_ok=True)
        write_png(tmp_path / "a" / "vae" / split / label / f"im{i}.png", img)
  ds, _ = datasets.prepare_folder(str(tmp_path / "a"), str(tmp_path / "ds"), workers=0)
  c = _cfg(pairs=True, train_sources=())
  c.aug.flip, c.aug.crop = 0.0, "center"
  c.aug[f"{kind}_mix_prob"] = 1.0
  b = next(runs.train_iter(ds, c.data, c.aug, 12, seed=0))
  paths = ds.index("train")["path"]
  weights = []
  for real, mixed, i in zip(b["image"][0::2], b["image"][1::2], b["index"][0::2]):
    np.testing.assert_array_equal(real, ds.decode(ds.source("train")[int(i)]))  # The real as it was.
    r, m = real.astype(np.float64), mixed.astype(np.float64)
    far = np.abs(200 - r) > 50
    w = np.median((m - r)[far] / (200 - r)[far])  # The fake's share.
    assert np.abs(m - (w * 200 + (1 - w) * r)).max() <= 1.5, paths[int(i)]
    weights.append(w)
  assert all(-0.01 <= w <= 1.01 for w in weights) and len(set(np.round(weights, 3))) > 1
  if kind == "pixel":
    assert max(weights) <= 0.8 + 0.01  # U(0, 0.8) for the fake.
  else:
    assert min(weights) >= 0.2 - 0.01  # The real's weight is U(0, 0.8): the fake's at least 0.2.
  c.data.pairs = False
  with pytest.raises(input_pipeline.cli.UserError, match="set data.pairs"):
    runs.train_iter(ds, c.data, c.aug, 12, seed=0)
