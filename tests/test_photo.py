"""The photo benchmark: generators that differ, post-processing matched between the classes,
generation deterministic for a seed, and the layout `prepare` makes of a CNNDetection tree."""

import collections
import os

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from fakejax import datasets
from fakejax import explain
from fakejax import photo

# The photographs of the pinned wheels only: what a machine has from Debian (mate-backgrounds)
# must not change the tests' data.
TINY = dict(size=32, counts=(("train", 24), ("val", 8), ("test", 24)), gen_steps=8,
            photos=photo.find_photos(debian=False))


@pytest.fixture(scope="module")
def tiny_photo(data_root):
  return datasets.photo_dataset(data_root, **TINY)


def _hashes(ds):
  return {s: list(ds.index(s)["hash"]) for s in ds.splits}


def test_layout_train_on_one_family_test_every_family_against_its_own_reals(tiny_photo):
  idx = tiny_photo.index("train")
  assert set(idx["source"]) == {"real", photo.TRAIN_FAMILY}
  test = tiny_photo.index("test")
  counts = collections.Counter(zip(test["source"], test["group"]))
  for fam in photo.FAMILIES:
    assert counts[(fam, fam)] == 24 and counts[("real", fam)] == 24
    mask = tiny_photo.paired_reals("test", fam)
    assert mask.sum() == 24 and set(test["group"][mask]) == {fam}
  # No image twice, across or within splits.
  every = [h for hs in _hashes(tiny_photo).values() for h in hs]
  assert len(set(every)) == len(every)


def test_generation_is_deterministic_for_a_seed(tiny_photo, tmp_path):
  again = datasets.photo_dataset(str(tmp_path / "a"), **TINY)
  assert _hashes(again) == _hashes(tiny_photo)
  other = datasets.photo_dataset(str(tmp_path / "b"), **dict(TINY, seed=1))
  assert not set(other.index("test")["hash"]) & set(tiny_photo.index("test")["hash"])


def test_generators_differ_in_their_residual_spectra(tiny_photo):
  """Each family's mean residual spectrum (explain --spectrum) differs from every other family's
  and from the reals' beyond chance: a permutation test, the distance of the two means against
  the same distance for 200 random splits of the pooled images (p < 1/200)."""
  spectra, size = explain.class_spectra(tiny_photo, "test", per_class=96)
  assert size == 32 and set(spectra) == {"real", *photo.FAMILIES}
  idx, src = tiny_photo.index("test"), tiny_photo.source("test")
  per = {s: np.array([explain.log_spectrum(tiny_photo.decode(src[int(i)]), 32)
                      for i in np.flatnonzero(idx["source"] == s)]) for s in spectra}
  rng = np.random.default_rng(0)
  names = sorted(per)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      d = np.abs(per[a].mean(0) - per[b].mean(0)).mean()
      pool, n = np.concatenate([per[a], per[b]]), len(per[a])
      null = []
      for _ in range(200):
        p = rng.permutation(len(pool))
        null.append(np.abs(pool[p[:n]].mean(0) - pool[p[n:]].mean(0)).mean())
      assert d > max(null), (a, b, d, max(null))


def test_post_processing_is_matched_between_reals_and_fakes(data_root):
  ds = datasets.photo_dataset(data_root, **dict(TINY, postprocess="jpeg:60-95,resize:1-1.3"))
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ds.path, "build_summary.json")) as f:
    assert json.load(f)["warnings"] == []  # prepare's format/size check stays silent.
  rows = [ds.index(s) for s in ds.splits]
  fmt = np.concatenate([r["format"] for r in rows])
  x = np.stack([np.concatenate([r["height"] for r in rows]), np.concatenate([r["width"] for r in rows]),
                (fmt == "PNG").astype(int)], 1).astype(float)
  y = np.concatenate([r["label"] for r in rows])
  # A classifier on file format and size alone: chance (the balanced classes' 0.5).
  acc = cross_val_score(LogisticRegression(), x, y, cv=4).mean()
  assert abs(acc - 0.5) < 0.05, acc
  # And the post-processing happened: JPEG's 8x8 block grid shows in the pixels of both classes.
  plain = datasets.photo_dataset(data_root, **TINY)
  a, b = ds.source("test"), plain.source("test")
  assert not np.array_equal(ds.decode(a[0]), plain.decode(b[0]))


def test_postprocess_spec_errors():
  assert photo.parse_postprocess("jpeg:70-90, resize:1-1.5") == {"jpeg": (70, 90), "resize": (1.0, 1.5)}
  assert photo.parse_postprocess("") == {}
  for bad in ("jpeg:0-90", "resize:0.5-1", "blur:1-2", "jpeg:70"):
    with pytest.raises(ValueError, match="postprocess"):
      photo.parse_postprocess(bad)


def test_the_aligned_family_pairs_each_real_with_its_reconstruction(monkeypatch, tmp_path):
  """kl_vae with `aligned`: train/val hold each real beside the generator's output for that very
  real (the pairs the input pipeline keeps together), test the five test families only; without
  it, the ablation: the generator's outputs for other crops. The generator is swapped for x -> 1 - x
  so that a fake shows which crop it came from."""
  from fakejax import input_pipeline  # pylint: disable=g-import-not-at-top
  from fakejax import photo_generators  # pylint: disable=g-import-not-at-top
  train = photo_generators.train
  monkeypatch.setattr(photo_generators, "train", lambda family, *a: (lambda x: 1.0 - np.asarray(x))
                      if family == photo.ALIGNED_FAMILY else train(family, *a))
  kw = dict(TINY, counts=(("train", 12), ("val", 4), ("test", 4)), gen_steps=2,
            families=(photo.ALIGNED_FAMILY, "nn_conv", "sr"))
  inverted = lambda ds, pairs: [np.abs(255 - ds.decode(ds.source("train")[int(r)]).astype(int)
                                      - ds.decode(ds.source("train")[int(f)])).max() <= 1 for r, f in pairs]
  ds = datasets.photo_dataset(str(tmp_path / "a"), aligned=True, **kw)
  pairs = input_pipeline.pairs_of(ds, np.arange(len(ds.index("train")["label"])))
  assert len(pairs) == 12 and set(ds.index("train")["source"]) == {"real", photo.ALIGNED_FAMILY}
  assert all(inverted(ds, pairs))
  assert set(ds.index("test")["source"]) == {"real", "nn_conv", "sr"}
  plain = datasets.photo_dataset(str(tmp_path / "b"), **kw)
  with pytest.raises(input_pipeline.cli.UserError, match="aligned fake"):
    input_pipeline.pairs_of(plain, np.arange(len(plain.index("train")["label"])))
  idx = plain.index("train")
  by_number = [(r, f) for r in np.flatnonzero(idx["label"] == 0) for f in np.flatnonzero(idx["label"] == 1)
               if idx["path"][r].rsplit("_", 1)[1] == idx["path"][f].rsplit("_", 1)[1]]
  assert len(by_number) == 12 and not any(inverted(plain, by_number))
  with pytest.raises(photo.cli.UserError, match="first"):
    list(photo.generate({"train": 2}, 32, families=("nn_conv", photo.ALIGNED_FAMILY), aligned=True,
                        photos=TINY["photos"], gen_steps=1))
