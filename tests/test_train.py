"""The training spine: sharding equivalence, accumulation, crash safety (each fault injected),
resume rules, configs, exit statuses."""

import glob
import json
import os
import shutil
import subprocess
import sys

from flax import nnx
import jax
import numpy as np
import pytest

from tests.conftest import ROOT
from tests.conftest import run_to_end
from tests.conftest import train_command
from tests.conftest import train_losses
from fakejax import checkpoint
from fakejax import datasets
from fakejax import defaults
from fakejax import models
from fakejax import runs
from fakejax import sharding
from fakejax import train
from fakejax import training
from fakejax.training import optim as optim_lib

def test_eight_devices_equal_one_device(make_config, tiny_synthetic):
  """3 SGD steps: same parameters and BatchNorm statistics on a 8-device and a 1-device mesh."""
  config = make_config(**{"optim.name": "sgd", "optim.lr": 0.01, "model.dropout": 0.5})
  batches = runs.train_iter(tiny_synthetic, config.data, config.aug, 16, seed=0)
  batches = [next(batches) for _ in range(3)]
  results = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = sharding.make_mesh(devices)
    ts = training.TrainState.for_config(config, 2, 3, mesh)
    step = training.make_train_step(ts)
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


def test_accumulated_micro_batches_make_the_whole_batch_update(make_config, tiny_synthetic):
  """accumulate_steps=4: the same update as one step on the whole batch. DeepFD's second stage
  trains only D2, which has no BatchNorm (D1 is frozen in eval mode), so nothing depends on how
  the batch is cut."""
  batch = next(runs.train_iter(tiny_synthetic, make_config().data, make_config().aug, 16,
                                              seed=0))
  out = []
  for k in (1, 4):
    config = make_config(**{"optim.accumulate_steps": k, "model.name": "deepfd", "model.width": 0.25,
                            "deepfd.stage1_steps": 0, "deepfd.stage2_steps": 1, "optim.name": "sgd",
                            "optim.lr": 0.5})
    mesh = sharding.make_mesh(jax.devices()[:2])
    ts = training.TrainState.for_config(config, 2, 1, mesh)
    init = ts.init()
    state, m = training.make_train_step(ts, ts.stage_at(0))(init, sharding.to_global(mesh, batch))
    out.append((jax.tree.map(np.asarray, nnx.to_pure_dict(state["model"])), float(m["loss"])))
  (whole, loss1), (acc, loss4) = out
  assert loss4 == pytest.approx(loss1, rel=1e-5)
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(ts.init()["model"]))
  moved = 0
  for a, b, c in zip(jax.tree.leaves(whole), jax.tree.leaves(acc), jax.tree.leaves(before)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    moved += not np.allclose(a, c)
  assert moved >= 4  # D2's conv and head, kernel and bias.


def test_batch_not_divisible_by_devices(make_config, tmp_path):
  with pytest.raises(ValueError, match="batch_size 12 is not divisible by the number of devices 8"):
    training.train_and_evaluate(make_config(batch_size=12), str(tmp_path / "w"))


def test_nan_loss_stops_without_writing_a_nan_checkpoint(make_config, tmp_path):
  workdir = str(tmp_path / "nan")
  with pytest.raises(training.TrainingError, match=r"Loss is nan at step 2"):
    training.train_and_evaluate(make_config(**{"optim.lr": float("nan")}), workdir)
  assert not glob.glob(os.path.join(workdir, "checkpoints", "[0-9]*"))


def test_bf16_step_follows_float32(make_config, tiny_synthetic):
  """Mixed precision (bf16 compute, float32 parameters, optimizer, loss and BatchNorm statistics):
  one update from the same start on the same batch gives float32's loss to bf16's precision and
  moves the float32 parameters the same way."""
  mesh = sharding.make_mesh()
  c = make_config()
  batch = next(runs.train_iter(tiny_synthetic, c.data, c.aug, 16, seed=0))
  flat = lambda tree: np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])
  loss, update = {}, {}
  for dtype in ("float32", "bfloat16"):
    # SGD: the update is the gradient itself (Adam's first step is its sign, noisy where it is ~0).
    c = make_config(**{"model.dtype": dtype, "optim.name": "sgd", "optim.lr": 0.01})
    ts = training.TrainState.for_config(c, 2, 1, mesh)
    state = ts.init()
    params = nnx.to_pure_dict(nnx.state(nnx.merge(ts.model_def, state["model"]), nnx.Param))
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype("float32")}
    before = flat(params)
    state, m = training.make_train_step(ts)(state, sharding.to_global(mesh, batch))
    after = flat(nnx.to_pure_dict(nnx.state(nnx.merge(ts.model_def, state["model"]), nnx.Param)))
    loss[dtype], update[dtype] = float(m["loss"]), after - before
  assert loss["bfloat16"] == pytest.approx(loss["float32"], rel=5e-3)  # 5e-4 measured; a bf16 rounding is 4e-3.
  u32, u16 = update["float32"], update["bfloat16"]
  assert np.linalg.norm(u32) > 0
  cosine = u32 @ u16 / (np.linalg.norm(u32) * np.linalg.norm(u16))
  assert cosine > 0.9  # 0.971 measured (jax 0.12.1); an update lost to bf16 parameters gives ~0.


def test_restore_into_other_head_names_the_mismatch(make_config, tiny_run):
  workdir = tiny_run
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["kind"] for r in rows] == ["train", "train", "val", "test"]
  assert 0 <= rows[-1]["accuracy"] <= 1
  config = make_config(**{"data.task": "attribution", "data.train_sources": ()})
  ts = training.TrainState.for_config(config, 5, 2, sharding.make_mesh())
  with pytest.raises(checkpoint.MismatchError, match=r"model/head/kernel: checkpoint \(256, 2\) vs model \(256, 5\)"):
    checkpoint.restore_model(workdir, ts.abstract["model"])
  # Resuming with another config is refused before anything is touched, naming the keys.
  with pytest.raises(training.TrainingError, match=r"data.task: 'binary' -> 'attribution'.*data.train_sources"):
    training.train_and_evaluate(config, workdir)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))  # And nothing was lost.


def test_a_run_saved_before_a_key_existed_resumes_with_its_default(make_config, tmp_path):
  config = make_config()
  saved = json.loads(config.to_json())
  del saved["data"]["pairs"], saved["aug"]["rot90"]  # As a run of an older fakejax saved it.
  os.makedirs(tmp_path / "run")
  with open(tmp_path / "run" / "config.json", "w") as f:
    json.dump(saved, f)
  runs.check_same_run(str(tmp_path / "run"), config.to_json())  # The defaults: the same run.
  config.aug.rot90 = 0.5
  with pytest.raises(training.TrainingError, match=r"aug.rot90: 0.0 -> 0.5"):
    runs.check_same_run(str(tmp_path / "run"), config.to_json())


def test_default_workdir_includes_the_variant():
  assert runs.default_workdir("configs/mobilenet_v2.py:imagenet") == os.path.join("runs", "mobilenet_v2_imagenet")
  assert runs.default_workdir("configs/mobilenet_v2.py") == os.path.join("runs", "mobilenet_v2")


def _files(workdir, sub):
  return sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(workdir, sub, "[0-9]*")))


class StopAt:
  """A stop request at a given step (what SIGTERM does, without a signal or a race)."""

  def __init__(self, step):
    self.step = step

  def reached(self, step):
    return step == self.step

  def close(self):
    pass


def test_checkpoint_saves_return_before_the_write_and_every_read_waits(tmp_path, monkeypatch, caplog):
  """save_best starts orbax's save and returns without waiting for it (no race on timing: the
  calls are recorded); reading the best steps waits, and a restore sees the model whole, and
  quietly (orbax warned of a missing step metadata file on every restore)."""
  model = nnx.Linear(64, 64, rngs=nnx.Rngs(0))
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  calls = []
  for name in ("save", "wait_until_finished"):  # Recorded as each returns (orbax's save waits inside).
    orig = getattr(ckpt.best, name)
    monkeypatch.setattr(ckpt.best, name, lambda *a, _o=orig, _n=name, **k: (_o(*a, **k), calls.append(_n))[0])
  ckpt.save_best(3, nnx.state(model), {"step": 3})
  assert calls[-1] == "save"  # Nothing waited after the save was started.
  assert ckpt.best_steps() == [3] and calls[-1] == "wait_until_finished"
  ckpt.close()
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), nnx.state(model))
  with caplog.at_level("WARNING"):
    restored, meta = checkpoint.restore_model(str(tmp_path), abstract)
    weights = checkpoint.load_run_weights(str(tmp_path))
  assert not [r.getMessage() for r in caplog.records if r.levelno >= 30 and r.name == "absl"]  # orbax logs there.
  assert meta["step"] == 3
  np.testing.assert_array_equal(restored["kernel"].get_value(), model.kernel.get_value())
  np.testing.assert_array_equal(weights["kernel"], model.kernel.get_value())


@pytest.mark.slow
def test_crash_safety(make_config, tmp_path, monkeypatch):
  """Each fault injected in turn; after every one the run resumes and finishes.

  Validation is stubbed with scores that improve at every evaluation, so each one makes a new
  best model (what is tested is when checkpoints are written, not the metrics).
  """
  calls = []

  def improving(model_state):
    del model_state
    calls.append(1)
    return {"accuracy": len(calls) / 100, "loss": 1 / len(calls)}

  cfg = lambda **kw: make_config(total_steps=4, eval_every_steps=2, keep_checkpoints=10, **kw)
  run = lambda w, stop_at=None: training.train_and_evaluate(
      cfg(checkpoint_every_steps=1), w, evaluate_fn=improving,
      preemption=StopAt(stop_at) if stop_at else None)

  # SIGTERM before the first evaluation: no best model yet; evaluation falls back to the latest
  # checkpoint. checkpoint_every_steps wrote step 1 between evaluations.
  w = str(tmp_path / "run")
  out = run(w, stop_at=1)
  assert out == {"step": 1, "preempted": True} and _files(w, "checkpoints") == [1] and _files(w, "best") == []
  assert runs.Run(w).meta["step"] == 1

  # SIGTERM arriving with the evaluation of step 2, which already saved that step: saved once.
  assert run(w, stop_at=2)["preempted"]
  assert _files(w, "checkpoints") == [1, 2] and _files(w, "best") == [2]

  # A crash between step 4's checkpoint and its best-model save: the resumed run saves it.
  save_best = checkpoint.Checkpointer.save_best

  def crash(self, step, *a):
    if step == 4:
      raise RuntimeError("killed")
    return save_best(self, step, *a)
  monkeypatch.setattr(checkpoint.Checkpointer, "save_best", crash)
  with pytest.raises(RuntimeError, match="killed"):
    run(w)
  monkeypatch.setattr(checkpoint.Checkpointer, "save_best", save_best)
  assert _files(w, "checkpoints") == [1, 2, 3, 4] and _files(w, "best") == [2]
  done = run(w)
  assert _files(w, "best") == [4] and done["step"] == 4 and "accuracy" in done["test"]
  # The best model holds no optimizer state.
  saved = checkpoint.ocp.PyTreeCheckpointer().metadata(
      os.path.join(w, "best", "4", "state")).item_metadata.tree
  assert set(saved) == {"model"}

  # Rerunning a finished run reports and exits without training or logging.
  before = open(os.path.join(w, "metrics.jsonl")).read()
  again = run(w)
  assert again["finished"] and open(os.path.join(w, "metrics.jsonl")).read() == before

  # The old failure: a best model on disk for a step whose checkpoint was lost. The resumed run
  # reaches that step again and goes on (a step already saved is never saved twice).
  w2 = str(tmp_path / "lost")
  training.train_and_evaluate(cfg(), w2, evaluate_fn=improving)
  assert _files(w2, "checkpoints") == [2, 4] and _files(w2, "best") == [4]
  os.remove(os.path.join(w2, "finished.json"))
  shutil.rmtree(os.path.join(w2, "checkpoints", "4"))
  assert training.train_and_evaluate(cfg(), w2, evaluate_fn=improving)["step"] == 4
  assert _files(w2, "checkpoints") == [2, 4]


def test_early_stop_is_final_and_lower_is_better_metrics(make_config, tmp_path):
  """best_metric='loss' keeps the lowest; an early-stopped run does not train on when rerun."""
  with pytest.raises(ValueError, match="best_metric 'acc' is not a metric of this task; it reports: .*accuracy"):
    training.train_and_evaluate(make_config(best_metric="acc"), str(tmp_path / "x"))
  # top1 exists only for attribution: on a binary run it is refused before step 1, not after an epoch.
  with pytest.raises(ValueError, match="best_metric 'top1' is not a metric of this task"):
    training.train_and_evaluate(make_config(best_metric="top1"), str(tmp_path / "x"))
  assert not os.path.exists(tmp_path / "x")
  w = str(tmp_path / "es")
  c = make_config(total_steps=6, eval_every_steps=1, best_metric="loss", early_stop_patience=1,
                  **{"optim.lr": 0.2, "optim.name": "sgd"})
  out = training.train_and_evaluate(c, w)
  val = [json.loads(l) for l in open(os.path.join(w, "metrics.jsonl")) if '"val"' in l]
  losses = [r["loss"] for r in val]
  assert out["best"] == min(losses) and _files(w, "best") == [val[int(np.argmin(losses))]["step"]]
  stopped = out["step"]
  assert stopped < 6  # An evaluation without improvement stopped it.
  again = training.train_and_evaluate(c, w)
  assert again["finished"] and again["step"] == stopped


def test_dataset_without_validation_fails_before_training_or_holds_out_a_fraction(make_config, tmp_path):
  c = make_config(**{"data.synthetic.val": 0})
  with pytest.raises(ValueError, match="has no 'val' split.*val_fraction"):
    training.train_and_evaluate(c, str(tmp_path / "noval"))
  assert not os.path.exists(tmp_path / "noval" / "checkpoints")
  c = make_config(total_steps=2, **{"data.synthetic.val": 0, "data.val_fraction": 0.2})
  training.train_and_evaluate(c, str(tmp_path / "frac"))
  info = json.load(open(tmp_path / "frac" / "run.json"))["validation"]
  assert info["split"] == "train" and info["val_fraction"] == 0.2 and info["n"] > 0


def _config_files():
  return sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


@pytest.mark.parametrize("path", _config_files(), ids=os.path.basename)
def test_every_config_runs_one_tiny_step(path, make_config):
  """Each config file loads, feeds its own pipeline, and its train step traces (quick.py: runs)."""
  c = defaults.from_file(path)
  tiny = make_config()
  c.model.width = 0.0625
  c.model.middle_blocks = 1
  c.data.cache_dir, c.data.synthetic = tiny.data.cache_dir, tiny.data.synthetic
  c.data.image_size = 32 if not c.data.patches_per_image else 16
  if c.model.name in models.vit.ARCHS:  # A ViT's input size is its positional embedding's.
    c.model.name, c.data.image_size = "clip_vit_tiny", 64
    c.data.too_small = "zero"
  if c.model.name in models.dinov2.ARCHS:
    c.model.name, c.data.image_size = "dinov2_vit_tiny", 28
  if c.model.name == "spectral":  # Its feature count is its crop's: the two are set together.
    c.model.spectrum_size = c.data.image_size
  c.data.patch_size = 16
  c.data.workers = 0
  c.data.pairs = False  # The synthetic benchmark has no aligned pairs (input_pipeline's tests have),
  c.aug.pixel_mix_prob = c.aug.freq_mix_prob = 0.0  # so no real to blend a fake with.
  c.batch_size = 16
  c.optim.accumulate_steps = 1
  dataset = datasets.open_dataset(c.data)
  num_classes = runs.Task.from_config(c.data, dataset).num_classes
  images = c.batch_size // max(c.data.patches_per_image, 1)
  batch = next(runs.train_iter(dataset, c.data, c.aug, images, seed=0))
  assert batch["image"].shape == (16, c.data.image_size, c.data.image_size, 3)
  mesh = sharding.make_mesh()
  ts = training.TrainState.for_config(c, num_classes, 10, mesh)
  step = training.make_train_step(ts, ts.stage_at(0))
  global_batch = sharding.to_global(mesh, batch)
  if os.path.basename(path) != "quick.py":
    # Traced and lowered with its shapes and shardings (config keys, model, optimizer, stages),
    # not compiled: compiling every architecture's step costs 30-80 s each on 2 cores, and the
    # models' steps run in test_models / test_transfer / test_deepfd; quick.py's runs here.
    step.lower(jax.eval_shape(ts.init), global_batch)
    return
  state, metrics = step(ts.init(), global_batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
  assert int(state["optimizer"]["step"][...]) == 1


@pytest.mark.parametrize("name,arg", [("resnet50_imagenet.py", "finetune"), ("attribution.py", "imagenet"),
                                      ("mobilenet_v2.py", "imagenet")])
def test_config_variants_start_from_imagenet_weights(name, arg):
  c = defaults.from_file(os.path.join(ROOT, "configs", name), arg)
  assert c.model.init_from and c.model.transfer in optim_lib.TRANSFER_MODES
  with pytest.raises(ValueError, match="Unknown"):
    defaults.from_file(os.path.join(ROOT, "configs", name), "nonsense")


def test_cli_errors_are_one_line_and_bugs_keep_their_traceback():
  run = lambda *a: subprocess.run([sys.executable, *a], cwd=ROOT, capture_output=True, text=True, timeout=120)
  r = run("-m", "fakejax.train", "--config", "configs/quick.py", "--config.model.widht=2")
  assert r.returncode != 0 and "unknown config key 'model.widht'" in r.stderr and "width" in r.stderr
  assert "Traceback" not in r.stderr
  r = run("-m", "fakejax.train", "--config", "configs/quick.py", "--config.model.name=vgg",
          "--workdir", "/nonexistent/never/written")
  assert r.returncode == 1 and "Unknown model 'vgg'; known: bit_resnet50, clip_vit_b16, clip_vit_l14, clip_vit_tiny, deepfd" in r.stderr
  assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
  r = run("-c", "from fakejax import cli; cli.run(lambda argv: int('not a number'))")
  assert r.returncode != 0 and "Traceback" in r.stderr and "invalid literal" in r.stderr


# ---------------------------------------------------------------------------
# SIGTERM: a checkpoint, exit status 75, an exact resume (a real process).
# ---------------------------------------------------------------------------
@pytest.mark.slow  # an end-to-end chain of three real processes (~70 s): make test-slow
def test_sigterm_checkpoints_exits_75_and_resumes_exactly(tiny_synthetic, data_root, tmp_path):
  del tiny_synthetic
  ref = str(tmp_path / "ref")
  code, out = run_to_end(train_command(data_root, ref, 8))
  assert code == 0, out[-3000:]
  expected = train_losses(ref)
  assert sorted(expected) == list(range(1, 9))
  # SIGTERM after step 6, between the evaluations (and checkpoints) of steps 4 and 8: the stop
  # itself must write checkpoint 6.
  termed = str(tmp_path / "termed")
  code, out = run_to_end(train_command(data_root, termed, 8, signal_at=(6, "SIGTERM")))
  assert code == train.EXIT_PREEMPTED and "SIGTERM: checkpoint written" in out, out[-3000:]
  assert max(train_losses(termed)) == 6 and _files(termed, "checkpoints") == [4, 6]
  code, out = run_to_end(train_command(data_root, termed, 8))
  assert code == 0, out[-3000:]
  got = train_losses(termed)
  assert sorted(got) == sorted(expected)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)],
                             rtol=0, atol=1e-6)


def test_profile_steps_write_a_trace_of_those_steps(make_config, tmp_path):
  workdir = str(tmp_path / "prof")
  training.train_and_evaluate(make_config(total_steps=3, profile_steps="1:2"), workdir)
  traces = glob.glob(os.path.join(workdir, "profile", "**", "*.xplane.pb"), recursive=True)
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
  with pytest.raises(ValueError, match="profile_steps"):
    training.train_and_evaluate(make_config(total_steps=3, profile_steps="2:1"), str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")  # Refused before the run's folder exists.
