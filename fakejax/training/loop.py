"""The one training loop: for step: train, log, evaluate, checkpoint, preempt.

Every decision in it is a function of the step (training.schedule): every process of a
multi-host run takes the same ones. What trains at a step, with which loss, is the strategy's
(training.strategies); the loop has no branch on the model.
"""

import ctypes.util
import dataclasses
import importlib.util
import os
import time
from typing import Any, Callable

from absl import logging
import jax
import numpy as np
import tqdm

from fakejax import processes
from fakejax import sharding
from fakejax.training import schedule as schedule_lib
from fakejax.training import step as step_lib

TrainingError = schedule_lib.TrainingError
SIGTERM_REASON = "SIGTERM: checkpoint written"


@dataclasses.dataclass
class Context:
  """What the phases of a run share (training.trainer builds it)."""
  config: Any  # The run's config.
  workdir: str
  mesh: Any
  data: Any  # trainer.Data: dataset, task, validation records, train iterator.
  ts: Any  # state.TrainState.
  ckpt: Any  # checkpoint.Checkpointer.
  log: Any  # report.RunLog.
  best: schedule_lib.BestTracker
  state: Any  # The train state (nnx.State), restored or new.
  meta: dict  # The restored checkpoint's meta ({'step': 0} when new).
  evaluate_fn: Callable  # Model state -> validation metrics.
  preempt: Any  # The stop request: reached(step), close().
  folder: Any = None  # scoring.Folder: the inference forward of validation and the held-out test.


class TrainLog:
  """Device metrics of the steps since the last log, fetched together; NaN is an error."""

  def __init__(self, log, bar, images_per_step, step):
    self.log, self.bar, self.images_per_step = log, bar, images_per_step
    self.pending, self.t_last, self.s_last = [], time.perf_counter(), step
    self.data_s = 0.0  # Time waiting for the input pipeline since the last log.

  def add(self, step, metrics, data_s):
    self.pending.append((step, metrics))
    self.data_s += data_s

  def flush(self, saved_step):
    if not self.pending:
      return
    rows = [{"step": s, **{k: float(v) for k, v in m.items()}} for s, m in jax.device_get(self.pending)]
    self.pending.clear()
    for r in rows:
      if not np.isfinite(r["loss"]):
        raise TrainingError(f"Loss is {r['loss']} at step {r['step']}: training stopped, no "
                            f"checkpoint written after step {saved_step}. Lower optim.lr or "
                            "check the data.")
    now = time.perf_counter()
    dt, n = now - self.t_last, rows[-1]["step"] - self.s_last
    self.t_last, self.s_last = now, rows[-1]["step"]
    speed = {"step_time": dt / max(n, 1), "data_wait_time": self.data_s / max(n, 1),
             "img_per_s": n * self.images_per_step / max(dt, 1e-9)}
    self.data_s = 0.0
    rows[-1].update(speed)
    self.log.log(rows, "train")
    self.bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", step_s=f"{speed['step_time']:.3f}",
                         img_s=f"{speed['img_per_s']:.0f}")


class Saver:
  """Checkpoints the loop's state: the metrics first (a NaN state is never saved), the best model
  after the checkpoint that records it (trainer.restore_or_init repairs a crash between the two)."""

  def __init__(self, ctx, schedule, train_log, step):
    self.ctx, self.schedule, self.train_log, self.saved_step = ctx, schedule, train_log, step

  def __call__(self, step, state):
    ctx = self.ctx
    self.train_log.flush(self.saved_step)
    ctx.meta.update(step=step, checkpoint_interval_steps=self.schedule.minutes_interval, **ctx.best.meta())
    ctx.ckpt.save(step, state, ctx.data.train_iter, dict(ctx.meta))
    if ctx.best.best_step == step:
      ctx.ckpt.save_best(step, state["model"], {"step": step, "val": ctx.best.best_val})
    self.saved_step = step


def has_cupti():
  """Whether CUPTI, which records GPU kernels in a profile, can load: the pip package or the library."""
  try:
    if importlib.util.find_spec("nvidia.cuda_cupti"):
      return True
  except ModuleNotFoundError:  # No nvidia.* package at all.
    pass
  return bool(ctypes.util.find_library("cupti"))


def start_trace(path):
  """jax.profiler's trace into `path`. On a GPU its kernels are recorded through CUPTI: when
  neither the pip package nor the system library is found, the trace would hold host events
  only, so say what to install (once, when the trace starts)."""
  if jax.default_backend() == "gpu" and not has_cupti():
    logging.warning("profile_steps: CUPTI not found, so the trace will hold no GPU kernels. Install it "
                    "(pip install nvidia-cuda-cupti-cu12, or -cu13 for CUDA 13) or put CUDA's "
                    "extras/CUPTI/lib64 on LD_LIBRARY_PATH.")
  jax.profiler.start_trace(path)


def _validate(ctx, step, stage, final_stage, bar):
  """Validates the model of `state`, logs it, tracks the best; returns the stop reason, if any."""
  val = ctx.evaluate_fn(ctx.state["model"])
  val = {"step": step, "epoch": step / ctx.data.steps_per_epoch,
         **{k: v for k, v in val.items() if not isinstance(v, list)}}
  ctx.log.log([val], "val")
  best = ctx.best
  if stage == final_stage:  # An earlier stage (DeepFD's D1) has no classifier worth keeping yet.
    best.update(step, val)
  if processes.is_main():
    bar.write(f"step {step} epoch {val['epoch']:.1f}: val {best.metric}={val[best.metric]:.4f} "
              + (f"(best {best.best:.4f} at step {best.best_step})" if best.best is not None
                 else f"(stage {stage})"))
  ctx.log.plot()
  patience = ctx.config.early_stop_patience
  if patience and best.bad_evals >= patience:
    return f"early stop: no improvement in {best.bad_evals} evaluations"
  return None


def run_steps(ctx, strategy):
  """Steps from ctx.meta['step'] to the end, an early stop or a stop request.

  Returns:
    (state, step, stop reason or None).
  """
  config, ts, data = ctx.config, ctx.ts, ctx.data
  step = ctx.meta["step"]
  schedule = schedule_lib.Schedule(ts.total_steps, config.log_every_steps,
                                   config.eval_every_steps or data.steps_per_epoch, config.checkpoint_every_steps,
                                   config.checkpoint_every_minutes, ctx.meta.get("checkpoint_interval_steps"))
  train_steps = {k: step_lib.make_train_step(ts, k) for k in ts.stage_steps}  # Each compiles on first use.
  bar = tqdm.tqdm(total=ts.total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                  disable=not processes.is_main())
  train_log = TrainLog(ctx.log, bar, data.images_per_step, step)
  save = Saver(ctx, schedule, train_log, step)
  stop_reason = ctx.meta.get("stopped")
  profile = schedule_lib.parse_steps(config.profile_steps)
  with jax.set_mesh(ctx.mesh):
    while step < ts.total_steps and not stop_reason:
      if profile and step == profile[0]:  # A decision on the step: every process traces the same steps.
        start_trace(os.path.join(ctx.workdir, "profile"))
      t0 = time.perf_counter()
      host = next(data.train_iter)
      batch = sharding.to_global(ctx.mesh, {"image": host["image"], "label": host["label"]})
      data_s = time.perf_counter() - t0
      stage = ts.stage_at(step)
      ctx.state, metrics = train_steps[stage](ctx.state, batch, config.seed)
      step += 1
      if profile and step == profile[1]:
        jax.block_until_ready(ctx.state)
        jax.profiler.stop_trace()
      train_log.add(step, metrics, data_s)
      bar.update()
      schedule.calibrate(step, time.perf_counter())
      if schedule.log(step):
        train_log.flush(save.saved_step)
      if schedule.eval(step):
        train_log.flush(save.saved_step)
        stop_reason = _validate(ctx, step, stage, strategy.final_stage, bar)
        if stop_reason:
          ctx.meta["stopped"] = stop_reason
        save(step, ctx.state)
      elif schedule.checkpoint(step):
        save(step, ctx.state)
      if ctx.preempt.reached(step):
        if save.saved_step != step:
          save(step, ctx.state)
        stop_reason = SIGTERM_REASON
        break
  bar.close()
  train_log.flush(save.saved_step)
  return ctx.state, step, stop_reason
