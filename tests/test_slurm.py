"""Which GPUs a SLURM task drives (processes.slurm_local_device_ids), from fake SLURM environments:
no SLURM job runs."""

import pytest

from fakejax import processes

JOB = {"SLURM_JOB_ID": "42", "SLURM_NODEID": "0", "SLURM_LOCALID": "0"}


def test_one_task_per_node_drives_every_gpu_of_the_node():
  env = dict(JOB, SLURM_NTASKS="2", SLURM_TASKS_PER_NODE="1(x2)", SLURM_GPUS_ON_NODE="8")
  assert processes.slurm_local_device_ids(env) == list(range(8))
  env["CUDA_VISIBLE_DEVICES"] = "0,1,2,3"
  assert processes.slurm_local_device_ids(env) == [0, 1, 2, 3]


def test_one_task_per_gpu_drives_its_own():
  env = dict(JOB, SLURM_NTASKS="16", SLURM_TASKS_PER_NODE="8(x2)", SLURM_GPUS_ON_NODE="8",
             SLURM_NODEID="1", SLURM_LOCALID="5")
  assert processes.slurm_local_device_ids(env) == [5]
  # SLURM bound one GPU to the task (--gpus-per-task=1): it is device 0 of the task.
  assert processes.slurm_local_device_ids(dict(env, CUDA_VISIBLE_DEVICES="5")) == [0]


def test_two_tasks_share_a_node_of_eight_and_uneven_nodes():
  env = dict(JOB, SLURM_NTASKS="5", SLURM_TASKS_PER_NODE="2(x2),1", SLURM_GPUS_ON_NODE="8", SLURM_LOCALID="1")
  assert processes.slurm_local_device_ids(env) == [4, 5, 6, 7]
  assert processes.slurm_local_device_ids(dict(env, SLURM_NODEID="2", SLURM_LOCALID="0")) == list(range(8))
  with pytest.raises(ValueError, match="3 tasks"):
    processes.slurm_local_device_ids(dict(env, SLURM_TASKS_PER_NODE="3", SLURM_NODEID="0"))


def test_outside_slurm_or_without_gpus_jax_decides():
  assert processes.slurm_local_device_ids({}) is None
  assert processes.slurm_local_device_ids(dict(JOB, SLURM_NTASKS="1", SLURM_GPUS_ON_NODE="8")) is None
  assert processes.slurm_local_device_ids(dict(JOB, SLURM_NTASKS="4", SLURM_TASKS_PER_NODE="4")) is None
