r"""Trains a fake-image detector, data-parallel over every device of every process.

  python -m fakejax.train --config configs/xception.py[:variant] [--workdir runs/NAME] \
      [--config.data.dir=PREPARED_DATASET] [--config.key=value ...]

Rerunning the same command resumes from the last checkpoint in the workdir (a changed config
is refused, naming the keys); a finished run reports and exits. Exit status: 0 finished,
75 (EX_TEMPFAIL) stopped by SIGTERM with a checkpoint written (requeue it), 1 error.

Several hosts: start one process per host (or per GPU) with jax.distributed's environment
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; SLURM and Open MPI are detected)
or --coordinator_address/--num_processes/--process_id; see docs/multihost.md. The run itself
is fakejax.training.train_and_evaluate.
"""

import sys

from absl import flags
from ml_collections import config_flags

from fakejax import cli
from fakejax import runs
from fakejax import processes
from fakejax import training

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped with a checkpoint written; rerun to resume.


def main(argv):
  del argv
  f = flags.FLAGS
  processes.initialize(f.coordinator_address, f.num_processes, f.process_id)
  config_file = cli.config_arg(sys.argv) or config_flags.get_config_filename(f["config"])
  workdir = f.workdir or runs.default_workdir(config_file)
  if training.train_and_evaluate(f.config, workdir).get("preempted"):
    sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output folder (default: runs/<config name>[_<variant>]).")
  cli.define_distributed_flags()
  flags.mark_flag_as_required("config")
  cli.run(main)
