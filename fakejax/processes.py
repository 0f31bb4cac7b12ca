"""The processes of a run (jax.distributed, one per host or GPU) and what they must agree on.

`initialize` starts the runtime (flags, JAX_* variables, SLURM or Open MPI), `is_main` says who
writes files, `barrier` waits for every process, `Preemption` makes all of them stop at the same
step, `broadcast_from_main` shares process 0's number. The mesh and where arrays live are in
sharding.py; the checkpoint module holds the rest of the multi-host logic.
"""

import os
import signal

import jax
from jax.experimental import multihost_utils
import numpy as np

from fakejax import checkpoint
from fakejax import cli
from fakejax.sharding import data_sharded
from fakejax.sharding import make_mesh
from fakejax.sharding import replicated

# Environment of a cluster launch that jax.distributed can read on its own (jax's cluster
# detection: SLURM, Open MPI, and JAX_COORDINATOR_ADDRESS with the two below).
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")


def initialize(coordinator_address=None, num_processes=None, process_id=None, heartbeat_s=None):
  """Starts jax.distributed when asked, by flags or by the environment; else does nothing.

  Asked means: a coordinator address given, JAX_COORDINATOR_ADDRESS set (with
  JAX_NUM_PROCESSES and JAX_PROCESS_ID), or a SLURM / Open MPI job of more than one task
  (jax detects those itself). Must run before anything touches a device.

  Returns:
    True when the distributed runtime was started.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  num_processes = num_processes or (int(env["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in env else None)
  process_id = process_id if process_id is not None else (
      int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None)
  tasks = int(env.get("SLURM_NTASKS", env.get("OMPI_COMM_WORLD_SIZE", "1")))
  if not coordinator_address and tasks <= 1:
    return False
  if jax.distributed.is_initialized():
    return True
  # CPU processes need a collectives backend; GPUs use NCCL on their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  heartbeat_s = heartbeat_s or int(env.get("FAKEJAX_HEARTBEAT_S", "100"))
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             local_device_ids=slurm_local_device_ids(env),
                             heartbeat_timeout_seconds=heartbeat_s)
  # Every process must compile the same program, down to its metadata: jax 0.12 keys a
  # program's collectives by its fingerprint, which includes each op's source location, so
  # processes whose call stacks differ (one started through a wrapper, or installed in another
  # folder) wait for each other's collectives forever. Keep only the innermost frame's file name.
  jax.config.update("jax_include_full_tracebacks_in_locations", False)
  jax.config.update("jax_hlo_source_file_canonicalization_regex", r".*/")
  barrier("initialize")
  if jax.default_backend() == "cpu":
    # A multi-process CPU program loaded from the persistent compilation cache can deadlock in
    # its first collective (jax 0.12.1: two processes hung in this module's sum below, loading
    # entries another multi-process run had written; compiled afresh they finish in seconds).
    # CPU processes of one job are tests and rehearsals: they compile.
    jax.config.update("jax_enable_compilation_cache", False)
  # CPU (gloo) collectives build their cross-process context on the first collective over a
  # set of devices, and give up when a peer is more than 30 s late (a fixed XLA timeout).
  # Build it now, while the processes are aligned: later collectives wait for late peers
  # (one process plotting, another compiling) without a limit.
  mesh = make_mesh()
  ones = jax.make_array_from_process_local_data(data_sharded(mesh), np.ones(jax.local_device_count()))
  jax.jit(jax.numpy.sum, out_shardings=replicated(mesh))(ones).block_until_ready()
  return True


def _tasks_on_this_node(env):
  """SLURM's task count on this node, from SLURM_TASKS_PER_NODE ('8', '2(x3),1') and SLURM_NODEID."""
  spec = env.get("SLURM_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE")
  if not spec:
    return None
  per_node = []
  for part in spec.split(","):
    count, _, rep = part.partition("(x")
    per_node += [int(count)] * (int(rep.rstrip(")")) if rep else 1)
  node = int(env.get("SLURM_NODEID", "0"))
  return per_node[min(node, len(per_node) - 1)]


def local_processes(env=None):
  """How many processes of this job share this host (their cores are shared out among them):
  SLURM's task count on this node, else FAKEJAX_LOCAL_PROCESSES, else 1."""
  env = os.environ if env is None else env
  return _tasks_on_this_node(env) or int(env.get("FAKEJAX_LOCAL_PROCESSES", "1"))


def slurm_local_device_ids(env):
  """The GPUs of this node that this SLURM task drives, or None (not SLURM, or no GPU count).

  jax, left to itself under SLURM, gives each task the one GPU [SLURM_LOCALID]: with one task
  per node (`--ntasks-per-node=1 --gpus-per-node=8`) a task would drive one GPU of eight. Here
  the node's GPUs are shared out among its tasks: all of them to a single task, one each with
  one task per GPU, and [0] when SLURM already bound one GPU to the task (CUDA_VISIBLE_DEVICES
  of one device).

  Args:
    env: the environment (os.environ).

  Raises:
    cli.UserError: when the node's GPUs do not divide among its tasks.
  """
  if "SLURM_JOB_ID" not in env or int(env.get("SLURM_NTASKS", "1")) <= 1:
    return None
  visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
  gpus = len(visible) or int(env.get("SLURM_GPUS_ON_NODE", "0") or 0)
  tasks = _tasks_on_this_node(env)
  if not gpus or not tasks:
    return None
  if gpus == 1:
    return [0]
  if gpus % tasks:
    raise cli.UserError(f"SLURM gives this node {gpus} GPUs and {tasks} tasks: use one task per node "
                        "or one per GPU (or a divisor)")
  per_task, local = gpus // tasks, int(env.get("SLURM_LOCALID", "0"))
  return list(range(local * per_task, (local + 1) * per_task))


def is_main():
  """Process 0 writes run files, reports and progress bars; the others only compute."""
  return jax.process_index() == 0


_barriers = {}


def barrier(name, timeout_s=6 * 3600):
  """All processes wait here until every one has arrived (no-op on one process).

  A barrier of jax.distributed's coordination service, not a device collective: it waits for
  as long as process 0 takes (e.g. to generate a dataset) and fails when a process dies (within
  the heartbeat timeout).
  """
  if jax.process_count() == 1:
    return
  _barriers[name] = _barriers.get(name, -1) + 1  # Each use of a name is a new barrier.
  checkpoint.wait_at_barrier(f"fakejax/{name}/{_barriers[name]}", timeout_s)


class Preemption:
  """A stop request (SIGTERM) that all processes act on at the same step.

  One process: a SIGTERM handler sets a flag. Several: jax.distributed's own preemption
  service catches SIGTERM on any process and `reached_preemption(step)` turns true on every
  process at the same step (a Python handler would hide the signal from it).
  """

  def __init__(self):
    self._requested = False
    self._previous = None
    if jax.process_count() == 1:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handler)
      except ValueError:  # Not the main thread (e.g. called from a test thread).
        pass

  def close(self):
    """Puts back the SIGTERM handler there was before (a process that trains several runs)."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _handler(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, step):
    """True at the step where every process stops (call it after every step, on every process)."""
    if jax.process_count() == 1:
      return self._requested
    self._requested = self._requested or multihost_utils.reached_preemption_sync_point(step)
    return self._requested


def broadcast_from_main(value):
  """Process 0's `value` (a number) on every process: a collective, called by all at one step."""
  if jax.process_count() == 1:
    return value
  return multihost_utils.broadcast_one_to_all(np.asarray(value)).item()
