"""Measurements in priority order under a deadline, each row on disk the moment it exists.

The GPU check (fakejax.gpu_check) and its PyTorch peer (scripts/torch_peer.py) run on a lent
machine whose command is killed at a fixed limit, so:
- tasks run in the order given, the most important first, and a task is not started when less
  time is left than it is expected to need (`Task.needs_s`): it gets a 'skipped' row instead;
- every row is appended to a JSON-lines file and flushed to disk before `Rows.write` returns: a
  kill loses the task in flight, never a finished one;
- a task's exception becomes its 'error' row, and the next task runs;
- out of device memory, a task runs again at half its batch (down to `Task.min_batch`).

Nothing here imports JAX or PyTorch: both sides use it.
"""

import dataclasses
import json
import os
import time
from typing import Callable

# What an out-of-memory error says: XLA's RESOURCE_EXHAUSTED, PyTorch's OutOfMemoryError.
OOM_MARKERS = ("resource_exhausted", "out of memory", "outofmemory")


def is_oom(error):
  """Whether `error` is a device running out of memory."""
  text = f"{type(error).__name__}: {error}".lower()
  return any(m in text for m in OOM_MARKERS)


def one_line(error, limit=400):
  """`error` as one line: the type and the first line of its message (XLA's run to pages)."""
  first = (str(error).strip().splitlines() or [""])[0]
  return f"{type(error).__name__}: {first}"[:limit]


class Rows:
  """Appends rows (dicts) to a JSON-lines file; `common` keys are added to every row."""

  def __init__(self, path, common=None):
    self.path, self.common = path, dict(common or {})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def write(self, row):
    """Appends `row` and returns once it is on disk (flushed and fsynced)."""
    with open(self.path, "a") as f:
      f.write(json.dumps({**self.common, **row}, default=str) + "\n")
      f.flush()
      os.fsync(f.fileno())


def read_rows(path):
  """The rows of a JSON-lines file (a line cut by a kill is left out)."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return rows


@dataclasses.dataclass
class Task:
  """One measurement.

  Attributes:
    name: the rows' 'task'.
    fn: batch -> list of rows (dicts); called with no argument when `batch` is 0.
    batch: the batch to try first (0: the task has none, and is not retried on OOM).
    min_batch: the smallest batch an out-of-memory retry goes down to.
    needs_s: the time it is expected to take at most; not started with less left.
  """
  name: str
  fn: Callable
  batch: int = 0
  min_batch: int = 1
  needs_s: float = 0.0


def run(tasks, deadline, rows, clock=time.time, log=print):
  """Runs `tasks` in order until `deadline` (a `clock()` reading); every outcome is a row.

  Rows carry 'task' and 'status': 'ok' (the task's own keys, and 'task_s'), 'oom' (the batch
  halved), 'error' (one line) or 'skipped' (the reason).

  Returns:
    the number of tasks that finished 'ok'.
  """
  done = 0
  for task in tasks:
    batch = task.batch
    while True:
      left = deadline - clock()
      if left < task.needs_s:
        rows.write({"task": task.name, "status": "skipped",
                    "reason": f"deadline: {left:.0f} s left, it needs up to {task.needs_s:.0f} s"})
        break
      log(f"[{task.name}] batch {batch or '-'}, {left:.0f} s left")
      start = clock()
      try:
        out = task.fn(batch) if task.batch else task.fn()
      except Exception as e:  # pylint: disable=broad-except  (recorded; the next task runs)
        if task.batch and is_oom(e) and batch // 2 >= task.min_batch:
          rows.write({"task": task.name, "status": "oom", "batch": batch, "error": one_line(e)})
          batch //= 2
          continue
        rows.write({"task": task.name, "status": "error", "batch": batch, "error": one_line(e)})
        log(f"[{task.name}] {one_line(e)}")
        break
      for row in out:
        rows.write({"task": task.name, "status": "ok", **row, "task_s": round(clock() - start, 2)})
      done += 1
      break
  return done
