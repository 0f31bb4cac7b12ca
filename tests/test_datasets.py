"""Dataset preparation: published layouts as mirrors, lossless pixels, bad files, bias and leakage."""

import hashlib
import json
import os

import numpy as np
from PIL import Image
import pytest

from tests.conftest import bad_image_corpus
from tests.conftest import random_image
from tests.conftest import write_png
from fakejax import datasets
from fakejax import synthetic


def _tree(root, folders, n=2, start=0):
  """n distinct tiny PNGs in each folder (relative paths); returns the next free seed."""
  seed = start
  for d in folders:
    for i in range(n):
      write_png(os.path.join(root, d, f"{i:04d}.png"), random_image(seed, 12, 12))
      seed += 1
  return seed


def _read_all(ds, split):
  """{path: (record, index row)} of a split."""
  src, idx = ds.source(split), ds.index(split)
  return {idx["path"][i]: (src[i], {k: v[i] for k, v in idx.items()}) for i in range(len(src))}


# ---------------------------------------------------------------------------
# Layouts, each as a mirror of the published tree.
# ---------------------------------------------------------------------------
CNNDET_CATS = ("airplane", "bicycle", "car")


def _cnndetection(root):
  """CNNDetection as released: ProGAN train/val by LSUN category; test by generator, four of
  them (progan, stylegan, stylegan2, cyclegan) split again by category, the others flat."""
  folders = []
  for split in ("train", "val"):
    folders += [f"{split}/{c}/{l}" for c in CNNDET_CATS for l in ("0_real", "1_fake")]
  nested = {"progan": CNNDET_CATS, "stylegan": ("bedroom", "car"), "stylegan2": ("church",),
            "cyclegan": ("apple", "horse")}
  for g, cats in nested.items():
    folders += [f"test/{g}/{c}/{l}" for c in cats for l in ("0_real", "1_fake")]
  for g in ("biggan", "gaugan", "deepfake"):
    folders += [f"test/{g}/{l}" for l in ("0_real", "1_fake")]
  _tree(root, folders)
  return nested


def test_cnndetection_mirror(tmp_path):
  root = str(tmp_path / "CNNDetection")
  nested = _cnndetection(root)
  layout, classes, items, _ = datasets.scan(root)
  assert layout == "cnndetection"
  assert classes == ("real",) + tuple(sorted(list(nested) + ["biggan", "gaugan", "deepfake"]))
  train = [i for i in items if i.split == "train"]
  assert {i.source for i in train if i.class_name != "real"} == {"progan"}  # --train_source.
  assert {i.category for i in train} == set(CNNDET_CATS)
  assert {i.group for i in train if i.class_name == "real"} == {"progan"}
  test = {i.path: i for i in items if i.split == "test"}
  one = test[os.path.join("test", "stylegan", "bedroom", "1_fake", "0000.png")]
  assert (one.source, one.category, one.class_name) == ("stylegan", "bedroom", "stylegan")
  real = test[os.path.join("test", "biggan", "0_real", "0001.png")]
  assert (real.source, real.group, real.category, real.class_name) == ("real", "biggan", "", "real")

  ds, summary = datasets.prepare_folder(root, str(tmp_path / "out"), workers=0)
  assert ds.splits == ("train", "val", "test") and summary["counts"]["test"] == len(test)
  rows = dict(ds.test_sets("test", "source"))
  idx = ds.index("test")
  assert sorted(rows) == sorted(list(nested) + ["biggan", "gaugan", "deepfake"])
  for g, sel in rows.items():  # Each generator against the reals of its own folder.
    n_cats = len(nested.get(g, ("",)))
    assert (idx["label"][sel] == 0).sum() == 2 * n_cats and (idx["label"][sel] == 1).sum() == 2 * n_cats
    assert set(idx["group"][sel][idx["label"][sel] == 0]) == {g}
  cats = dict(ds.test_sets("test", "category", sources=("progan", "stylegan")))
  assert sorted(cats) == sorted({"airplane", "bicycle", "car", "bedroom"})
  car = cats["car"]  # progan's and stylegan's cars, each with their own real cars.
  assert (idx["label"][car] == 0).sum() == 4 and set(idx["source"][car]) == {"real", "progan", "stylegan"}


def test_universalfakedetect_mirror_with_declared_pairs(tmp_path):
  root = str(tmp_path / "diffusion_datasets")
  gens = ("guided", "ldm_200", "ldm_200_cfg", "glide_100_27", "dalle")
  _tree(root, [f"{g}/1_fake" for g in gens] + ["laion/0_real", "imagenet/0_real"], n=2)
  write_png(os.path.join(root, "laion", "0_real", "extra.png"), random_image(999, 12, 12))  # 3 LAION reals.
  layout, _, items, _ = datasets.scan(root)
  assert layout == "universalfakedetect" and {i.split for i in items} == {"test"}
  with pytest.raises(datasets.LayoutError, match=r"real folder\(s\) \['coco'\]"):
    datasets.prepare_folder(root, str(tmp_path / "bad"), pairs=datasets.parse_pairs(["guided=coco"]))
  ds, summary = datasets.prepare_folder(
      root, str(tmp_path / "out"), pairs=datasets.parse_pairs(["guided=imagenet", "*=laion"]))
  assert summary["pairs"] == {"guided": ["imagenet"], "*": ["laion"]} == ds.pairs  # Stored.
  idx = ds.index("test")
  rows = dict(ds.test_sets("test", "source"))
  assert sorted(rows) == sorted(gens)
  assert set(idx["group"][rows["guided"]][idx["label"][rows["guided"]] == 0]) == {"imagenet"}
  for g in gens[1:]:
    reals = idx["label"][rows[g]] == 0
    assert reals.sum() == 3 and set(idx["group"][rows[g]][reals]) == {"laion"}
  # Without a declared pair the generators have no reals of their own: a clear error naming one.
  plain, _ = datasets.prepare_folder(root, str(tmp_path / "unpaired"))
  with pytest.raises(datasets.DatasetError, match=r"No real images pair with generator 'dalle'.*--pair dalle="):
    plain.test_sets("test", "source")


def test_genimage_mirror(tmp_path):
  root = str(tmp_path / "GenImage")
  _tree(root, [f"{g}/imagenet_ai_{g.lower()}/{s}/{l}" for g in ("ADM", "BigGAN")
               for s in ("train", "val") for l in ("ai", "nature")])
  _tree(root, [f"Midjourney/{s}/{l}" for s in ("train", "val") for l in ("ai", "nature")], start=500)
  layout, classes, items, _ = datasets.scan(root)
  assert layout == "genimage" and classes == ("real", "ADM", "BigGAN", "Midjourney")
  assert {i.split for i in items} == {"train", "val"}
  ds, _ = datasets.prepare_folder(root, str(tmp_path / "out"))
  rows = dict(ds.test_sets("val", "source"))
  idx = ds.index("val")
  for g, sel in rows.items():
    assert set(idx["group"][sel][idx["label"][sel] == 0]) == {g} and len(sel) == 4


@pytest.mark.parametrize("tree,expected", [
    # Label above the split, generator above both.
    ({"stylegan/real/train": 2, "stylegan/fake/train": 2, "stylegan/real/test": 1, "stylegan/fake/test": 1},
     {("train", "fake", "stylegan", ""), ("test", "real", "real", "")}),
    # Split first, then a domain and a generator, CNNDetection's label folders.
    ({"train/faces/sg2/0_real": 2, "train/faces/sg2/1_fake": 2, "test/cats/sg3/1_fake": 1,
      "test/cats/sg3/0_real": 1},
     {("train", "fake", "faces", "sg2"), ("test", "real", "real", "sg3")}),
], ids=["label_then_split", "split_domain_generator"])
def test_general_rule_on_unlisted_trees(tmp_path, tree, expected):
  root = str(tmp_path / "t")
  seed = 0
  for folder, n in tree.items():
    seed = _tree(root, [folder], n=n, start=seed)
  layout, _, items, _ = datasets.scan(root)
  assert layout == "general"
  got = {(i.split, "real" if i.class_name == "real" else "fake", i.source, i.category) for i in items}
  assert expected <= got
  ds, _ = datasets.prepare_folder(root, str(tmp_path / "out"))
  assert len(ds.test_sets("test", "source")) == 1


def test_ambiguous_and_unknown_trees_are_clear_errors(tmp_path):
  root = str(tmp_path / "amb")
  _tree(root, ["a/real", "a/fake", "b/misc"])  # b/misc has no real/fake folder.
  with pytest.raises(datasets.LayoutError) as e:
    datasets.scan(root)
  msg = str(e.value)
  assert "matches no known layout" in msg and "b/misc/0000.png: no real/fake folder" in msg
  assert "a/real/: 2 image(s)" in msg and "cnndetection:" in msg and "general:" in msg
  mixed = str(tmp_path / "mixed")  # Some images under a split folder, some not.
  _tree(mixed, ["train/x/real", "x/fake"])
  with pytest.raises(datasets.LayoutError, match="which split is it"):
    datasets.scan(mixed)
  with pytest.raises(datasets.LayoutError, match="does not have the 'cnndetection' layout"):
    datasets.scan(mixed, "cnndetection")


def test_binary_and_attribution_layouts(tmp_path):
  root = str(tmp_path / "bin")
  _tree(root, ["real", "fake/sub"], n=6)
  layout, classes, items, _ = datasets.scan(root)
  assert layout == "binary" and classes == ("real", "fake")
  assert {i.source for i in items} == {"real", "fake"} and {i.category for i in items} == {"", "sub"}
  attr = str(tmp_path / "attr")
  _tree(attr, [f"{s}/{c}" for s in ("train", "val", "test") for c in ("stylegan", "real", "pggan")])
  layout, classes, _, _ = datasets.scan(attr)
  assert layout == "attribution" and classes == ("real", "pggan", "stylegan")  # 'real' first: class 0.
  ds, _ = datasets.prepare_folder(attr, str(tmp_path / "out"))
  idx = ds.index("val")
  for src, cl, lab in zip(idx["source"], idx["class_label"], idx["label"]):
    assert classes[cl] == src and lab == (src != "real")


# ---------------------------------------------------------------------------
# Pixels, speed, bad files, reports.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("storage,sharded,workers", [("png", False, 0), ("raw", True, 2)],
                         ids=["png_one_shard", "raw_many_shards_2_workers"])
def test_lossless_round_trip(tmp_path, monkeypatch, storage, sharded, workers):
  """Exact pixels back in either storage, also when a split spans many shard files and the
  build runs in worker processes (the records and their order do not depend on either)."""
  if sharded:
    monkeypatch.setattr(datasets.builder, "SHARD_BYTES", 1)  # One record a shard.
  root = tmp_path / "imgs"
  originals = {}
  for cls in ("real", "fake"):
    for i in range(12):
      arr = random_image(100 * (cls == "fake") + i)
      rel = f"{cls}/img{i}.png"
      write_png(str(root / rel), arr)
      originals[rel] = arr
  write_png(str(root / "real/photo.jpg"), random_image(7), quality=80)
  with Image.open(root / "real/photo.jpg") as im:
    originals["real/photo.jpg"] = np.asarray(im.convert("RGB"))
  ds, summary = datasets.prepare_folder(str(root), str(tmp_path / "out"), fractions=(1, 1, 1),
                                        storage=storage, workers=workers)
  assert summary["layout"] == "binary" and ds.storage == storage
  assert summary["speed"]["workers"] == max(workers, 1) and summary["speed"]["bytes_on_disk"] > 0
  shards = os.listdir(ds.builder_dir)
  for split, n in summary["counts"].items():
    assert sum(".array_record-" in f and f"-{split}." in f for f in shards) == (n if sharded else 1)
  seen = {}
  for split in ds.splits:
    seen.update(_read_all(ds, split))
  assert set(seen) == set(originals)
  for rel, (rec, row) in seen.items():
    np.testing.assert_array_equal(ds.decode(rec), originals[rel])
    assert rec["label"] == row["label"] == (rel.startswith("fake"))
    # The index's content hash is blake2b-128 of the shape and the pixels, in hex.
    h = hashlib.blake2b(np.asarray(originals[rel].shape, np.int64).tobytes(), digest_size=16)
    h.update(originals[rel].tobytes())
    assert row["hash"] == h.hexdigest()
    assert (row["height"], row["width"]) == originals[rel].shape[:2]
  assert seen["real/photo.jpg"][1]["format"] == "JPEG"
  if workers:  # The same records in the same order as a build in this process.
    ref, _ = datasets.prepare_folder(str(root), str(tmp_path / "ref"), fractions=(1, 1, 1),
                                     storage=storage, workers=0)
    for split in ds.splits:
      assert list(ds.index(split)["hash"]) == list(ref.index(split)["hash"])


def test_binary_split_is_deterministic():
  a = [datasets.hash_split(f"x/{i}.png", (0.56, 0.24, 0.2), 0) for i in range(2000)]
  b = [datasets.hash_split(f"x/{i}.png", (0.56, 0.24, 0.2), 0) for i in range(2000)]
  assert a == b
  frac = {s: a.count(s) / len(a) for s in datasets.SPLITS}
  assert abs(frac["train"] - 0.56) < 0.04 and abs(frac["test"] - 0.2) < 0.04
  assert a != [datasets.hash_split(f"x/{i}.png", (0.56, 0.24, 0.2), 1) for i in range(2000)]


def test_bad_file_corpus_is_skipped_with_reasons(tmp_path):
  root = tmp_path / "bad"
  expected = bad_image_corpus(str(root / "real"))
  for i in range(3):
    write_png(str(root / "fake" / f"{i}.png"), random_image(i, 16, 16))
  ds, summary = datasets.prepare_folder(str(root), str(tmp_path / "out"), fractions=(1, 0, 0),
                                        max_pixels=1 << 24)
  skipped = {os.path.basename(s["path"]): s["reason"] for s in summary["skipped"]}
  assert set(skipped) == {k for k, v in expected.items() if v}
  for name, reason in skipped.items():
    assert expected[name] in reason, (name, reason)
  assert summary["ignored_non_image_files"] == ["real/notes.txt"]
  saved = json.load(open(tmp_path / "out" / "build_summary.json"))
  assert saved["skipped"] == summary["skipped"]
  got = _read_all(ds, "train")
  sixteen = ds.decode(got["real/sixteen.png"][0])
  np.testing.assert_array_equal(sixteen[..., 0], np.arange(256).reshape(16, 16))  # >> 8 of v*257.
  rgba = ds.decode(got["real/rgba.png"][0])
  np.testing.assert_array_equal(rgba, random_image(3, 16, 16))  # Alpha dropped, colours kept exactly.
  assert ds.decode(got["real/cmyk.jpg"][0]).shape == (16, 16, 3)


def test_format_bias_warning(tmp_path):
  root = tmp_path / "bias"
  for i in range(6):
    write_png(str(root / "real" / f"{i}.jpg"), random_image(i), quality=90)
    write_png(str(root / "fake" / f"{i}.png"), random_image(i + 100, 48, 48))
  _, summary = datasets.prepare_folder(str(root), str(tmp_path / "out"), fractions=(1, 1, 1))
  assert summary["class_stats"]["real"]["jpeg_share"] == 1.0
  assert summary["class_stats"]["fake"]["jpeg_share"] == 0.0
  text = " ".join(summary["warnings"])
  assert "format bias" in text and "size bias" in text


def test_leakage_report_and_dedup(tmp_path):
  root = tmp_path / "leak"
  dup = random_image(99)
  for split in ("train", "test"):
    for cls in ("real", "fake"):
      for i in range(3):
        write_png(str(root / split / "x" / ("0_real" if cls == "real" else "1_fake") / f"{i}.png"),
                  random_image(1000 + 100 * (split == "test") + 10 * (cls == "fake") + i))  # Distinct seeds.
  write_png(str(root / "train/x/0_real/dup.png"), dup)
  write_png(str(root / "test/x/0_real/dup_copy.png"), dup)
  _, summary = datasets.prepare_folder(str(root), str(tmp_path / "out"))
  assert summary["leakage"]["n_hashes_in_several_splits"] == 1
  assert sorted(summary["leakage"]["examples"][0]) == ["test/x/0_real/dup_copy.png",
                                                       "train/x/0_real/dup.png"]
  ds, summary = datasets.prepare_folder(str(root), str(tmp_path / "out2"), dedup=True)
  assert summary["leakage"]["removed_by_dedup"] == ["test/x/0_real/dup_copy.png"]
  assert "test/x/0_real/dup_copy.png" not in _read_all(ds, "test")
  assert "train/x/0_real/dup.png" in _read_all(ds, "train")


def test_leakage_check_tells_apart_hashes_that_share_their_first_bytes(tmp_path, monkeypatch):
  """The check keeps 8 bytes of each hash in a sorted array; here every hash starts with the same
  8 bytes, so only the comparison of whole hashes finds the one image in two splits. A copy
  within one split is not leakage; the example names the first copy."""
  real_hash = datasets.images.pixel_hash
  monkeypatch.setattr(datasets.images, "pixel_hash", lambda rgb: "00" * 8 + real_hash(rgb)[16:])
  root = tmp_path / "leak"
  for split in ("train", "val", "test"):
    for lab in ("0_real", "1_fake"):
      for i in range(4):
        write_png(str(root / split / "x" / lab / f"{i}.png"),
                  random_image(2000 + 100 * SPLIT_SEEDS[split] + 10 * (lab == "1_fake") + i))
  dup = random_image(77)
  for path in ("train/x/0_real/a.png", "train/x/0_real/b.png", "test/x/1_fake/c.png"):
    write_png(str(root / path), dup)
  _, summary = datasets.prepare_folder(str(root), str(tmp_path / "out"), workers=0)
  assert summary["leakage"]["n_hashes_in_several_splits"] == 1
  assert summary["leakage"]["examples"] == [["train/x/0_real/a.png", "test/x/1_fake/c.png"]]
  _, summary = datasets.prepare_folder(str(root), str(tmp_path / "out2"), workers=0, dedup=True)
  assert summary["leakage"]["removed_by_dedup"] == ["test/x/1_fake/c.png"]
  assert summary["counts"] == {"train": 10, "val": 8, "test": 8}


SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def test_prepare_refuses_to_overwrite_and_clears_a_crashed_build(tmp_path):
  root = tmp_path / "r"
  for cls in ("real", "fake"):
    for i in range(4):
      write_png(str(root / cls / f"{i}.png"), random_image(i + 10 * (cls == "fake")))
  datasets.prepare_folder(str(root), str(tmp_path / "out"), fractions=(1, 1, 1))
  with pytest.raises(FileExistsError):
    datasets.prepare_folder(str(root), str(tmp_path / "out"), fractions=(1, 1, 1))
  assert datasets.Dataset(str(tmp_path / "out")).splits == ("train", "val", "test")
  crashed = tmp_path / "crashed" / "fakejax_images" / "2.0.0"  # What a killed build leaves.
  os.makedirs(crashed)
  (crashed / "partial.array_record").write_bytes(b"junk")
  ds, _ = datasets.prepare_folder(str(root), str(tmp_path / "crashed"), fractions=(1, 1, 1))
  assert not (crashed / "partial.array_record").exists() and ds.splits == ("train", "val", "test")


# ---------------------------------------------------------------------------
# The synthetic benchmark.
# ---------------------------------------------------------------------------
def test_synthetic_is_deterministic_and_has_no_trivial_cue():
  a = list(synthetic.generate({"train": 6}, size=32, seed=1))
  b = list(synthetic.generate({"train": 6}, size=32, seed=1))
  assert all(np.array_equal(x[1]["image"], y[1]["image"]) for x, y in zip(a, b))
  c = list(synthetic.generate({"train": 6}, size=32, seed=2))
  assert not np.array_equal(a[0][1]["image"], c[0][1]["image"])
  by = {}
  for _, ex in synthetic.generate({"train": 30}, size=32, seed=0):
    by.setdefault(ex["source"], []).append(ex["image"].astype(np.float64))
  real = np.stack(by.pop("real"))
  assert set(by) == set(synthetic.FAMILIES)
  for fam, imgs in by.items():
    imgs = np.stack(imgs)
    assert imgs.shape == real.shape and imgs.dtype == real.dtype
    assert abs(imgs.mean() - real.mean()) < 2.0, fam  # Brightness matches (0..255 scale).
    assert abs(imgs.std() - real.std()) < 3.0, fam


def test_synthetic_families_have_distinct_spectra():
  """Each family leaves its own fingerprint: mean high-frequency spectra differ."""
  spectra = {}
  for _, ex in synthetic.generate({"train": 20}, size=32, seed=0):
    g = ex["image"].astype(np.float64).mean(-1)
    p = np.abs(np.fft.fft2(g - g.mean())) ** 2
    spectra.setdefault(ex["source"], []).append(np.log(p + 1e-6))
  mean = {k: np.mean(v, 0) for k, v in spectra.items()}
  names = sorted(mean)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert np.abs(mean[a][8:24, 8:24] - mean[b][8:24, 8:24]).mean() > 0.1, (a, b)


def test_synthetic_categories_have_distinct_statistics():
  """The content-diversity study needs >= 8 categories that differ in content statistics:
  spectral slope, edge density and contrast of the real images."""
  assert len(synthetic.CATEGORIES) >= 8
  feats = {}
  for cat in synthetic.CATEGORIES:
    rows = []
    for i in range(6):
      g = synthetic.real_image(np.random.default_rng([3, i]), 64, cat).mean(-1)
      p = np.abs(np.fft.fft2(g - g.mean())) ** 2
      f = np.sqrt(np.fft.fftfreq(64)[:, None] ** 2 + np.fft.fftfreq(64)[None] ** 2)
      m = (f > 0.02) & (f < 0.4)
      slope = np.polyfit(np.log(f[m]), np.log(p[m] + 1e-9), 1)[0]
      edges = np.mean(np.abs(np.diff(g, axis=1)) > 20)
      rows.append((slope, edges, g.std() / 50))
    feats[cat] = np.mean(rows, 0)
  names = list(feats)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert np.abs(feats[a] - feats[b]).max() > 0.1, (a, b, feats[a], feats[b])


def test_synthetic_cache_reused_and_rebuilt_on_change(tiny_synthetic, data_root):
  again = datasets.synthetic_dataset(data_root, size=32, counts=(("train", 8), ("val", 4), ("test", 3)))
  assert again.path == tiny_synthetic.path
  other = datasets.synthetic_dataset(data_root, size=32, counts=(("train", 2), ("test", 1)), seed=5)
  assert other.path != tiny_synthetic.path and other.splits == ("train", "test")
  assert len(other.source("train")) == 2 * 3 * 5
  idx = tiny_synthetic.index("test")
  assert len(idx["label"]) == 3 * 3 * 5
  assert set(idx["category"]) == set(synthetic.DEFAULT_CATEGORIES)
  sel = tiny_synthetic.select("test", sources=("nn_conv",), exclude_categories=("clouds",))
  assert set(idx["source"][sel]) == {"real", "nn_conv"} and "clouds" not in set(idx["category"][sel])
  with pytest.raises(ValueError, match="Unknown source"):
    tiny_synthetic.select("test", sources=("stylegan9",))
