"""The training loop's decisions, each a function of the step that every process computes alike.

big_vision's `itstime` spirit: when to log, evaluate and checkpoint depends on the step only.
A wall-clock rule (checkpoint_every_minutes) is turned into a step interval once, by process
0, shared with every process, and stored with the checkpoint so a resumed run keeps it; two
hosts can then never decide differently and block each other inside orbax's collective save.
"""

import math

import numpy as np

from fakejax import cli
from fakejax import metrics as metrics_lib
from fakejax import runs
from fakejax import processes

TrainingError = runs.TrainingError

# Validation metrics where lower is better; every other one keeps its highest value.
LOWER_IS_BETTER = ("loss", "eer")
# Steps timed (after the first, which compiles) to turn minutes into a step interval.
CALIBRATION_STEPS = 10


def itstime(step, every, total, last=True):
  """True at the steps that are multiples of `every` (never when every <= 0), and at the last."""
  return (every > 0 and step % every == 0) or (last and step == total)


def parse_steps(spec):
  """'A:B' -> (A, B), the steps profiled (after step A runs through step B); '' -> None."""
  if not spec:
    return None
  try:
    first, last = (int(v) for v in spec.split(":"))
  except ValueError:
    raise cli.UserError(f"profile_steps {spec!r}: expected FIRST:LAST, e.g. 10:15") from None
  if not 0 <= first < last:
    raise cli.UserError(f"profile_steps {spec!r}: expected 0 <= FIRST < LAST")
  return first, last


class Schedule:
  """When the loop logs, evaluates and checkpoints: functions of the step alone.

  Args:
    total_steps: the run's last step.
    log_every: steps between training-metric logs.
    eval_every: steps between validations (also at the last step).
    checkpoint_every: steps between checkpoints besides those after each validation (0: none).
    checkpoint_minutes: checkpoint_every_minutes, turned into steps by `calibrate` (0: off).
    minutes_interval: the interval decided before (a resumed run's meta), or None.
  """

  def __init__(self, total_steps, log_every, eval_every, checkpoint_every=0, checkpoint_minutes=0.0,
               minutes_interval=None):
    self.total, self.log_every, self.eval_every = total_steps, log_every, eval_every
    self.checkpoint_every = checkpoint_every
    self.minutes = checkpoint_minutes
    self.minutes_interval = minutes_interval
    self._calibrate_from = None  # (step, time) the timing of the minutes rule starts at.

  def log(self, step):
    return itstime(step, self.log_every, self.total, last=False)

  def eval(self, step):
    return itstime(step, self.eval_every, self.total)

  def checkpoint(self, step):
    """A checkpoint at `step` besides the one after each validation."""
    return (itstime(step, self.checkpoint_every, self.total, last=False)
            or bool(self.minutes_interval and itstime(step, self.minutes_interval, self.total, last=False)))

  def calibrate(self, step, now):
    """Call after every step with a clock reading `now` (seconds; only process 0's is used).

    The minutes rule is timed from the end of the first step seen (it compiled) over
    CALIBRATION_STEPS steps; at that step, the same on every process, process 0's interval
    round(60 * minutes / seconds per step) is broadcast to all. Returns the interval when it
    was decided at this step, else None.
    """
    if not self.minutes or self.minutes_interval is not None:
      return None
    if self._calibrate_from is None:
      self._calibrate_from = (step, now)
      return None
    start, t0 = self._calibrate_from
    if step - start < CALIBRATION_STEPS:
      return None
    per_step = max(now - t0, 1e-9) / (step - start)
    interval = minutes_to_steps(self.minutes, per_step)
    self.minutes_interval = int(processes.broadcast_from_main(interval))
    return self.minutes_interval


def minutes_to_steps(minutes, seconds_per_step):
  """The step interval that takes about `minutes` at `seconds_per_step` (at least 1)."""
  return max(1, int(round(60.0 * minutes / seconds_per_step)))


def task_metrics(class_names):
  """The validation metrics a task produces (the evaluator's set_metrics keys), found by
  summarising one image per class before training: what best_metric may name."""
  k = len(class_names)
  row = metrics_lib.summarize(np.arange(k), np.eye(k), tuple(class_names))
  return tuple(name for name, v in row.items() if isinstance(v, (int, float)) and name not in ("n_real", "n_fake"))


class BestTracker:
  """The best validation metric so far, and how many evaluations since it improved.

  Args:
    metric: config.best_metric.
    available: the metrics the task produces (task_metrics); any other name is refused now,
      before the first step.
    meta: a resumed run's checkpoint meta (best, best_step, bad_evals, best_val), or None.
  """

  def __init__(self, metric, available, meta=None):
    if metric not in available:
      raise TrainingError(f"best_metric {metric!r} is not a metric of this task; it reports: "
                          f"{', '.join(available)}")
    self.metric, self.lower_better, self.available = metric, metric in LOWER_IS_BETTER, tuple(available)
    meta = meta or {}
    self.best, self.best_step = meta.get("best"), meta.get("best_step")
    self.bad_evals, self.best_val = meta.get("bad_evals", 0), meta.get("best_val")

  def update(self, step, val):
    """Records validation `val` (a metrics dict) of `step`; True when it is the new best.

    Raises:
      TrainingError: when the metric is NaN (a broken model, not a frozen best).
    """
    score = val[self.metric]
    if not math.isfinite(score):
      raise TrainingError(f"Validation {self.metric} is {score} at step {step}: the model is broken "
                          "(no checkpoint of this step is written). Lower optim.lr or check the data.")
    better = self.best is None or (score < self.best if self.lower_better else score > self.best)
    if better:
      self.best, self.best_step, self.bad_evals, self.best_val = score, step, 0, dict(val)
    else:
      self.bad_evals += 1
    return better

  def meta(self):
    """What a checkpoint stores of it."""
    return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals,
            "best_val": self.best_val}
