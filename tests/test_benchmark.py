"""The benchmark runs and reports consistent fields; the bf16 step is GPU-ready. No speed asserts."""

import importlib.util
import json
import os
import re
import sys

from flax import nnx
import jax
import numpy as np
from PIL import Image
import pytest

from fakejax import benchmark
from fakejax import models
from fakejax import sharding
from fakejax import training
from fakejax.models import cpu_kernels
from tests.conftest import head_dot


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

  # XLA's memory analysis of each step, per device. The train step's arguments hold the
  # parameters, Adam's two moments and the device's share of the batch, and its outputs reuse
  # them (the state is donated); it keeps activations for the backward pass, so it needs more
  # temporary memory than a forward.
  model = nnx.eval_shape(lambda: models.create("xception", 2, width=0.0625, middle_blocks=1))
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  train_row, eval_row = kinds["train"], kinds["eval"]
  for r in (train_row, eval_row):
    assert r["mem_output_bytes"] > 0 and r["mem_temp_bytes"] > 0 and r["mem_peak_bytes"] >= 0
    assert r["mem_footprint_bytes"] == (r["mem_argument_bytes"] + r["mem_output_bytes"]
                                        - r["mem_aliased_bytes"] + r["mem_temp_bytes"])
  image_bytes = 8 // jax.device_count() * 32 * 32 * 3
  assert train_row["mem_argument_bytes"] >= 3 * param_bytes + image_bytes
  assert train_row["mem_aliased_bytes"] >= 3 * param_bytes
  assert eval_row["mem_argument_bytes"] >= param_bytes and eval_row["mem_aliased_bytes"] == 0
  assert eval_row["mem_output_bytes"] >= 8 // jax.device_count() * 2 * 4  # The logits.
  assert train_row["mem_temp_bytes"] > eval_row["mem_temp_bytes"]
  assert "footprint_MiB" in benchmark.format_table(rows)


def test_pipeline_throughput_alone(make_config):
  config = make_config()
  config.aug.blur_prob = config.aug.jpg_prob = 0.5
  row, bare = benchmark.benchmark(config, input_mode="data", workers=0,
                                  data_cache=config.data.cache_dir, pipeline_batches=3)
  assert row["kind"] == "pipeline" and row["batches"] == 3 and row["blur_jpeg"] == 0.5
  assert np.isclose(row["images_per_s"], config.batch_size / row["step_s_median"])
  assert row["storage"] == "png" and row["images_per_s_per_core"] == row["images_per_s"]  # 0 workers: 1 core.
  assert bare["kind"] == "decode_1core" and bare["images_per_s"] > 0


def test_data_mode_times_a_prepared_dataset(tiny_synthetic, tmp_path):
  """--input data --dataset DIR reads the user's prepared dataset (any generators), not the synthetic one."""
  import subprocess  # pylint: disable=g-import-not-at-top
  from tests.conftest import subprocess_env  # pylint: disable=g-import-not-at-top
  r = subprocess.run([sys.executable, "-m", "fakejax.benchmark", "--input", "data", "--dataset", tiny_synthetic.path,
                      "--image_size", "32", "--batch", "4", "--workers", "0", "--pipeline_batches", "2",
                      "--data_cache", str(tmp_path / "none")], capture_output=True, text=True,
                     env=subprocess_env(1), timeout=300, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
  assert {row["kind"] for row in rows} == {"pipeline", "decode_1core"}
  assert all(row["dataset"] == tiny_synthetic.path for row in rows)
  assert not os.path.exists(tmp_path / "none")  # The synthetic benchmark was never generated.


def test_png_folder_for_the_dataloader_peer(make_config):
  """The peer's PNG tree holds the benchmark's own train images, pixel for pixel, by label."""
  config = make_config()
  folder = benchmark.export_png(config, config.data.cache_dir, n=6)
  dataset, _ = benchmark._pipeline_dataset(config, config.data.cache_dir)
  labels = dataset.index("train")["label"]
  src = dataset.source("train")
  for i in range(6):
    name = os.path.join(folder, ("0_real", "1_fake")[int(labels[i])], f"{i:06d}.png")
    with Image.open(name) as im:
      np.testing.assert_array_equal(np.asarray(im), dataset.decode(src[i]))
  rows, why = benchmark.torch_pipeline_peer(folder, 32, 2, 0, 1, sys.executable)
  if importlib.util.find_spec("torch") is None:
    assert rows == [] and "PyTorch is not installed" in why


def test_torch_peer_skips_with_a_reason_when_absent():
  rows, why = benchmark.torch_peer("resnet50", 32, 2, 1, 0, sys.executable)
  if importlib.util.find_spec("torch") is None:
    assert rows == [] and "PyTorch is not installed" in why
  else:
    assert why or rows


@pytest.mark.parametrize("formulation", ["xla", "cpu"])
def test_bfloat16_step_is_gpu_ready(make_config, formulation):
  """Every convolution and dot of the lowered bf16 train step (forward and backward) is bf16; no host sync.

  'xla' is the graph a GPU runs (grouped convolutions, reduce_window pooling), built here on CPU by
  the kernel switch; 'cpu' the CPU formulation. XLA:GPU accumulates bf16 convolutions and dots in
  float32 inside its kernels (cuDNN / cuBLAS default), so bf16 operands here mean bf16
  tensor-core math with f32 accumulation there.
  """
  c = make_config(**{"model.dtype": "bfloat16"})
  mesh = sharding.make_mesh()
  ts = training.TrainState.for_config(c, 2, 10, mesh)
  batch = sharding.to_global(mesh, {"image": np.zeros((16, 32, 32, 3), np.uint8),
                                    "label": np.zeros((16,), np.int32)})
  with cpu_kernels.use(formulation):
    text = training.make_train_step(ts).lower(ts.init(), batch).as_text()
  ops = [l for l in text.splitlines() if re.search(r"stablehlo\.(convolution|dot_general)", l) and not head_dot(l)]
  assert len(ops) > 20
  for line in ops:
    sig = line.rsplit(":", 1)[-1]
    assert "bf16" in sig and "f32" not in sig, line  # No convolution or matmul fell back to f32.
  for sync in ("callback", "outfeed", "infeed", "send", "recv"):
    assert not re.search(rf"\b{sync}\b", text), sync
  # The graph is the one asked for: XLA's depthwise (grouped) convolutions and pooling, or none.
  grouped = [g for g in re.findall(r"feature_group_count = (\d+)", text) if int(g) > 1]
  pooling = re.search(r"stablehlo\.(reduce_window|select_and_scatter)", text)
  assert bool(grouped) == bool(pooling) == (formulation == "xla")
  # Parameters stay float32 (only compute is bf16).
  assert all(x.dtype == jax.numpy.float32 for x in jax.tree.leaves(ts.abstract["model"])
             if jax.numpy.issubdtype(x.dtype, jax.numpy.floating))
