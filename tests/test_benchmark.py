"""The benchmark runs and reports consistent fields; the bf16 step is GPU-ready. No speed asserts."""

import importlib.util
import re
import sys

import jax
import numpy as np

from fakejax import benchmark
from fakejax import sharding
from fakejax import train


def test_benchmark_reports_consistent_fields(make_config):
  config = benchmark.bench_config("xception", 32, 8, width=0.0625)
  config.model.middle_blocks = 1
  rows = benchmark.benchmark(config, steps=2, warmup=1, patch_size=16)
  kinds = {r["kind"]: r for r in rows}
  assert set(kinds) == {"train", "eval", "patch_vote"}
  for kind in ("train", "eval"):
    r = kinds[kind]
    assert 0 < r["step_s_min"] <= r["step_s_median"] <= r["step_s_max"]
    assert r["images_per_s"] == 8 / r["step_s_median"]
    assert r["gflops_per_image"] > 0 and r["compile_s"] > 0
    assert np.isclose(r["achieved_tflops"], r["gflops_per_image"] * 8 / r["step_s_median"] / 1e3)
  # A train step costs more than a forward: backward ~2x, plus the optimizer on every weight.
  assert 2.0 < kinds["train"]["gflops_per_image"] / kinds["eval"]["gflops_per_image"] < 10
  assert kinds["patch_vote"]["patches_per_s"] > 0
  assert "train" in benchmark.format_table(rows)


def test_pipeline_throughput_alone(make_config):
  config = make_config()
  config.aug.blur_prob = config.aug.jpg_prob = 0.5
  (row,) = benchmark.benchmark(config, input_mode="data", workers=0,
                               data_cache=config.data.cache_dir, pipeline_batches=3)
  assert row["kind"] == "pipeline" and row["batches"] == 3 and row["blur_jpeg"] == 0.5
  assert np.isclose(row["images_per_s"], config.batch_size / row["step_s_median"])


def test_torch_peer_skips_with_a_reason_when_absent():
  rows, why = benchmark.torch_peer("resnet50", 32, 2, 1, 0, sys.executable)
  if importlib.util.find_spec("torch") is None:
    assert rows == [] and "PyTorch is not installed" in why
  else:
    assert why or rows


def test_bfloat16_step_is_gpu_ready(make_config):
  """Every convolution and dot of the lowered bf16 train step (forward and backward) is bf16; no host sync.

  XLA:GPU accumulates bf16 convolutions and dots in float32 inside its kernels (cuDNN / cuBLAS
  default), so bf16 operands here mean bf16 tensor-core math with f32 accumulation there.
  """
  c = make_config(**{"model.dtype": "bfloat16"})
  mesh = sharding.make_mesh()
  ts = train.TrainState(c, 2, 10, mesh)
  batch = sharding.to_global(mesh, {"image": np.zeros((16, 32, 32, 3), np.uint8),
                                    "label": np.zeros((16,), np.int32)})
  text = train.make_train_step(ts).lower(ts.init(), batch).as_text()
  ops = [l for l in text.splitlines() if re.search(r"stablehlo\.(convolution|dot_general)", l)]
  assert len(ops) > 20
  for line in ops:
    sig = line.rsplit(":", 1)[-1]
    assert "bf16" in sig and "f32" not in sig, line  # No convolution or matmul fell back to f32.
  for sync in ("callback", "outfeed", "infeed", "send", "recv"):
    assert not re.search(rf"\b{sync}\b", text), sync
  # Parameters stay float32 (only compute is bf16).
  assert all(x.dtype == jax.numpy.float32 for x in jax.tree.leaves(ts.abstract["model"])
             if jax.numpy.issubdtype(x.dtype, jax.numpy.floating))
