"""Dataset preparation: layouts, lossless pixels, bad files, bias and leakage reports."""

import json
import os
import struct
import zlib

import numpy as np
from PIL import Image
import pytest

from fakejax import datasets
from fakejax import synthetic


def _png(path, arr, **kw):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(arr).save(path, **kw)


def _rand(seed, h=24, w=20):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _read_all(ds, split):
  src = ds.source(split)
  return {src[i]["path"].decode(): src[i] for i in range(len(src))}


@pytest.mark.parametrize("spill", [False, True], ids=["in_memory", "spilled_to_disk"])
def test_lossless_round_trip(tmp_path, monkeypatch, spill):
  """Exact pixels back, also when the build spills its shuffle buffer to disk (big datasets)."""
  if spill:
    monkeypatch.setattr(datasets, "SHUFFLE_MEMORY_BYTES", 1)
  root = tmp_path / "imgs"
  originals = {}
  for cls in ("real", "fake"):
    for i in range(12):
      arr = _rand(100 * (cls == "fake") + i)  # Distinct seeds (hash() of str varies per process).
      rel = f"{cls}/img{i}.png"
      _png(str(root / rel), arr)
      originals[rel] = arr
  _png(str(root / "real/photo.jpg"), _rand(7), quality=80)
  with Image.open(root / "real/photo.jpg") as im:
    originals["real/photo.jpg"] = np.asarray(im.convert("RGB"))
  ds, summary = datasets.prepare_folder(str(root), str(tmp_path / "out"), fractions=(1, 1, 1))
  assert summary["layout"] == "binary"
  seen = {}
  for split in ds.splits:
    seen.update(_read_all(ds, split))
  assert set(seen) == set(originals)
  for rel, ex in seen.items():
    np.testing.assert_array_equal(datasets.decode_png(ex["image"]), originals[rel])
    assert ex["label"] == (rel.startswith("fake"))
  assert seen["real/photo.jpg"]["orig_format"].decode() == "JPEG"


def test_binary_split_is_deterministic():
  a = [datasets.hash_split(f"x/{i}.png", (0.56, 0.24, 0.2), 0) for i in range(2000)]
  b = [datasets.hash_split(f"x/{i}.png", (0.56, 0.24, 0.2), 0) for i in range(2000)]
  assert a == b
  frac = {s: a.count(s) / len(a) for s in datasets.SPLITS}
  assert abs(frac["train"] - 0.56) < 0.04 and abs(frac["test"] - 0.2) < 0.04
  assert a != [datasets.hash_split(f"x/{i}.png", (0.56, 0.24, 0.2), 1) for i in range(2000)]


def test_cnndetection_layout(tmp_path):
  root = tmp_path / "cnn"
  for split in ("train", "test"):
    for g in ("car", "cat"):
      for sub in ("0_real", "1_fake"):
        for i in range(2):
          _png(str(root / split / g / sub / f"{i}.png"), _rand(i))
  layout, classes, items, _ = datasets.scan(str(root))
  assert layout == "cnndetection" and classes == ("real", "fake")
  assert len(items) == 16
  fake = [i for i in items if i.class_name == "fake"]
  assert {i.category for i in fake} == {"car", "cat"} and {i.source for i in fake} == {"car", "cat"}
  assert all(i.source == "real" for i in items if i.class_name == "real")
  ds, _ = datasets.prepare_folder(str(root), str(tmp_path / "out"))
  assert ds.splits == ("train", "test")
  idx = ds.index("test")
  assert sorted(idx["category"]) == ["car"] * 4 + ["cat"] * 4


def test_attribution_layout(tmp_path):
  root = tmp_path / "attr"
  for split in ("train", "val", "test"):
    for cls in ("stylegan", "real", "pggan"):
      for i in range(2):
        _png(str(root / split / cls / f"{i}.png"), _rand(i + 10))
  layout, classes, _, _ = datasets.scan(str(root))
  assert layout == "attribution"
  assert classes == ("real", "pggan", "stylegan")  # 'real' first: class 0.
  ds, _ = datasets.prepare_folder(str(root), str(tmp_path / "out"))
  idx = ds.index("val")
  for src, cl, lab in zip(idx["source"], idx["class_label"], idx["label"]):
    assert classes[cl] == src and lab == (src != "real")


def test_empty_class_is_an_error_naming_the_folder(tmp_path):
  root = tmp_path / "bin"
  _png(str(root / "real/a.png"), _rand(1))
  os.makedirs(root / "fake")
  with pytest.raises(datasets.LayoutError, match=r"No images in .*fake.*expected layout 'binary'"):
    datasets.scan(str(root))
  with pytest.raises(datasets.LayoutError, match="Cannot tell the layout"):
    datasets.scan(str(tmp_path / "bin" / "real"))


def _bad_corpus(d):
  """Every kind of file a scraped dataset contains; returns {name: expected skip reason or None}."""
  os.makedirs(d, exist_ok=True)
  good = _rand(3, 16, 16)
  Image.fromarray(good).save(os.path.join(d, "good.png"))
  full = open(os.path.join(d, "good.png"), "rb").read()
  open(os.path.join(d, "truncated.png"), "wb").write(full[: len(full) // 2])
  open(os.path.join(d, "zero.png"), "wb").close()
  open(os.path.join(d, "text.png"), "w").write("this is not an image\n")
  Image.fromarray(good).convert("CMYK").save(os.path.join(d, "cmyk.jpg"), quality=95)
  Image.fromarray((np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)).save(
      os.path.join(d, "sixteen.png"))
  Image.fromarray(np.dstack([good, np.full((16, 16), 128, np.uint8)])).save(os.path.join(d, "rgba.png"))
  Image.fromarray(good).convert("P").save(os.path.join(d, "palette.png"))
  Image.fromarray(good[:1, :1]).save(os.path.join(d, "one.png"))
  # A valid PNG header that declares 100000 x 100000 pixels (a decompression bomb).
  ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
  chunk = lambda t, b: struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
  open(os.path.join(d, "bomb.png"), "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                                                 + chunk(b"IEND", b""))
  open(os.path.join(d, "notes.txt"), "w").write("ignored")
  return {"good.png": None, "truncated.png": "cannot decode", "zero.png": "empty file",
          "text.png": "not an image", "cmyk.jpg": None, "sixteen.png": None, "rgba.png": None,
          "palette.png": None, "one.png": "too small", "bomb.png": "decompression bomb"}


def test_bad_file_corpus_is_skipped_with_reasons(tmp_path):
  root = tmp_path / "bad"
  expected = _bad_corpus(str(root / "real"))
  for i in range(3):
    _png(str(root / "fake" / f"{i}.png"), _rand(i, 16, 16))
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
  sixteen = datasets.decode_png(got["real/sixteen.png"]["image"])
  np.testing.assert_array_equal(sixteen[..., 0], np.arange(256).reshape(16, 16))  # >> 8 of v*257.
  rgba = datasets.decode_png(got["real/rgba.png"]["image"])
  np.testing.assert_array_equal(rgba, _rand(3, 16, 16))  # Alpha dropped, colours kept exactly.
  assert datasets.decode_png(got["real/cmyk.jpg"]["image"]).shape == (16, 16, 3)


def test_format_bias_warning(tmp_path):
  root = tmp_path / "bias"
  for i in range(6):
    _png(str(root / "real" / f"{i}.jpg"), _rand(i), quality=90)
    _png(str(root / "fake" / f"{i}.png"), _rand(i + 100, 48, 48))
  _, summary = datasets.prepare_folder(str(root), str(tmp_path / "out"), fractions=(1, 1, 1))
  assert summary["class_stats"]["real"]["jpeg_share"] == 1.0
  assert summary["class_stats"]["fake"]["jpeg_share"] == 0.0
  text = " ".join(summary["warnings"])
  assert "format bias" in text and "size bias" in text


def test_leakage_report_and_dedup(tmp_path):
  root = tmp_path / "leak"
  dup = _rand(99)
  for split in ("train", "test"):
    for cls in ("real", "fake"):
      for i in range(3):
        _png(str(root / split / "x" / ("0_real" if cls == "real" else "1_fake") / f"{i}.png"),
             _rand(1000 + 100 * (split == "test") + 10 * (cls == "fake") + i))  # Distinct seeds.
  _png(str(root / "train/x/0_real/dup.png"), dup)
  _png(str(root / "test/x/0_real/dup_copy.png"), dup)
  _, summary = datasets.prepare_folder(str(root), str(tmp_path / "out"))
  assert summary["leakage"]["n_hashes_in_several_splits"] == 1
  assert sorted(summary["leakage"]["examples"][0]) == ["test/x/0_real/dup_copy.png",
                                                       "train/x/0_real/dup.png"]
  ds, summary = datasets.prepare_folder(str(root), str(tmp_path / "out2"), dedup=True)
  assert summary["leakage"]["removed_by_dedup"] == ["test/x/0_real/dup_copy.png"]
  assert "test/x/0_real/dup_copy.png" not in _read_all(ds, "test")
  assert "train/x/0_real/dup.png" in _read_all(ds, "train")


def test_prepare_refuses_to_overwrite(tmp_path):
  root = tmp_path / "r"
  for cls in ("real", "fake"):
    for i in range(4):
      _png(str(root / cls / f"{i}.png"), _rand(i))
  datasets.prepare_folder(str(root), str(tmp_path / "out"), fractions=(1, 1, 1))
  with pytest.raises(FileExistsError):
    datasets.prepare_folder(str(root), str(tmp_path / "out"), fractions=(1, 1, 1))
  assert datasets.Dataset(str(tmp_path / "out")).splits == ("train", "val", "test")


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


def test_synthetic_cache_reused_and_rebuilt_on_change(tiny_synthetic, data_root):
  again = datasets.synthetic_dataset(data_root, size=32, counts=(("train", 8), ("val", 4), ("test", 3)))
  assert again.path == tiny_synthetic.path
  other = datasets.synthetic_dataset(data_root, size=32, counts=(("train", 2), ("test", 1)), seed=5)
  assert other.path != tiny_synthetic.path
  assert len(other.source("train")) == 2 * 3 * 5
  idx = tiny_synthetic.index("test")
  assert len(idx["label"]) == 3 * 3 * 5
  assert set(idx["category"]) == set(synthetic.CATEGORIES)
  sel = tiny_synthetic.select("test", sources=("nn_conv",), exclude_categories=("clouds",))
  assert set(idx["source"][sel]) == {"real", "nn_conv"} and "clouds" not in set(idx["category"][sel])
  with pytest.raises(ValueError, match="Unknown source"):
    tiny_synthetic.select("test", sources=("stylegan9",))
