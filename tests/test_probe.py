"""Linear probes on cached features (fakejax.probe, UnivFD's training): the head trained on the
features scores like the full forward that evaluate uses, the backbone stays as loaded, the
features are computed once, and UnivFD's early-stopping schedule by hand."""

import glob
import json
import os

from flax import nnx
import jax
import numpy as np

from fakejax import checkpoint
from fakejax import runs
from fakejax import scoring
from fakejax.training import schedule
from fakejax import metrics as metrics_lib
from fakejax import models
from fakejax.training import probe
from fakejax import sharding
from fakejax import training


def _probe_config(make_config, **kw):
  return make_config(**{"model.name": "clip_vit_tiny", "model.transfer": "linear_probe",
                        "model.cached_features": True, "model.single_logit": True,
                        "model.preprocess": "clip", "data.image_size": 64, "data.too_small": "zero",
                        "optim.name": "adamw", "optim.lr": 1e-2, "num_epochs": 3, "total_steps": 0,
                        "batch_size": 32, **kw})


def test_probe_head_scores_like_the_full_forward_and_features_are_computed_once(make_config, tmp_path):
  c = _probe_config(make_config)
  out = training.train_and_evaluate(c, str(tmp_path / "a"))
  cache = sorted(glob.glob(os.path.join(c.data.cache_dir, "features", "*.npz")))
  assert len(cache) == 2  # train and val.
  rows = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
  val = {r["step"]: r for r in rows if r["kind"] == "val"}
  assert len(val) == 3 and out["best"] == max(r["accuracy"] for r in val.values())
  best = val[json.load(open(tmp_path / "a" / "finished.json"))["best_step"]]
  # The run as evaluate loads it: the full forward (CLIP-normalised 64 px crop through the ViT
  # and the head) on the validation records gives the probe's best row.
  run = runs.Run(str(tmp_path / "a"))
  data = training.open_data(c)
  ds = data.dataset
  view = scoring.View("full", crop=64, too_small="zero")
  src = ds.source(data.val_split)
  x = np.stack([view.cut(ds.decode(src[int(i)]), int(i))[0][0] for i in data.val_idx])
  probs = jax.nn.softmax(np.asarray(run.forward(run.inference_state, x)), -1)
  got = metrics_lib.binary(ds.index(data.val_split)["label"][data.val_idx], np.asarray(probs)[:, 1])
  # The same ranking (AP); at 0.5 an image whose p_fake sits within float rounding of the
  # threshold may fall either way between the two programs: at most one.
  assert abs(got["ap"] - best["ap"]) < 1e-6
  assert abs(got["accuracy"] - best["accuracy"]) <= 1 / len(data.val_idx) + 1e-12
  # The backbone is the model as initialised: only the head moved.
  init = training.TrainState.for_config(c, 2, 1, sharding.make_mesh()).init()["model"]
  saved, _ = checkpoint.restore_model(str(tmp_path / "a"), nnx.state(nnx.eval_shape(
      lambda: models.from_config(c.model, 2))), "best")
  flat = lambda s: checkpoint.flat(nnx.to_pure_dict(s))
  a, b = flat(init), flat(saved)
  assert [k for k in a if not k.startswith("head/") and not np.array_equal(a[k], b[k])] == []
  assert not np.array_equal(a["head/kernel"], b["head/kernel"])
  # Another probe of the same features (another lr): no feature is computed again.
  mtimes = [os.path.getmtime(p) for p in cache]
  training.train_and_evaluate(_probe_config(make_config, **{"optim.lr": 1e-3}), str(tmp_path / "b"))
  assert sorted(glob.glob(os.path.join(c.data.cache_dir, "features", "*.npz"))) == cache
  assert [os.path.getmtime(p) for p in cache] == mtimes


def test_univfd_early_stopping_divides_the_lr_and_stops_below_1e_6(make_config):
  """A validation accuracy that never changes, patience 2, lr 1e-4: epoch 1 sets the mark,
  epochs 2-3 fail it, the lr drops to 1e-5 (a new EarlyStopping: epoch 4 sets the mark), to 1e-6
  after epoch 6, and after epoch 9 1e-7 would be below UnivFD's min_lr: it stops (by hand)."""
  c = make_config(**{"optim.lr": 1e-4, "probe.lr_drop_patience": 2, "num_epochs": 50, "batch_size": 4,
                     "model.single_logit": True, "optim.name": "adamw"})
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 5)).astype(np.float32)
  y = np.array([0, 1] * 4)
  head = nnx.Linear(5, 1, rngs=nnx.Rngs(0))
  lrs = []
  best = schedule.BestTracker("accuracy", schedule.task_metrics(("real", "fake")))
  step, reason = probe.train_head(head, (x, y), (np.zeros((6, 5), np.float32), np.array([0, 1] * 3)), c,
                                  class_names=("real", "fake"), best=best, log=lambda s, row: lrs.append(row["lr"]))
  assert np.allclose(lrs, [1e-4] * 3 + [1e-5] * 3 + [1e-6] * 3) and "1e-6" in reason
  assert step == 9 * 2  # Two batches of 4 an epoch.
