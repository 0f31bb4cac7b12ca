"""Several processes on loopback (jax.distributed, gloo collectives): one run, one result.

Two processes of two CPU devices each must train to the parameters and BatchNorm statistics
of one process of four devices, through a SIGTERM to one process (both stop at the same
checkpointed step, exit 75), a SIGKILL of one process (the other exits non-zero within the
runtime's heartbeat timeout) and two resumptions; evaluating with two processes must give the
one-process report exactly.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import MULTIHOST_STEPS
from tests.conftest import ROOT
from tests.conftest import checkpoint_steps
from tests.conftest import finish_processes
from tests.conftest import free_port
from tests.conftest import multihost_flags
from tests.conftest import start_processes
from tests.conftest import subprocess_env
from fakejax import checkpoint
from fakejax import train

def _model(workdir):
  return checkpoint.load_run_weights(workdir, "latest")


@pytest.mark.slow
def test_two_processes_train_and_evaluate_as_one(tiny_synthetic, data_root, tmp_path):
  del tiny_synthetic
  ref = str(tmp_path / "ref")
  codes, outs = finish_processes(start_processes(["fakejax.train"] + multihost_flags(data_root, ref), 1, 4))
  assert codes == [0], outs[0][-3000:]

  # Two processes, two devices each; process 0 alone generates the synthetic benchmark in a
  # fresh cache while process 1 waits. SIGTERM to process 1 after its step 3: both processes
  # agree on a stop step (jax.distributed's preemption sync point), checkpoint it and exit 75.
  run, fresh = str(tmp_path / "mh"), str(tmp_path / "fresh_cache")
  codes, outs = finish_processes(start_processes(["fakejax.train"] + multihost_flags(fresh, run), 2, 2, signal_at=(3, "SIGTERM")))
  assert codes == [train.EXIT_PREEMPTED] * 2, [o[-3000:] for o in outs]
  stopped = checkpoint_steps(run)[-1]
  assert 3 <= stopped < MULTIHOST_STEPS and "SIGTERM: checkpoint written" in outs[0]
  assert len(os.listdir(fresh)) == 1  # One synthetic dataset, built once.
  rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
  assert max(r["step"] for r in rows) == stopped  # One process logged, up to the stop.

  # Resume; process 1 SIGKILLed after step stopped + 2: process 0 must fail (non-zero) instead of
  # waiting forever on its peer (finish_processes's deadline fails the test).
  codes, _ = finish_processes(start_processes(["fakejax.train"] + multihost_flags(fresh, run), 2, 2,
                            signal_at=(stopped + 2, "SIGKILL")))
  assert codes[1] == -signal.SIGKILL and codes[0] != 0

  # Resume to the end: the same model as one process of four devices.
  codes, outs = finish_processes(start_processes(["fakejax.train"] + multihost_flags(fresh, run), 2, 2))
  assert codes == [0, 0], [o[-3000:] for o in outs]
  want, got = _model(ref), _model(run)
  assert set(want) == set(got) and any(k.endswith("/mean") for k in want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-5, err_msg=k)

  # Evaluation: two processes give exactly the one-process report.
  reports = []
  for nproc, devices in ((1, 4), (2, 2)):
    out = str(tmp_path / f"eval{nproc}")
    codes, outs = finish_processes(start_processes(["fakejax.evaluate", "--workdir", run, "--out", out], nproc, devices))
    assert set(codes) == {0}, [o[-3000:] for o in outs]
    reports.append(json.load(open(os.path.join(out, "report.json")))["rows"])
  assert reports[0] == reports[1] and reports[0][0]["n_real"] + reports[0][0]["n_fake"] == 18


_LATE_PEERS = """
import sys, time
import numpy as np
import jax
from fakejax import processes
from fakejax import sharding
late = float(sys.argv[1])
processes.initialize()
if jax.process_index() == 0:
  time.sleep(late)  # Process 0 alone at work (e.g. generating the synthetic benchmark).
processes.barrier("work")
if jax.process_index() == 1:
  time.sleep(late)  # Process 1 late at the first collective (e.g. compiling for longer).
mesh = sharding.make_mesh()
x = np.full((2, 3), jax.process_index() + 1.0, np.float32)


def total_of(a):
  return jax.jit(lambda a: a.sum(0), out_shardings=sharding.replicated(mesh))(
      sharding.to_global(mesh, a))


def deeper(a):  # Process 1 traces the program through a call stack process 0 does not have.
  return total_of(a)


total = deeper(x) if jax.process_index() == 1 else total_of(x)
print("sum", sharding.to_host(total).tolist(), flush=True)
print("compilation cache", jax.config.jax_enable_compilation_cache, flush=True)
"""


@pytest.mark.parametrize("late", [
    pytest.param(0, id="on-time"),
    pytest.param(33, id="late-by-33s", marks=pytest.mark.slow)])
def test_a_late_peer_with_another_call_stack_is_waited_for(late):
  """A process later than gloo's fixed 30 s context timeout, at a barrier and at the first
  collective of a program, is waited for, and processes that trace a program through different
  call stacks run it together (jax 0.12 keys collectives by the program's fingerprint, source
  locations included: processes.initialize keeps them the same): both finish with the right sum.
  They do not load multi-process CPU programs from the persistent compilation cache."""
  port, procs = free_port(), []
  for i in range(2):
    env = subprocess_env(2, PYTHONUNBUFFERED="1", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                         JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen([sys.executable, "-c", _LATE_PEERS, str(late)], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True))
  codes, outs = finish_processes(procs, timeout=200 if late else 90)
  assert codes == [0, 0], [o[-2000:] for o in outs]
  assert all("sum [6.0, 6.0, 6.0]" in o and "compilation cache False" in o for o in outs), \
      [o[-2000:] for o in outs]
