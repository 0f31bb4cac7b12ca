"""The training loop's step-only decisions (fakejax.loop), each on its own, without a model."""

import math
import signal

import pytest

from fakejax.training import schedule
from fakejax import processes


def test_itstime_and_schedule():
  s = schedule.Schedule(total_steps=10, log_every=3, eval_every=4, checkpoint_every=5)
  assert [t for t in range(1, 11) if s.log(t)] == [3, 6, 9]
  assert [t for t in range(1, 11) if s.eval(t)] == [4, 8, 10]  # And at the last step.
  assert [t for t in range(1, 11) if s.checkpoint(t)] == [5, 10]  # (10 also evaluates: saved once.)
  assert not any(schedule.itstime(t, 0, 10, last=False) for t in range(1, 11))


def test_minutes_become_a_step_interval_once_and_a_resume_keeps_it():
  """0.5 minutes at 3 s a step = 10 steps, decided after CALIBRATION_STEPS steps timed from
  the first step seen (which compiled, and is left out)."""
  s = schedule.Schedule(total_steps=1000, log_every=50, eval_every=500, checkpoint_minutes=0.5)
  clock = {1: 100.0}  # Step 1 ended at t=100 s after a long compile; then 3 s a step.
  decided = []
  for step in range(1, 40):
    now = clock.get(step, 100.0 + 3.0 * (step - 1))
    got = s.calibrate(step, now)
    if got is not None:
      decided.append((step, got))
  assert decided == [(1 + schedule.CALIBRATION_STEPS, 10)]
  assert [t for t in range(1, 41) if s.checkpoint(t)] == [10, 20, 30, 40]
  # A resumed run gets the stored interval and never re-times (its clock could differ).
  resumed = schedule.Schedule(1000, 50, 500, checkpoint_minutes=0.5, minutes_interval=10)
  assert all(resumed.calibrate(t, 1e9 * t) is None for t in range(1, 50))
  assert resumed.checkpoint(20) and not resumed.checkpoint(25)
  assert schedule.minutes_to_steps(0.001, 60.0) == 1


def test_task_metrics_follow_the_classes():
  binary = schedule.task_metrics(("real", "fake"))
  assert {"accuracy", "ap", "auc", "loss", "real_acc", "fake_acc", "eer"} <= set(binary)
  assert "top1" not in binary
  attribution = schedule.task_metrics(("real", "gan_a", "gan_b"))
  assert "top1" in attribution and "accuracy" in attribution  # Real vs any generator too.
  no_real = schedule.task_metrics(("gan_a", "gan_b", "gan_c"))
  assert "top1" in no_real and "accuracy" not in no_real


def test_best_tracker():
  with pytest.raises(schedule.TrainingError, match="best_metric 'top1' is not a metric of this task; it reports: accuracy"):
    schedule.BestTracker("top1", ("accuracy", "loss"))
  hi = schedule.BestTracker("accuracy", ("accuracy", "loss"))
  assert [hi.update(s, {"accuracy": a}) for s, a in ((1, 0.5), (2, 0.7), (3, 0.6), (4, 0.7))] == [True, True, False, False]
  assert (hi.best, hi.best_step, hi.bad_evals) == (0.7, 2, 2)
  lo = schedule.BestTracker("loss", ("accuracy", "loss"))
  assert [lo.update(s, {"loss": v}) for s, v in ((1, 0.9), (2, 0.4), (3, 0.5))] == [True, True, False]
  assert lo.best == 0.4
  with pytest.raises(schedule.TrainingError, match="Validation loss is nan at step 4"):
    lo.update(4, {"loss": math.nan})
  again = schedule.BestTracker("loss", ("accuracy", "loss"), lo.meta())  # Resumed from a checkpoint.
  assert (again.best, again.best_step, again.bad_evals) == (0.4, 2, 1)


def test_preemption_puts_back_the_previous_sigterm_handler():
  def mine(signum, frame):
    del signum, frame
  before = signal.signal(signal.SIGTERM, mine)
  try:
    p = processes.Preemption()
    assert signal.getsignal(signal.SIGTERM) == p._handler  # pylint: disable=protected-access
    p.close()
    assert signal.getsignal(signal.SIGTERM) is mine
  finally:
    signal.signal(signal.SIGTERM, before)


def test_broadcast_from_main_on_one_process():
  assert processes.broadcast_from_main(7) == 7
