"""Runs a fakejax command that sends itself a signal at a given step: a stop or a kill at a
step the test chose, not whenever a polling test happens to see a file.

  python -m tests.signal_at STEP SIGNAL MODULE [ARGS...]

e.g. `python -m tests.signal_at 6 SIGTERM fakejax.train --config ...`. The signal is real and
goes through the handlers the command installed (processes.Preemption's, or jax.distributed's
in a multi-process run); only its timing is fixed: it is raised in the training loop right
after step STEP, before the loop asks whether a stop was requested.
"""

import runpy
import signal
import sys

from fakejax import processes


def main():
  step, sig, module = int(sys.argv[1]), signal.Signals[sys.argv[2]], sys.argv[3]
  reached = processes.Preemption.reached

  def signal_at(self, s):
    if s == step:
      signal.raise_signal(sig)  # Python handlers run before this returns.
    return reached(self, s)

  processes.Preemption.reached = signal_at
  sys.argv = [module] + sys.argv[4:]
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
