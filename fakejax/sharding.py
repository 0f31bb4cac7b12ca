"""Devices: the mesh, where arrays live, and host <-> device moves.

One mesh axis, 'data': batches are split over it, parameters are replicated. Every process
feeds its local part of the batch; jax assembles the global array. The processes themselves
(jax.distributed, who writes, barriers, preemption) are in processes.py.
"""

import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from fakejax import cli


def make_mesh(devices=None):
  """A 1-D 'data' mesh over `devices` (default: every device of every process, process by
  process, so a process's rows of a global batch are one contiguous block)."""
  devices = sorted(devices or jax.devices(), key=lambda d: (d.process_index, d.id))
  return jax.make_mesh((len(devices),), ("data",), (jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh):
  return NamedSharding(mesh, P())


def data_sharded(mesh):
  return NamedSharding(mesh, P("data"))


def check_batch(batch_size, mesh, name="batch_size"):
  """A global batch must split evenly over the devices."""
  if batch_size % mesh.size:
    raise cli.UserError(f"{name} {batch_size} is not divisible by the number of devices "
                     f"{mesh.size}; use a multiple of {mesh.size}")


def to_global(mesh, batch):
  """Process-local numpy batch -> global arrays sharded over 'data'."""
  s = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(s, x), batch)


def to_host(tree):
  """Global arrays -> numpy on every host (all-gathered across processes)."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)
