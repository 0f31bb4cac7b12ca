"""A killed `prepare` resumes: it keeps the shards it closed, decodes none of their files again,
and ends with the same dataset, byte for byte, as an uninterrupted build.

This file is also the program that kills a real `python -m fakejax.prepare` at a point chosen in
advance (as tests/signal_at.py does for training):

  python -m tests.test_prepare_resume N_SHARDS [fakejax.prepare flags...]

runs fakejax.prepare and SIGKILLs it when it starts writing a record after its N_SHARDS-th shard
checkpoint: one shard begun and not finished, the worst place to die.
"""

import json
import os
import runpy
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.conftest import random_image
from tests.conftest import subprocess_env
from tests.conftest import write_png
from fakejax import datasets
from fakejax.datasets import builder

SHARD_BYTES = 1500  # About three 12x12 PNG records a shard.


def _tree(root):
  """A binary-layout tree (hash split): 59 distinct images, and the same pixels under 9 names in
  every split (leakage, from val's first image on), two broken files (skipped)."""
  for cls in ("real", "fake"):
    for i in range(30):
      seed = 999 if (cls, i) == ("fake", 0) else i + 100 * (cls == "fake")  # fake/000.png: val.
      write_png(os.path.join(root, cls, f"{i:03d}.png"), random_image(seed, 12, 12))
  for cls in ("real", "fake"):
    for i in range(4):
      write_png(os.path.join(root, cls, f"dup{i}.png"), random_image(999, 12, 12))
  open(os.path.join(root, "fake", "broken.png"), "wb").write(b"\x89PNG\r\n\x1a\nnot really")
  open(os.path.join(root, "real", "empty.png"), "wb").close()
  return str(root)


def _killed(root, out, n_shards):
  """Runs fakejax.prepare as a process that SIGKILLs itself after n_shards shard checkpoints."""
  r = subprocess.run([sys.executable, "-m", "tests.test_prepare_resume", str(n_shards), "--root", root,
                      "--out", out, "--workers", "0"], cwd=ROOT, timeout=300, text=True,
                     env=subprocess_env(FAKEJAX_SHARD_BYTES=str(SHARD_BYTES)),
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  assert r.returncode == -signal.SIGKILL, r.stdout[-3000:]
  return r.stdout


def _checkpoints(out):
  d = os.path.join(builder.builder_dir(out), ".resume")
  return {f[:-len(".json")]: json.load(open(os.path.join(d, f))) for f in os.listdir(d) if f.endswith(".json")}


def _shards(out, split):
  return sorted(f for f in os.listdir(builder.builder_dir(out)) if f"-{split}.array_record-" in f)


def _assert_same_dataset(out, ref):
  """The same files in the builder folder (no checkpoint or unfinished shard left), the same
  bytes, the same index, metadata and summary (but the build's speed)."""
  a, b = builder.builder_dir(out), builder.builder_dir(ref)
  assert sorted(os.listdir(a)) == sorted(os.listdir(b))
  for f in os.listdir(b):
    if f == "index.npz":  # A zip: entries carry their write time; compare the arrays.
      with np.load(os.path.join(a, f)) as x, np.load(os.path.join(b, f)) as y:
        assert sorted(x.files) == sorted(y.files)
        for k in y.files:
          assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k
    else:
      assert open(os.path.join(a, f), "rb").read() == open(os.path.join(b, f), "rb").read(), f
  assert open(os.path.join(out, "fakejax.json")).read() == open(os.path.join(ref, "fakejax.json")).read()
  summaries = [json.load(open(os.path.join(d, "build_summary.json"))) for d in (out, ref)]
  for s in summaries:
    del s["speed"]
  assert summaries[0] == summaries[1]


def _counting_decodes(monkeypatch):
  """The files the build decodes from now on (workers=0: in this process)."""
  decoded, decode = [], builder._decode_file
  monkeypatch.setattr(builder, "_decode_file", lambda task: decoded.append(task[0]) or decode(task))
  return decoded


def test_killed_prepare_resumes_to_the_same_dataset(tmp_path, monkeypatch):
  monkeypatch.setenv("FAKEJAX_SHARD_BYTES", str(SHARD_BYTES))
  root = _tree(tmp_path / "imgs")
  ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
  _, ref_summary = datasets.prepare_folder(root, ref, workers=0)
  n_train = len(_shards(ref, "train"))
  assert n_train >= 6 and len(_shards(ref, "val")) >= 3  # Enough shards to die in the middle of.
  assert ref_summary["skipped"] and ref_summary["leakage"]["n_hashes_in_several_splits"]

  # Killed in train: four shards checkpointed, the fifth begun (it goes).
  _killed(root, out, 4)
  assert sorted(_checkpoints(out)) == ["params"] + [f"train.shard{i}" for i in range(4)]
  assert os.path.exists(os.path.join(builder.builder_dir(out), ".train.shard4"))
  # Resumed, killed again in val: train complete (its shards named), two val shards kept.
  _killed(root, out, n_train - 4 + 2)
  done = _checkpoints(out)
  assert "train.done" in done and "val.shard1" in done and "val.shard2" not in done
  assert len(_shards(out, "train")) == n_train
  assert done["val.shard0"]["leaks"] and any(c.get("skipped") for c in done.values())  # To restore.
  resumed = done["train.done"]["consumed"] + done["val.shard1"]["consumed"]

  # Resumed to the end, in this process: only the files after the last checkpoint are decoded.
  decoded = _counting_decodes(monkeypatch)
  ds, summary = datasets.prepare_folder(root, out, workers=0)
  assert summary["speed"]["resumed_images"] == resumed
  assert len(decoded) == summary["speed"]["images"] - resumed
  assert summary["speed"]["images"] == ref_summary["speed"]["images"] and ref_summary["speed"]["resumed_images"] == 0
  _assert_same_dataset(out, ref)
  assert [len(ds.source(s)) for s in ds.splits] == list(ref_summary["counts"].values())


def _interrupted(root, out, n_shards, monkeypatch, **kw):
  """A build stopped (KeyboardInterrupt) right after its n_shards-th shard checkpoint."""
  save, saved = builder._Checkpoints.save, []

  def stop(self, name, obj):
    save(self, name, obj)
    saved.extend([name] * (".shard" in name))
    if len(saved) == n_shards:
      raise KeyboardInterrupt

  with monkeypatch.context() as m:
    m.setattr(builder._Checkpoints, "save", stop)
    with pytest.raises(KeyboardInterrupt):
      datasets.prepare_folder(root, out, workers=0, **kw)


@pytest.mark.parametrize("change", ["none", "seed", "storage", "shard_bytes", "tree"])
def test_partial_build_resumes_only_with_the_same_parameters(tmp_path, monkeypatch, change):
  monkeypatch.setenv("FAKEJAX_SHARD_BYTES", str(SHARD_BYTES))
  root = _tree(tmp_path / "imgs")
  out = str(tmp_path / "out")
  _interrupted(root, out, 5, monkeypatch, dedup=True)
  args = {"dedup": True, "seed": 1 if change == "seed" else 0, "storage": "raw" if change == "storage" else "png"}
  if change == "shard_bytes":
    monkeypatch.setenv("FAKEJAX_SHARD_BYTES", str(2 * SHARD_BYTES))
  if change == "tree":
    write_png(os.path.join(root, "fake", "new.png"), random_image(12345, 12, 12))
  decoded = _counting_decodes(monkeypatch)
  _, summary = datasets.prepare_folder(root, out, workers=0, **args)
  resumed = summary["speed"]["resumed_images"]
  if change == "none":  # Resumed: the files of the 5 shards (and the skipped ones among them) kept.
    assert resumed >= 15
  else:  # Cleared and built anew.
    assert resumed == 0
  assert len(decoded) == summary["speed"]["images"] - resumed
  ref = str(tmp_path / "ref")
  monkeypatch.undo()  # The reference: built straight through (the same shard size as `out`).
  monkeypatch.setenv("FAKEJAX_SHARD_BYTES", str(SHARD_BYTES * (1 + (change == "shard_bytes"))))
  datasets.prepare_folder(root, ref, workers=0, **args)
  _assert_same_dataset(out, ref)


def test_build_stopped_while_naming_a_split_resumes(tmp_path, monkeypatch):
  """Stopped between two renames of train's shards (all checkpointed): the rerun names the rest."""
  monkeypatch.setenv("FAKEJAX_SHARD_BYTES", str(SHARD_BYTES))
  root = _tree(tmp_path / "imgs")
  out, ref = str(tmp_path / "out"), str(tmp_path / "ref")
  replace, renamed = os.replace, []

  def stop(src, dst):
    if os.path.basename(src).startswith(".train.shard"):
      if len(renamed) == 2:
        raise KeyboardInterrupt
      renamed.append(src)
    replace(src, dst)

  with monkeypatch.context() as m:
    m.setattr(os, "replace", stop)
    with pytest.raises(KeyboardInterrupt):
      datasets.prepare_folder(root, out, workers=0)
  assert len(_shards(out, "train")) == 2
  decoded = _counting_decodes(monkeypatch)
  _, summary = datasets.prepare_folder(root, out, workers=0)
  n_train = sum(it.split == "train" for it in datasets.scan(root)[2])
  assert summary["speed"]["resumed_images"] == n_train == summary["speed"]["images"] - len(decoded)
  datasets.prepare_folder(root, ref, workers=0)
  _assert_same_dataset(out, ref)


def _kill_after(n_shards):
  """Makes this process SIGKILL itself when it starts a record after its n_shards-th shard checkpoint."""
  save, write, saved = builder._Checkpoints.save, builder._RecordWriter.write, []

  def counting_save(self, name, obj):
    save(self, name, obj)
    saved.extend([name] * (".shard" in name))

  def killing_write(self, example):
    if len(saved) >= n_shards:
      write(self, example)  # The record goes into a shard no checkpoint vouches for.
      os.kill(os.getpid(), signal.SIGKILL)
    write(self, example)

  builder._Checkpoints.save = counting_save
  builder._RecordWriter.write = killing_write


if __name__ == "__main__":
  _kill_after(int(sys.argv[1]))
  sys.argv = ["fakejax.prepare"] + sys.argv[2:]
  runpy.run_module("fakejax.prepare", run_name="__main__", alter_sys=True)
