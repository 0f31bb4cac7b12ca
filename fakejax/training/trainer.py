"""A run from config to finished.json: open data -> state -> restore or init -> train -> finalize."""

import dataclasses
import json
import os
from typing import Any

from absl import logging
import jax
import numpy as np
import tqdm

from fakejax import checkpoint
from fakejax import cli
from fakejax import convert
from fakejax import datasets
from fakejax import input_pipeline
from fakejax import models
from fakejax import report
from fakejax import runs
from fakejax import scoring
from fakejax import processes
from fakejax import sharding
from fakejax.training import loop
from fakejax.training import schedule as schedule_lib
from fakejax.training import state as state_lib
from fakejax.training import strategies


@dataclasses.dataclass
class Data:
  """What the run reads: the dataset, its record selection (and task), the training and validation
  records, the iterator."""
  dataset: Any
  selection: runs.Selection
  train_idx: np.ndarray
  val_split: str
  val_idx: np.ndarray
  images_per_step: int
  steps_per_epoch: int
  train_iter: Any
  val_fraction: float = 0.0  # The share of train held out for validation (a dataset without 'val').

  @property
  def task(self):
    return self.selection.task

  def run_info(self):
    """What evaluate/predict need to load the run besides its config (run.json)."""
    return {**self.task.info(), "dataset": os.path.abspath(self.dataset.path),
            "validation": {"split": self.val_split, "n": int(len(self.val_idx)),
                           "val_fraction": self.val_fraction}}


def open_data(config):
  """The dataset and its training and validation records, checked before any step."""
  if processes.is_main():  # The synthetic benchmark is generated once, by process 0, while the others wait.
    dataset = datasets.open_dataset(config.data)
  processes.barrier("dataset")
  if not processes.is_main():
    dataset = datasets.open_dataset(config.data)
  d = config.data
  selection = runs.Selection.from_config(d, dataset)
  # Checked before the first step: a dataset without validation fails now, not after an epoch.
  val_split, val_idx, val_fraction = selection.validation(dataset)
  if d.patches_per_image and config.batch_size % d.patches_per_image:
    raise cli.UserError(f"batch_size {config.batch_size} must be a multiple of patches_per_image "
                        f"{d.patches_per_image}")
  images_per_step = config.batch_size // max(d.patches_per_image, 1)
  train_idx = selection.train(dataset)
  return Data(dataset, selection, train_idx, val_split, val_idx, images_per_step,
              max(len(train_idx) // images_per_step, 1),
              input_pipeline.make_train_iter(dataset, d, config.aug, images_per_step, d.seed, indices=train_idx,
                                             label_key=selection.task.label_key),
              val_fraction)


def restore_or_init(config, ts, ckpt, train_iter):
  """(state, meta): the last checkpoint (repairing a missing best-model save), or a new state."""
  restored = ckpt.restore_latest(ts.abstract, train_iter)
  if restored:
    state, meta = restored
    logging.info("Resumed from step %d", meta["step"])
    if meta.get("best_step") == meta["step"] and meta["step"] not in ckpt.best_steps():
      # A crash came between this step's checkpoint and its best-model save: save it now.
      ckpt.save_best(meta["step"], state["model"], {"step": meta["step"], "val": meta.get("best_val")})
    return state, meta
  state = ts.init()
  if config.model.init_from:
    weights, _ = convert.load_pretrained(config.model.init_from, config.model.name)
    convert.init_model_state(state["model"], weights, f"init_from {config.model.init_from}")
    state = jax.device_put(state, ts.replicated)
    logging.info("Initialised from %s", config.model.init_from)
  return state, {"step": 0}


def score_records(folder, model_state, mesh, config, data, split, *, indices, desc=None):
  """The report row of the model on some records of a split, scored like evaluate, predict and
  serve score: the inference model (scoring.Folder: BatchNorm folded) in the config's 'full' view."""
  forward, state = folder(model_state)
  ev = runs.evaluator_of(config, lambda x, valid=None: forward(state, x, valid), mesh, data.task)
  view = runs.view_of(config.data)
  bar = tqdm.tqdm(total=len(indices), desc=desc, unit="img", leave=False,
                  disable=desc is None or not processes.is_main())
  scored = scoring.score_sets(ev, [(data.dataset, split, indices)], view, data.task.label_key, split,
                              threshold=config.threshold, progress=lambda n: bar.update(n - bar.n))
  bar.close()
  results, labels = scored[split]
  return scoring.set_metrics(results, labels, data.task.class_names, view, config.threshold)


def finalize(ctx, step, stop_reason):
  """The held-out test of the best model, finished.json; returns the run's result."""
  config, data, best = ctx.config, ctx.data, ctx.best
  best_state, best_meta = checkpoint.restore_model(ctx.workdir, ctx.ts.spec.abstract, "best")
  test = {}
  if "test" in data.dataset.splits:
    test = score_records(ctx.folder, best_state, ctx.mesh, config, data, "test",
                         indices=data.selection.records(data.dataset, "test"), desc="test")
    test = {k: v for k, v in test.items() if not isinstance(v, list)}
    ctx.log.log([{"step": best_meta["step"], **test}], "test")
    if processes.is_main():
      print(f"held-out test ({','.join(config.data.train_sources) or 'all'}): "
            + " ".join(f"{k}={test[k]:.4f}" for k in ("top1", "accuracy", "real_acc", "fake_acc",
                                                       "ap", "auc") if k in test), flush=True)
  if processes.is_main():
    runs.write_json(os.path.join(ctx.workdir, "finished.json"),
                    {"step": step, "reason": stop_reason or "completed", "best_step": best.best_step,
                     "test": test})
  return {"step": step, "best": best.best, "test": test}


def resolve(config):
  """A copy of `config` with what a run records resolved: the input preprocessing (that of
  init_from's weights for 'auto') and the compute dtype (a resume keeps them)."""
  config = config.copy_and_resolve_references()
  models.get(config.model.name)  # An unknown name fails here, before any work.
  info = convert.pretrained_info(config.model.init_from, config.model.name) if config.model.init_from else None
  if info and config.model.preprocess not in ("auto", info["preprocess"]):
    logging.warning("model.preprocess=%s but the %s weights of init_from expect %s",
                    config.model.preprocess, info["origin"], info["preprocess"])
  config.model.preprocess = models.resolve_preprocess(config.model.name, config.model.preprocess,
                                                      info and info["preprocess"])
  config.model.dtype = models.resolve_dtype(config.model.dtype)
  return config


def _check(config, mesh):
  """What is refused before any work: batches that do not split, a bad profile_steps."""
  sharding.check_batch(config.batch_size, mesh, "batch_size")
  if config.eval_batch_size:
    sharding.check_batch(config.eval_batch_size, mesh, "eval_batch_size")
  k = config.optim.accumulate_steps
  if k > 1 and config.batch_size % (k * mesh.size):
    raise cli.UserError(f"batch_size {config.batch_size} must split into optim.accumulate_steps {k} "
                        f"micro-batches of a multiple of {mesh.size} devices")
  schedule_lib.parse_steps(config.profile_steps)


def _finished(workdir, step):
  """A note and the result of a run that ended before (its finished.json), or None."""
  path = os.path.join(workdir, "finished.json")
  if not os.path.exists(path):
    return None
  done = runs.read_json(path)
  if processes.is_main():
    print(f"{workdir}: this run finished at step {step} ({done['reason']}); nothing to do. "
          f"Held-out test: {json.dumps(done.get('test', {}))}", flush=True)
  return done


def train_and_evaluate(config, workdir, devices=None, *, evaluate_fn=None, preemption=None):
  """Trains (resuming if `workdir` has a checkpoint), evaluates, returns the final metrics.

  Args:
    config: a ConfigDict (see fakejax.defaults); not changed.
    workdir: output folder.
    devices: devices of the data mesh (default: all).
    evaluate_fn: model state -> validation metrics (default: score_records on the validation
      records).
    preemption: the stop request (default: processes.Preemption(), SIGTERM); any object with
      `reached(step)` and `close()`.

  Returns:
    dict with 'step', 'best' (validation) and 'test' (held-out) metrics; with 'preempted':
    True when SIGTERM stopped it (a checkpoint was written).
  """
  config = resolve(config)
  config_json = config.to_json_best_effort(indent=2)
  runs.check_same_run(workdir, config_json)
  mesh = sharding.make_mesh(devices)
  _check(config, mesh)
  data = open_data(config)
  best = schedule_lib.BestTracker(config.best_metric, schedule_lib.task_metrics(data.task.class_names))
  if processes.is_main():  # Only now: a run refused above leaves no folder behind.
    os.makedirs(workdir, exist_ok=True)
    runs.write_text(os.path.join(workdir, "config.json"), config_json)
    runs.write_json(os.path.join(workdir, "run.json"), data.run_info())

  strategy = strategies.for_config(config, config.total_steps or config.num_epochs * data.steps_per_epoch)
  ts = state_lib.TrainState(config, strategy, data.task.num_classes, mesh, data.steps_per_epoch)
  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  state, meta = restore_or_init(config, ts, ckpt, data.train_iter)
  if meta.get("stopped") or meta["step"] >= ts.total_steps or config.model.cached_features:
    done = _finished(workdir, meta["step"])
    if done:
      ckpt.close()
      return {"step": meta["step"], "best": meta.get("best"), "test": done.get("test"), "finished": True}
  folder = scoring.Folder(ts.model_def, ts.preprocess, config.model.dtype)  # One forward: val and test.
  validate = evaluate_fn or (lambda s: score_records(folder, s, mesh, config, data, data.val_split, indices=data.val_idx))
  ctx = loop.Context(config, workdir, mesh, data, ts, ckpt,
                     report.RunLog(workdir, enabled=processes.is_main(), resume_step=meta["step"]),
                     schedule_lib.BestTracker(best.metric, best.available, meta), state, meta, validate,
                     preemption or processes.Preemption(), folder)
  try:
    state, step, stop_reason = strategy.train(ctx)
  finally:
    ctx.preempt.close()
    ckpt.close()  # Waits for the saves in flight: an exception above still leaves them whole.
  if stop_reason and processes.is_main():
    logging.info(stop_reason)
    print(stop_reason, flush=True)
  try:
    if stop_reason == loop.SIGTERM_REASON:
      return {"step": step, "preempted": True}
    return finalize(ctx, step, stop_reason)
  finally:
    ctx.log.close()
