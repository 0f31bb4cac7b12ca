"""The training spine: sharding equivalence, exact resume, preemption, NaN guard, configs."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

from flax import nnx
import jax
import numpy as np
import pytest

from fakejax import checkpoint
from fakejax import datasets
from fakejax import defaults
from fakejax import input_pipeline
from fakejax import sharding
from fakejax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_eight_devices_equal_one_device(make_config, tiny_synthetic):
  """3 SGD steps: same parameters and BatchNorm statistics on a 8-device and a 1-device mesh."""
  config = make_config(**{"optim.name": "sgd", "optim.lr": 0.01, "model.dropout": 0.5})
  batches = input_pipeline.make_train_iter(tiny_synthetic, config.data, config.aug, 16, seed=0)
  batches = [next(batches) for _ in range(3)]
  results = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = sharding.make_mesh(devices)
    ts = train.TrainState(config, 2, 3, mesh)
    step = train.make_train_step(ts)
    state = ts.init()
    for b in batches:
      state, _ = step(state, sharding.to_global(mesh, b))
    results.append(jax.tree.map(np.asarray, nnx.to_pure_dict(state)))
  assert len(jax.devices()) == 8
  flat8, flat1 = (jax.tree_util.tree_flatten_with_path(r)[0] for r in results)
  n_stats = 0
  for (path, a), (_, b) in zip(flat8, flat1):
    n_stats += "mean" in str(path[-1]) or "var" in str(path[-1])
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=jax.tree_util.keystr(path))
  assert n_stats > 10
  assert not np.allclose(flat8[0][1], jax.tree.leaves(nnx.to_pure_dict(ts.init()))[0])  # It trained.


def test_batch_not_divisible_by_devices(make_config, tmp_path):
  with pytest.raises(ValueError, match="batch_size 12 is not divisible by the number of devices 8"):
    train.train_and_evaluate(make_config(batch_size=12), str(tmp_path / "w"))


def test_nan_loss_stops_without_writing_a_nan_checkpoint(make_config, tmp_path):
  workdir = str(tmp_path / "nan")
  with pytest.raises(train.TrainingError, match=r"Loss is nan at step 2"):
    train.train_and_evaluate(make_config(**{"optim.lr": float("nan")}), workdir)
  assert not glob.glob(os.path.join(workdir, "checkpoints", "[0-9]*"))


def test_restore_into_other_head_names_the_mismatch(make_config, tiny_run):
  workdir = tiny_run
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["kind"] for r in rows] == ["train", "train", "val", "test"]
  assert 0 <= rows[-1]["accuracy"] <= 1
  config = make_config(**{"data.task": "attribution", "data.train_sources": ()})
  ts = train.TrainState(config, 5, 2, sharding.make_mesh())
  with pytest.raises(checkpoint.MismatchError, match=r"model/head/kernel: checkpoint \(256, 2\) vs model \(256, 5\)"):
    checkpoint.restore_model(workdir, ts.abstract)
  with pytest.raises(checkpoint.MismatchError, match="head/kernel"):
    train.train_and_evaluate(config, workdir)  # Resuming with another head is refused too.
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))  # And nothing was lost.


def _config_files():
  return sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


@pytest.mark.parametrize("path", _config_files(), ids=os.path.basename)
def test_every_config_runs_one_tiny_step(path, make_config):
  """Each config file loads and takes one step through its own pipeline and model."""
  c = defaults.from_file(path)
  tiny = make_config()
  c.model.width = 0.0625
  c.model.middle_blocks = 1
  c.data.cache_dir, c.data.synthetic = tiny.data.cache_dir, tiny.data.synthetic
  c.data.image_size = 32 if not c.data.patches_per_image else 16
  c.data.patch_size = 16
  c.data.workers = 0
  c.batch_size = 16
  dataset = datasets.open_dataset(c.data)
  num_classes = input_pipeline.num_classes(dataset, c.data)
  images = c.batch_size // max(c.data.patches_per_image, 1)
  batch = next(input_pipeline.make_train_iter(dataset, c.data, c.aug, images, seed=0))
  assert batch["image"].shape == (16, c.data.image_size, c.data.image_size, 3)
  mesh = sharding.make_mesh()
  ts = train.TrainState(c, num_classes, 10, mesh)
  step = train.make_train_step(ts, ts.stage_at(0))
  state, metrics = step(ts.init(), sharding.to_global(mesh, batch))
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
  assert int(state["optimizer"]["step"][...]) == 1


@pytest.mark.parametrize("name,arg", [("resnet50_imagenet.py", "finetune"), ("attribution.py", "imagenet"),
                                      ("mobilenet_v2.py", "imagenet")])
def test_config_variants_start_from_imagenet_weights(name, arg):
  c = defaults.from_file(os.path.join(ROOT, "configs", name), arg)
  assert c.model.init_from and c.model.transfer in train.TRANSFER_MODES
  with pytest.raises(ValueError, match="Unknown"):
    defaults.from_file(os.path.join(ROOT, "configs", name), "nonsense")


def test_config_typo_lists_valid_keys():
  r = subprocess.run([sys.executable, "-m", "fakejax.train", "--config", "configs/quick.py",
                      "--config.model.widht=2"], cwd=ROOT, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode != 0
  assert "unknown config key 'model.widht'" in r.stderr and "width" in r.stderr
  assert "Traceback" not in r.stderr


# ---------------------------------------------------------------------------
# Exact resume after SIGKILL, checkpoint on SIGTERM (real processes).
# ---------------------------------------------------------------------------
def _cmd(data_root, workdir, steps=16):
  flags = {"model.width": 0.125, "model.middle_blocks": 1, "model.dropout": 0.3,
           "data.cache_dir": data_root, "data.synthetic.size": 32, "data.synthetic.train": 8,
           "data.synthetic.val": 4, "data.synthetic.test": 3, "data.image_size": 32,
           "batch_size": 16, "total_steps": steps, "eval_every_steps": 4, "log_every_steps": 1,
           "keep_checkpoints": 10}
  return ([sys.executable, "-m", "fakejax.train", "--config", "configs/quick.py",
           "--workdir", workdir] + [f"--config.{k}={v}" for k, v in flags.items()])


def _env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONUNBUFFERED="1")


def _losses(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def _interrupt(cmd, workdir, sig, after_step):
  """Starts a run and sends `sig` once checkpoint `after_step` is on disk."""
  p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
  deadline = time.time() + 240
  while not os.path.isdir(os.path.join(workdir, "checkpoints", str(after_step))):
    assert p.poll() is None, p.stdout.read()
    assert time.time() < deadline
    time.sleep(0.02)
  p.send_signal(sig)
  out, _ = p.communicate(timeout=120)
  return p.returncode, out


def test_exact_resume_after_sigkill_and_checkpoint_on_sigterm(tiny_synthetic, data_root, tmp_path):
  del tiny_synthetic
  ref = str(tmp_path / "ref")
  subprocess.run(_cmd(data_root, ref), cwd=ROOT, env=_env(), check=True, capture_output=True)
  expected = _losses(ref)
  assert sorted(expected) == list(range(1, 17))

  killed = str(tmp_path / "killed")
  code, _ = _interrupt(_cmd(data_root, killed), killed, signal.SIGKILL, after_step=8)
  assert code == -signal.SIGKILL
  assert max(_losses(killed)) < 16  # It really died mid-run.
  subprocess.run(_cmd(data_root, killed), cwd=ROOT, env=_env(), check=True, capture_output=True)
  got = _losses(killed)
  assert sorted(got) == sorted(expected)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)],
                             rtol=0, atol=1e-6)

  termed = str(tmp_path / "termed")
  code, out = _interrupt(_cmd(data_root, termed), termed, signal.SIGTERM, after_step=4)
  assert code == 0 and "SIGTERM: checkpoint written" in out, out
  stopped_at = max(_losses(termed))
  assert stopped_at < 16
  assert os.path.isdir(os.path.join(termed, "checkpoints", str(stopped_at)))
  subprocess.run(_cmd(data_root, termed), cwd=ROOT, env=_env(), check=True, capture_output=True)
  got = _losses(termed)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)],
                             rtol=0, atol=1e-6)
