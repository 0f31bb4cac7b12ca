r"""Honest step time of the jitted train and eval steps, optionally beside PyTorch.

  python -m fakejax.benchmark --model resnet50 --image_size 224 --batch 16
  python -m fakejax.benchmark --model xception --image_size 256 --batch 16 --input both --peer torch
  python -m fakejax.benchmark --model xception --dtype bfloat16 --peak_tflops 990   # on an H100

Compile time is reported apart; step times are the median/min/max over --steps
timed steps after --warmup, each ended by block_until_ready. FLOPs per image
come from XLA's cost analysis of the compiled step; with --peak_tflops (or a
known device) the model FLOP utilisation (MFU) is printed. --input pipeline
feeds batches from the real grain pipeline to show whether input is the
bottleneck. Prints a table and one JSON line per measurement.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import flags
import jax
import numpy as np

from fakejax import cli
from fakejax import datasets
from fakejax import defaults
from fakejax import inference
from fakejax import input_pipeline
from fakejax import sharding
from fakejax import train

if __name__ == "__main__":
  # Defined only when this file is the program, so other modules can import its functions.
  _MODEL = flags.DEFINE_string("model", "resnet50", "Registered model name.")
  _SIZE = flags.DEFINE_integer("image_size", 224, "Input side.")
  _BATCH = flags.DEFINE_integer("batch", 16, "Global batch.")
  _DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
  _WIDTH = flags.DEFINE_float("width", 1.0, "Channel multiplier (1.0: the published model).")
  _STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
  _WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
  _INPUT = flags.DEFINE_enum("input", "device", ["device", "pipeline", "both", "data"],
                             "Batches already on device, from the grain pipeline, both, or "
                             "'data': the input pipeline alone (no model).")
  _PIPE_BATCHES = flags.DEFINE_integer("pipeline_batches", 100, "Batches timed for the pipeline's "
                                       "sustained throughput (after its first batches).")
  _WORKERS = flags.DEFINE_integer("workers", 2, "grain worker processes in pipeline mode.")
  _PATCH = flags.DEFINE_integer("patch_size", 0, "Also time patch evaluation with this patch size.")
  _PEER = flags.DEFINE_enum("peer", "", ["", "torch"], "Also run the PyTorch equivalent.")
  _PEER_PYTHON = flags.DEFINE_string("peer_python", sys.executable, "Interpreter that has PyTorch.")
  _PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s for MFU (0: known devices only).")
  _DATA = flags.DEFINE_string("data_cache", "data", "Synthetic data cache (pipeline mode).")
  _BLUR_JPEG = flags.DEFINE_float("blur_jpeg", 0.0, "Pipeline mode: blur and JPEG probability.")

# Dense bf16 peaks (TFLOP/s) of devices whose MFU we can state without being told.
KNOWN_PEAKS = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H200": 989.0, "NVIDIA A100-SXM4-80GB": 312.0}


def bench_config(model, image_size, batch, dtype="float32", width=1.0):
  c = defaults.get_config()
  c.model.name = model
  c.model.dtype = dtype
  c.model.width = width
  c.model.dropout = 0.0 if model != "xception" else 0.5
  c.model.preprocess = "imagenet" if model.startswith("resnet") else "minus_one_one"
  c.data.image_size = image_size
  c.batch_size = batch
  return c


def _times(fn, steps, warmup):
  for _ in range(warmup):
    fn()
  out = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t)
  return out


def _flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def _row(kind, config, times, compile_s, flops, images, peak):
  med = statistics.median(times)
  row = {"kind": kind, "model": config.model.name, "image_size": config.data.image_size,
         "batch": config.batch_size, "dtype": config.model.dtype, "device": jax.devices()[0].device_kind,
         "n_devices": jax.device_count(), "compile_s": round(compile_s, 3),
         "step_s_median": med, "step_s_min": min(times), "step_s_max": max(times),
         "images_per_s": images / med, "gflops_per_image": flops / images / 1e9,
         "achieved_tflops": flops / med / 1e12}
  if peak:
    row["mfu"] = row["achieved_tflops"] / peak
  return row


def _pipeline(config, workers, data_cache):
  """The grain train iterator over the synthetic benchmark at the config's image size."""
  c = config.copy_and_resolve_references()
  c.data.workers = workers
  c.data.synthetic.size = max(c.data.image_size, 64)
  c.data.cache_dir = data_cache
  return input_pipeline.make_train_iter(datasets.open_dataset(c.data), c.data, c.aug, c.batch_size,
                                        seed=0)


def pipeline_throughput(config, workers, data_cache, batches=100, warmup=10):
  """Sustained images/s of the grain train pipeline: `batches` batches after `warmup` batches.

  Timed over many batches, not per batch: worker processes prefetch, so the first
  batches come from a buffer filled while nothing was timed.
  """
  it = _pipeline(config, workers, data_cache)
  try:
    for _ in range(warmup):
      next(it)
    t = time.perf_counter()
    for _ in range(batches):
      next(it)
    dt = time.perf_counter() - t
  finally:
    it.close()
  b = config.batch_size
  return {"kind": "pipeline", "model": "-", "image_size": config.data.image_size, "batch": b,
          "workers": workers, "blur_jpeg": config.aug.blur_prob, "batches": batches,
          "step_s_median": dt / batches, "images_per_s": batches * b / dt}


def benchmark(config, steps=10, warmup=2, input_mode="device", workers=2, patch_size=0, peak=0.0,
              data_cache="data", pipeline_batches=100):
  """Measures the train step, the eval step and optionally the input pipeline and patch voting.

  Returns:
    a list of result rows (dicts).
  """
  if input_mode == "data":
    return [pipeline_throughput(config, workers, data_cache, pipeline_batches)]
  mesh = sharding.make_mesh()
  peak = peak or KNOWN_PEAKS.get(jax.devices()[0].device_kind, 0.0) * jax.device_count()
  b, s = config.batch_size, config.data.image_size
  ts = train.TrainState(config, 2, 1000, mesh)
  rng = np.random.default_rng(0)
  host_batch = {"image": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
                "label": rng.integers(0, 2, (b,), dtype=np.int32)}
  batch = sharding.to_global(mesh, host_batch)
  state = ts.init()
  rows = []

  # --- Train step, batches on device ------------------------------------------------
  t = time.perf_counter()
  step = train.make_train_step(ts, ts.stage_at(0)).lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  holder = [state]

  def one_step(b=batch):
    holder[0], m = step(holder[0], b)
    jax.block_until_ready(m["loss"])

  rows.append(_row("train", config, _times(one_step, steps, warmup), compile_s, _flops(step), b, peak))

  # --- Eval step (the predict path) -----------------------------------------------
  fwd = train.make_eval_step(ts)
  t = time.perf_counter()
  fwd_c = fwd.lower(holder[0], batch["image"]).compile()
  compile_s = time.perf_counter() - t
  rows.append(_row("eval", config, _times(lambda: jax.block_until_ready(fwd_c(holder[0], batch["image"])),
                                         steps, warmup), compile_s, _flops(fwd_c), b, peak))

  # --- Input pipeline alone, and end to end ----------------------------------------------
  if input_mode in ("pipeline", "both"):
    rows.append(pipeline_throughput(config, workers, data_cache, pipeline_batches))
    it = _pipeline(config, workers, data_cache)
    try:
      e2e = _times(lambda: one_step(sharding.to_global(mesh, next(it))), steps, warmup)
      rows.append(_row("train_end_to_end", config, e2e, 0.0, _flops(step), b, peak))
    finally:
      it.close()

  # --- Patch voting versus a plain forward of the same pixels -------------------------
  if patch_size:
    n_patch = (s // patch_size) ** 2
    patches = np.concatenate([inference.grid_patches(img, patch_size)[0] for img in host_batch["image"]])
    pb = sharding.to_global(mesh, patches[: len(patches) // jax.device_count() * jax.device_count()])
    fwd_p = fwd.lower(holder[0], pb).compile()

    def vote():
      logits = sharding.to_host(fwd_p(holder[0], pb))
      for i in range(0, len(logits), n_patch):
        inference.decide("grid", logits[i:i + n_patch])

    plain = statistics.median(_times(lambda: sharding.to_host(fwd_c(holder[0], batch["image"])), steps, warmup))
    voted = statistics.median(_times(vote, steps, warmup))
    rows.append({"kind": "patch_vote", "model": config.model.name, "image_size": s, "batch": b,
                 "patch_size": patch_size, "patches_per_s": pb.shape[0] / voted,
                 "plain_images_per_s": b / plain, "overhead_vs_plain": voted / plain - 1})
  return rows


def torch_peer(model, image_size, batch, steps, warmup, python):
  """Runs scripts/torch_peer.py in a subprocess; returns its rows or a reason it could not."""
  script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                        "torch_peer.py")
  r = subprocess.run([python, script, model, str(image_size), str(batch), str(steps), str(warmup)],
                     capture_output=True, text=True)
  if r.returncode != 0:
    return [], (r.stdout + r.stderr).strip().splitlines()[-1] if (r.stdout + r.stderr).strip() else "failed"
  return [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")], ""


def format_table(rows):
  cols = ("kind", "model", "image_size", "batch", "dtype", "compile_s", "step_s_median",
          "images_per_s", "gflops_per_image", "achieved_tflops", "mfu", "overhead_vs_plain")
  cols = [c for c in cols if any(c in r for r in rows)]
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  lines = [" | ".join(cols)]
  lines += [" | ".join(fmt(r.get(c, "")) for c in cols) for r in rows]
  return "\n".join(lines)


def main(argv):
  del argv
  config = bench_config(_MODEL.value, _SIZE.value, _BATCH.value, _DTYPE.value, _WIDTH.value)
  config.aug.blur_prob = config.aug.jpg_prob = _BLUR_JPEG.value
  sharding.check_batch(config.batch_size, sharding.make_mesh())
  rows = benchmark(config, _STEPS.value, _WARMUP.value, _INPUT.value, _WORKERS.value, _PATCH.value,
                   _PEAK.value, _DATA.value, _PIPE_BATCHES.value)
  if _PEER.value == "torch":
    peer, why = torch_peer(_MODEL.value, _SIZE.value, _BATCH.value, _STEPS.value, _WARMUP.value,
                           _PEER_PYTHON.value)
    if why:
      print(f"PyTorch peer skipped: {why}")
    for p in peer:
      ours = next((r for r in rows if r["kind"] == p["kind"]), None)
      if ours:
        p["fakejax_over_peer"] = ours["images_per_s"] / p["images_per_s"]
      rows.append(p)
  for r in rows:
    print(json.dumps(r))
  print(format_table(rows))
  for r in rows:
    if "fakejax_over_peer" in r:
      print(f"{r['kind']}: fakejax / PyTorch = {r['fakejax_over_peer']:.2f}x")


if __name__ == "__main__":
  cli.run(main)
