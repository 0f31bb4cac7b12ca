"""The GPU check's driver on the CPU (fakejax.deadline, fakejax.gpu_check): the deadline is
honoured, rows are on disk before a kill, an out-of-memory error halves the batch; its MFU
divides by the row's own dtype's peak; its fixed FLOPs are XLA's count; and the wheels that
travel to the device cover what fakejax imports that the device image lacks."""

import json
import os
import re
import subprocess
import sys
import time

from flax import nnx
import jax
import jax.numpy as jnp
import pytest

from fakejax import deadline
from fakejax import gpu_check
from fakejax import models
from scripts import gpu_wheels
from tests.conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeClock:
  """A clock that each task moves forward by its own duration."""

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _task(clock, name, duration, needs_s):
  def fn():
    clock.now += duration
    return [{"took": duration}]
  return deadline.Task(name, fn, needs_s=needs_s)


def test_a_task_is_not_started_with_less_time_left_than_it_needs(tmp_path):
  clock = FakeClock()
  rows = deadline.Rows(str(tmp_path / "rows.jsonl"))
  tasks = [_task(clock, "a", 40, 30), _task(clock, "b", 40, 70), _task(clock, "c", 10, 20)]
  assert deadline.run(tasks, 100.0, rows, clock=clock, log=lambda m: None) == 2
  got = {r["task"]: r for r in deadline.read_rows(rows.path)}
  assert got["a"]["status"] == "ok" and got["c"]["status"] == "ok"
  assert got["b"]["status"] == "skipped" and "60 s left" in got["b"]["reason"]
  assert clock.now == 50.0  # b never ran.


def test_out_of_memory_halves_the_batch_and_other_errors_are_rows(tmp_path):
  rows = deadline.Rows(str(tmp_path / "rows.jsonl"))
  tried = []

  def fits_at_8(batch):
    tried.append(batch)
    if batch > 8:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2.00GiB.\nmore")
    return [{"batch": batch, "images_per_s": 1.0}]

  def broken():
    raise ValueError("a bug\nwith a long story")

  never_fits = lambda batch: (_ for _ in ()).throw(RuntimeError("CUDA out of memory"))
  tasks = [deadline.Task("fits", fits_at_8, batch=32, min_batch=4), deadline.Task("bug", broken),
           deadline.Task("never", never_fits, batch=8, min_batch=4), deadline.Task("after", lambda: [{}])]
  deadline.run(tasks, float("inf"), rows, log=lambda m: None)
  assert tried == [32, 16, 8]
  got = [(r["task"], r["status"], r.get("batch")) for r in deadline.read_rows(rows.path)]
  assert got == [("fits", "oom", 32), ("fits", "oom", 16), ("fits", "ok", 8), ("bug", "error", 0),
                 ("never", "oom", 8), ("never", "error", 4), ("after", "ok", None)]
  bug = deadline.read_rows(rows.path)[3]
  assert bug["error"] == "ValueError: a bug"  # One line.


def test_rows_are_on_disk_before_a_kill(tmp_path):
  """A process killed (SIGKILL) in its second task has written its first task's rows."""
  path = tmp_path / "rows.jsonl"
  code = ("import time\nfrom fakejax import deadline\n"
          f"deadline.run([deadline.Task('first', lambda: [{{'x': 1}}]), "
          f"deadline.Task('second', lambda: time.sleep(120))], float('inf'), deadline.Rows({str(path)!r}))")
  proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL)
  try:
    end = time.time() + 60
    while not deadline.read_rows(str(path)) and time.time() < end:
      time.sleep(0.1)
  finally:
    proc.kill()
    proc.wait()
  assert [(r["task"], r["status"], r["x"]) for r in deadline.read_rows(str(path))] == [("first", "ok", 1)]


def test_a_child_past_the_deadline_is_killed_and_recorded(tmp_path):
  rows = deadline.Rows(str(tmp_path / "rows.jsonl"))
  t = time.time()
  gpu_check._child([sys.executable, "-c", "import time; time.sleep(120)"], str(tmp_path / "log"), t + 2, rows, "jax")
  assert time.time() - t < 30
  assert [(r["task"], r["status"]) for r in deadline.read_rows(rows.path)] == [("jax", "killed")]


def test_mfu_divides_by_the_peak_of_the_rows_dtype():
  """A float32 row runs on TF32 tensor cores, whose peak is half bf16's: at the same speed its MFU
  is twice the bf16 row's. A strict-float32 PyTorch row has no tensor-core peak to divide by."""
  common = {"status": "ok", "model": "resnet50", "image_size": 224, "kind": "train",
            "device": "NVIDIA H100 80GB HBM3", "images_per_s": 1000.0}
  rows = [{**common, "framework": "jax", "dtype": "bfloat16"}, {**common, "framework": "jax", "dtype": "float32"},
          {**common, "framework": "torch", "dtype": "fp32"},
          {"status": "ok", "kind": "matmul", "dtype": "bfloat16", "achieved_tflops": 700.0}]
  bf16, f32, strict, _ = gpu_check.with_mfu(rows)
  assert bf16["tflops"] == pytest.approx(f32["tflops"])
  assert f32["mfu_peak"] == pytest.approx(2 * bf16["mfu_peak"], rel=1e-3)
  assert "mfu_peak" not in strict
  assert bf16["mfu_ceiling"] == pytest.approx(bf16["tflops"] / 700.0) and "mfu_ceiling" not in f32


def test_report_sets_fakejax_beside_pytorch_and_judges_the_goals():
  r50 = {"status": "ok", "model": "resnet50", "image_size": 224, "kind": "train", "device": "x", "batch": 256}
  rows = [{**r50, "framework": "jax", "dtype": "bfloat16", "images_per_s": 3300.0},
          {**r50, "framework": "torch", "dtype": "bf16", "compiled": False, "images_per_s": 2500.0},
          {**r50, "framework": "torch", "dtype": "bf16", "compiled": True, "images_per_s": 3000.0},
          {"status": "ok", "kind": "pipeline", "storage": "raw", "workers": 15, "image_size": 224,
           "images_per_s": 3100.0},
          {"task": "jax:clip_vit_l14:bfloat16", "status": "skipped", "reason": "deadline: 3 s left"}]
  text = gpu_check.report(rows)
  assert "| resnet50 | train | bfloat16 | eager | 3300 | 2500 | 1.32 |" in text
  assert "| resnet50 | train | bfloat16 | torch.compile | 3300 | 3000 | 1.1 |" in text
  assert "3300 img/s (met)" in text and "1.10x (not met)" in text  # Against the faster PyTorch.
  assert "3100 vs 3300 img/s (not met)" in text
  assert "jax:clip_vit_l14:bfloat16: skipped: deadline: 3 s left" in text


@pytest.mark.parametrize("model,size", sorted(gpu_check.FORWARD_GFLOPS))
def test_fixed_flops_are_xla_count_of_the_forward(model, size):
  name, kw = ("resnet_trunc", {"single_logit": True}) if model == "npr" else (model, {})
  m = nnx.eval_shape(lambda: models.create(name, 2, **kw))
  m.eval()
  graph, state = nnx.split(m)
  lowered = jax.jit(lambda s, x: nnx.merge(graph, s)(x)).lower(state, jax.ShapeDtypeStruct((1, size, size, 3),
                                                                                            jnp.float32))
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert cost["flops"] / 1e9 == pytest.approx(gpu_check.FORWARD_GFLOPS[model, size], rel=0.01)


def test_the_wheels_are_exactly_what_the_device_image_lacks(tmp_path):
  """Every distribution fakejax imports (every module but the optional service, while building and
  reading a dataset through the training pipeline) is in the device image or in
  .ci/gpu-wheels.txt, and every wheel listed is one of them that the image lacks."""
  code = """
import importlib, importlib.metadata, json, pkgutil, sys
import fakejax
for m in pkgutil.walk_packages(fakejax.__path__, "fakejax."):
  if not m.name.startswith("fakejax.serve"):
    importlib.import_module(m.name)
from fakejax import datasets, defaults, runs
ds = datasets.synthetic_dataset(sys.argv[1], size=32, counts=(("train", 2), ("val", 1), ("test", 1)))
c = defaults.get_config()
c.data.synthetic.size = c.data.image_size = 32
next(runs.train_iter(ds, c.data, c.aug, 4, seed=0))
dists = importlib.metadata.packages_distributions()
print(json.dumps(sorted({d for name in list(sys.modules) for d in dists.get(name.split(".")[0], [])})))
"""
  out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=subprocess_env(devices=1),
                       capture_output=True, text=True, check=True).stdout.splitlines()[-1]
  used = {gpu_wheels.canonical(d) for d in json.loads(out)} - {"fakejax"}
  image, wheels = gpu_wheels.requirements(gpu_wheels.IMAGE), gpu_wheels.requirements(gpu_wheels.WHEELS)
  assert used - set(image) - set(wheels) == set(), "imported, and neither in the image nor carried"
  assert set(wheels) == used - set(image), "carried, but the image has it or fakejax does not import it"
  for spec in wheels.values():
    assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.]*", spec), f"{spec}: one pinned version"
