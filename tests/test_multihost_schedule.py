"""Two processes on loopback agree on checkpoint_every_minutes: process 0's step interval."""

import json
import os

import pytest
from tests.conftest import checkpoint_steps
from tests.conftest import finish_processes
from tests.conftest import multihost_flags
from tests.conftest import start_processes


@pytest.mark.slow
def test_two_processes_checkpoint_by_minutes_at_the_same_steps(tiny_synthetic, data_root, tmp_path):
  """A minutes rule becomes one step interval, decided by process 0 after the timed steps and
  broadcast: both processes then save (orbax's collective save) at the same steps, so the run
  ends instead of blocking, and the interval is stored for a resume."""
  del tiny_synthetic
  run = str(tmp_path / "minutes")
  total = 1 + 10 + 4  # The first step (compiles), CALIBRATION_STEPS timed, then 4 more.
  args = ["fakejax.train"] + [a for a in multihost_flags(data_root, run)
                              if not a.startswith(("--config.total_steps", "--config.checkpoint_every_steps",
                                                   "--config.eval_every_steps"))]
  args += [f"--config.total_steps={total}", "--config.checkpoint_every_steps=0",
           "--config.eval_every_steps=1000", "--config.checkpoint_every_minutes=1e-6"]
  codes, outs = finish_processes(start_processes(args, 2, 2))
  assert codes == [0, 0], [o[-3000:] for o in outs]
  # Decided at step 11 (interval 1: a microsecond is less than any step): saved from then on.
  assert checkpoint_steps(run) == [11, 12, 13, 14, 15]
  with open(os.path.join(run, "checkpoints", "15", "meta", "metadata")) as f:
    meta = json.load(f)
  assert meta["checkpoint_interval_steps"] == 1
