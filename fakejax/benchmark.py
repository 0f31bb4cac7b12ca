r"""Honest step time of the jitted train and eval steps, optionally beside PyTorch.

  python -m fakejax.benchmark --model resnet50 --image_size 224 --batch 16
  python -m fakejax.benchmark --model xception --image_size 256 --batch 16 --input both --peer torch
  python -m fakejax.benchmark --model xception --dtype bfloat16 --peak_tflops 990   # on an H100
  python -m fakejax.benchmark --model clip_vit_l14 --batch 8 --notrain --peer torch   # CLIP features
  python -m fakejax.benchmark --input data --image_size 256 --batch 64 --workers 1 --storage raw \
      --peer torch --peer_python /path/to/torch/python     # the input pipeline alone, per core
  python -m fakejax.benchmark --input data --dataset /data/fj/cnndetection --image_size 224 --workers 8

Compile time is reported apart; step times are the median/min/max over --steps
timed steps after --warmup, each ended by block_until_ready. FLOPs per image
come from XLA's cost analysis of the compiled step; with --peak_tflops (or a
known device) the model FLOP utilisation (MFU) is printed. --input pipeline
feeds batches from the real grain pipeline to show whether input is the
bottleneck; --input data times the pipeline alone (images/s per worker core, beside the bare
decode+crop+flip on one core and, with --peer torch, a DataLoader over the same images as PNG
files with as many workers). Prints a table and one JSON line per measurement.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from fakejax import augment
from fakejax import cli
from fakejax import datasets
from fakejax import deadline
from fakejax import defaults
from fakejax import gpu_check
from fakejax import models
from fakejax import runs
from fakejax import scoring
from fakejax import sharding
from fakejax import training
from fakejax.datasets import images

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
  _TRAIN = flags.DEFINE_bool("train", True, "Time the train step (--notrain: the eval step alone, "
                             "e.g. a frozen CLIP's feature extraction).")
  _PEER_PYTHON = flags.DEFINE_string("peer_python", sys.executable, "Interpreter that has PyTorch.")
  _PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s for MFU (0: known devices only).")
  _DATA = flags.DEFINE_string("data_cache", "data", "Synthetic data cache (pipeline mode).")
  _BLUR_JPEG = flags.DEFINE_float("blur_jpeg", 0.0, "Pipeline mode: blur and JPEG probability.")
  _STORAGE = flags.DEFINE_enum("storage", "png", ["png", "raw"], "Pipeline mode: how the synthetic "
                               "benchmark stores its pixels (prepare --storage).")
  _DATASET = flags.DEFINE_string("dataset", "", "Pipeline and data modes: read this dataset (a folder "
                                 "`fakejax.prepare` wrote, or 'photo') instead of the synthetic benchmark.")
  _SUITE = flags.DEFINE_enum("suite", "", ["", "gpu"], "'gpu': the GPU check's JAX measurements "
                             "(gpu_suite) in priority order, each row appended to --out as it is measured.")
  _OUT = flags.DEFINE_string("out", "", "--suite: the JSON-lines file rows are appended to.")
  _DEADLINE_AT = flags.DEFINE_float("deadline_at", 0.0, "--suite: Unix time after which no task starts.")
  _QUICK = flags.DEFINE_bool("quick", False, "--suite: tiny models and batches (the CPU rehearsal).")

def bench_config(model, image_size, batch, dtype="float32", width=1.0):
  c = defaults.get_config()
  c.model.name = model
  c.model.dtype = dtype
  c.model.width = width
  c.model.dropout = 0.0 if model != "xception" else 0.5
  c.model.preprocess = models.resolve_preprocess(model, "auto")
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


def memory(compiled):
  """XLA's memory analysis of a compiled step, in bytes (what the batch that fits is read from).

  arguments, outputs and temporaries (activations kept for the backward pass, workspace) as XLA
  assigned them; `aliased` is the part of the outputs that reuses donated arguments. `footprint`
  = arguments + outputs - aliased + temporaries bounds the device memory one step needs; `peak`
  is XLA's own peak figure, where the backend reports one (0 otherwise).
  """
  m = compiled.memory_analysis()
  if m is None:  # Not every backend analyses memory.
    return {}
  out = {"mem_argument_bytes": m.argument_size_in_bytes, "mem_output_bytes": m.output_size_in_bytes,
         "mem_aliased_bytes": m.alias_size_in_bytes, "mem_temp_bytes": m.temp_size_in_bytes,
         "mem_peak_bytes": getattr(m, "peak_memory_in_bytes", 0)}
  out["mem_footprint_bytes"] = (out["mem_argument_bytes"] + out["mem_output_bytes"]
                                - out["mem_aliased_bytes"] + out["mem_temp_bytes"])
  return out


def _row(kind, config, times, compile_s, compiled, images, *, peak):
  med = statistics.median(times)
  flops = _flops(compiled)
  row = {"kind": kind, "model": config.model.name, "image_size": config.data.image_size,
         "batch": config.batch_size, "dtype": config.model.dtype, "device": jax.devices()[0].device_kind,
         "n_devices": jax.device_count(), "compile_s": round(compile_s, 3),
         "step_s_median": med, "step_s_min": min(times), "step_s_max": max(times),
         "images_per_s": images / med, "gflops_per_image": flops / images / 1e9,
         "achieved_tflops": flops / med / 1e12, **memory(compiled)}
  if peak:
    row["mfu"] = row["achieved_tflops"] / peak
  if "mem_footprint_bytes" in row:
    row["footprint_MiB"] = row["mem_footprint_bytes"] / 2**20
    row["temp_MiB"] = row["mem_temp_bytes"] / 2**20
  return row


def _pipeline_dataset(config, data_cache):
  """The dataset the pipeline rows read: config.data.dir (--dataset: a prepared dataset or an
  embedded benchmark's name), else the synthetic benchmark at the config's size (>= 64 px)."""
  c = config.copy_and_resolve_references()
  c.data.synthetic.size = max(c.data.image_size, 64)
  c.data.cache_dir = data_cache
  return datasets.open_dataset(c.data), c


def _pipeline(config, workers, data_cache):
  """(the grain train iterator over _pipeline_dataset at the config's image size, the dataset)."""
  dataset, c = _pipeline_dataset(config, data_cache)
  c.data.workers = workers
  return runs.train_iter(dataset, c.data, c.aug, c.batch_size, seed=0), dataset


def decode_throughput(config, data_cache, n=400):
  """Images/s of the bare work on one core, no grain: read a record, decode, crop, flip.

  The ceiling of one pipeline worker; `pipeline_throughput` per worker against it is the
  overhead between decode and the batch.
  """
  dataset, c = _pipeline_dataset(config, data_cache)
  src = dataset.source("train")
  n = min(n, len(src))
  rng = np.random.default_rng(0)
  out = np.empty((config.data.image_size, config.data.image_size, 3), np.uint8)
  t = time.perf_counter()
  for i in range(n):
    img = dataset.decode(src[i])
    out[...] = augment.train_augment(img, rng, c.aug, c.data.image_size, c.data.too_small)
  dt = time.perf_counter() - t
  return {"kind": "decode_1core", "model": "-", "image_size": config.data.image_size,
          "storage": dataset.storage, "dataset": dataset.path, "workers": 1, "images_per_s": n / dt,
          "images_per_s_per_core": n / dt}


def export_png(config, data_cache, n=1000):
  """The first `n` train images of the pipeline's dataset as an ImageFolder-style PNG tree
  (0_real / 1_fake), for the PyTorch DataLoader peer; returns the folder (made once)."""
  dataset, c = _pipeline_dataset(config, data_cache)
  folder = os.path.join(data_cache, f"png_folder_{c.data.synthetic.size}px_{n}")
  if os.path.exists(os.path.join(folder, "done")):
    return folder
  src, labels = dataset.source("train"), dataset.index("train")["label"]
  for d in ("0_real", "1_fake"):
    os.makedirs(os.path.join(folder, d), exist_ok=True)
  for i in range(min(n, len(src))):
    name = os.path.join(folder, ("0_real", "1_fake")[int(labels[i])], f"{i:06d}.png")
    with open(name, "wb") as f:
      f.write(images.encode(dataset.decode(src[i]), "png"))
  open(os.path.join(folder, "done"), "w").close()
  return folder


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _peer_script(name, args, python):
  """Runs `python -m scripts.<name>` from the repository root; (its JSON rows, '') or ([], the
  reason it could not)."""
  r = subprocess.run([python, "-m", f"scripts.{name}", *map(str, args)], capture_output=True, text=True,
                     cwd=ROOT)
  rows = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
  failed = [row for row in rows if row.get("status") not in (None, "ok")]
  if r.returncode != 0 or failed:
    last = (r.stdout + r.stderr).strip().splitlines()
    return [], failed[0].get("error", failed[0].get("reason")) if failed else (last[-1] if last else "failed")
  return rows, ""


def torch_pipeline_peer(folder, crop, batch, workers, batches, python):
  """Runs scripts/torch_pipeline_peer.py (a DataLoader over PNG files); (rows, why skipped)."""
  rows, why = _peer_script("torch_pipeline_peer", [folder, crop, batch, workers, batches], python)
  for row in rows:
    row["images_per_s_per_core"] = row["images_per_s"] / max(workers, 1)
  return rows, why


def pipeline_throughput(config, workers, data_cache, batches=100, warmup=10):
  """Sustained images/s of the grain train pipeline: `batches` batches after `warmup` batches.

  Timed over many batches, not per batch: worker processes prefetch, so the first
  batches come from a buffer filled while nothing was timed.
  """
  it, dataset = _pipeline(config, workers, data_cache)
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
          "storage": dataset.storage, "dataset": dataset.path, "workers": workers,
          "blur_jpeg": config.aug.blur_prob, "batches": batches, "step_s_median": dt / batches,
          "images_per_s": batches * b / dt, "images_per_s_per_core": batches * b / dt / max(workers, 1)}


def benchmark(config, steps=10, warmup=2, input_mode="device", workers=2, patch_size=0, *, peak=0.0,
              data_cache="data", pipeline_batches=100, train_step=True):
  """Measures the train step (unless `train_step` is False), the eval step and optionally the
  input pipeline and patch voting.

  Returns:
    a list of result rows (dicts).
  """
  if input_mode == "data":
    # The bare rate first: an in-process pipeline's (0 workers) reader threads outlive it a while.
    bare = decode_throughput(config, data_cache)
    return [pipeline_throughput(config, workers, data_cache, pipeline_batches), bare]
  mesh = sharding.make_mesh()
  peak = peak or gpu_check.known_peak(jax.devices()[0].device_kind, config.model.dtype) * jax.device_count()
  b, s = config.batch_size, config.data.image_size
  ts = training.TrainState.for_config(config, 2, 1000, mesh)
  rng = np.random.default_rng(0)
  host_batch = {"image": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
                "label": rng.integers(0, 2, (b,), dtype=np.int32)}
  batch = sharding.to_global(mesh, host_batch)
  state = ts.init()
  rows = []

  # --- Train step, batches on device ------------------------------------------------
  holder = [state]
  if train_step:
    t = time.perf_counter()
    step = training.make_train_step(ts, ts.stage_at(0)).lower(state, batch).compile()
    compile_s = time.perf_counter() - t

    def one_step(b=batch):
      holder[0], m = step(holder[0], b)
      jax.block_until_ready(m["loss"])

    rows.append(_row("train", config, _times(one_step, steps, warmup), compile_s, step, b, peak=peak))

  # --- Eval step: the model inference runs (models.for_inference) -------------------
  t = time.perf_counter()
  fast_def, fast_state = nnx.split(models.for_inference(nnx.merge(ts.model_def, holder[0]["model"])))
  fwd = scoring.make_forward(fast_def, ts.preprocess, config.model.dtype)
  fwd_c = fwd.lower(fast_state, batch["image"]).compile()
  compile_s = time.perf_counter() - t
  rows.append(_row("eval", config, _times(lambda: jax.block_until_ready(fwd_c(fast_state, batch["image"])),
                                         steps, warmup), compile_s, fwd_c, b, peak=peak))

  # --- Input pipeline alone, and end to end ----------------------------------------------
  if input_mode in ("pipeline", "both") and train_step:
    rows.append(pipeline_throughput(config, workers, data_cache, pipeline_batches))
    it, _ = _pipeline(config, workers, data_cache)
    try:
      e2e = _times(lambda: one_step(sharding.to_global(mesh, next(it))), steps, warmup)
      rows.append(_row("train_end_to_end", config, e2e, 0.0, step, b, peak=peak))
    finally:
      it.close()

  if patch_size:
    rows.append(_patch_vote_row(config, fwd, fwd_c, fast_state, host_batch, patch_size=patch_size,
                                timing=(steps, warmup)))
  return rows


def _patch_vote_row(config, fwd, fwd_c, fast_state, host_batch, *, patch_size, timing):
  """Patch voting (grid patches, each scored, then the vote) against a plain forward (`fwd_c`)
  of the same images."""
  mesh = sharding.make_mesh()
  steps, warmup = timing
  b, s = config.batch_size, config.data.image_size
  images = sharding.to_global(mesh, host_batch["image"])
  n_patch = (s // patch_size) ** 2
  patches = np.concatenate([scoring.grid_patches(img, patch_size)[0] for img in host_batch["image"]])
  pb = sharding.to_global(mesh, patches[: len(patches) // jax.device_count() * jax.device_count()])
  fwd_p = fwd.lower(fast_state, pb).compile()

  def vote():
    logits = sharding.to_host(fwd_p(fast_state, pb))
    for i in range(0, len(logits), n_patch):
      scoring.decide("grid", logits[i:i + n_patch])

  plain = statistics.median(_times(lambda: sharding.to_host(fwd_c(fast_state, images)), steps, warmup))
  voted = statistics.median(_times(vote, steps, warmup))
  return {"kind": "patch_vote", "model": config.model.name, "image_size": s, "batch": b,
          "patch_size": patch_size, "patches_per_s": pb.shape[0] / voted,
          "plain_images_per_s": b / plain, "overhead_vs_plain": voted / plain - 1}


# ---------------------------------------------------------------------------
# The GPU check's JAX part (`--suite gpu`, run by fakejax.gpu_check).
# ---------------------------------------------------------------------------
def matmul_ceiling(n, dtype, steps=10):
  """The measured rate of an n x n by n x n matrix product in `dtype` on the default device: the
  ceiling MFU is read against beside the datasheet's peak (float32 runs at XLA's default
  precision: TF32 tensor cores on recent GPUs)."""
  a, b = (jax.random.normal(jax.random.key(i), (n, n), dtype) for i in (1, 2))  # Never zeros.
  f = jax.jit(lambda a, b: a @ b).lower(a, b).compile()
  times = _times(lambda: f(a, b).block_until_ready(), steps, 2)
  med = statistics.median(times)
  return [{"kind": "matmul", "framework": "jax", "dtype": str(jnp.dtype(dtype)), "n": n,
           "device": jax.devices()[0].device_kind, "step_s_median": med, "achieved_tflops": 2 * n**3 / med / 1e12}]


def _cache_entries():
  path = jax.config.jax_compilation_cache_dir
  return len(os.listdir(path)) if path and os.path.isdir(path) else 0


def measured(fn):
  """fn(...) -> rows, each marked 'jax', with 'compile_cache': 'cold' when its compiles wrote new
  entries into the persistent compilation cache (compiled here), else 'cached'."""
  def wrapped(*args):
    before = _cache_entries()
    rows = fn(*args)
    cache = "cold" if _cache_entries() > before else "cached"
    return [{"framework": "jax", "compile_cache": cache, **r} for r in rows]
  return wrapped


def training_run(config, workdir):
  """A real run (fakejax.train) of `config`: wall time, its own img/s, and whether the loss fell
  (the mean of the last quarter of the logged losses below that of the first quarter)."""
  t = time.perf_counter()
  out = training.train_and_evaluate(config, workdir)
  wall = time.perf_counter() - t
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(l) for l in f]
  train_rows = [r for r in logged if r.get("kind", "train") == "train" and "loss" in r]
  losses = [r["loss"] for r in train_rows]
  q = max(len(losses) // 4, 1)
  first, last = float(np.mean(losses[:q])), float(np.mean(losses[-q:]))
  speeds = [r["img_per_s"] for r in train_rows if "img_per_s" in r][1:]  # The first includes compiles.
  return [{"kind": "training_run", "model": config.model.name, "image_size": config.data.image_size,
           "batch": config.batch_size, "dtype": config.model.dtype, "steps": out["step"], "wall_s": wall,
           "images_per_s": float(np.median(speeds)) if speeds else 0.0, "loss_first": first,
           "loss_last": last, "loss_falls": last < first,
           "test_accuracy": (out.get("test") or {}).get("accuracy")}]


def gpu_suite(quick=False, workdir="/tmp/fakejax_gpu_check", steps=20, warmup=3):
  """The GPU check's JAX measurements as deadline.Tasks, most important first.

  Full: the matmul ceilings (8192^3, bf16 and float32); ResNet-50@224 bf16 train and eval at batch
  256; Xception@299 bf16; both in float32 (TF32); CLIP ViT-L/14@224 features (eval, bf16); NPR's
  network (resnet_trunc with its front, one logit) trained at its official batch 32, bf16 and
  float32; the input pipeline on every core but one, raw then PNG storage, at 224 px, batch 256;
  and configs/quick.py trained in bf16 (a real run whose loss must fall). `quick`: the same chain
  with tiny models, sizes and batches, for the CPU rehearsal.
  """
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
  n_dev = jax.device_count()
  size, extra, batch, npr_batch, mm, pipe, clip, scale = _suite_sizes(quick, n_dev)
  steps, warmup = (2, 1) if quick else (steps, warmup)

  def model_task(name, dtype, b, train_step=True, needs_s=60.0, **model_kw):
    def fn(batch):
      c = bench_config(name, size[name], batch, dtype)
      for k, v in {**extra, **model_kw}.items():
        c.model[k] = v
      rows = benchmark(c, steps, warmup, train_step=train_step)
      if name == "resnet_trunc":  # The PyTorch peer's name for NPR's network.
        rows = [{**r, "model": "npr"} for r in rows]
      return rows
    label = "npr" if name == "resnet_trunc" else name
    return deadline.Task(f"jax:{label}:{dtype}", measured(fn), batch=b, min_batch=n_dev,
                         needs_s=needs_s * scale)

  def pipeline_task(storage):
    def fn():
      c = bench_config("resnet50", pipe["image_size"], pipe["batch"])
      c.data.synthetic.storage = storage
      c.data.synthetic.train, c.data.synthetic.val, c.data.synthetic.test = (16, 2, 2) if quick else (64, 4, 4)
      workers = max(cores - 1, 1)
      return [{"framework": "jax", **pipeline_throughput(c, workers, os.path.join(workdir, "data"),
                                                          pipe["batches"], warmup=2 if quick else 10)}]
    return deadline.Task(f"jax:pipeline:{storage}", fn, needs_s=90.0 * scale)

  def training_task():
    def fn():
      run_dir = os.path.join(workdir, "quick_bf16")
      if os.path.exists(run_dir):
        shutil.rmtree(run_dir)
      return training_run(_training_run_config(quick, workdir, n_dev), run_dir)
    return deadline.Task("jax:training_run", measured(fn), needs_s=90.0 * scale)

  matmul = lambda dtype: deadline.Task(f"jax:matmul:{jnp.dtype(dtype)}", lambda: matmul_ceiling(mm, dtype),
                                       needs_s=15.0 * scale)
  return [
      matmul(jnp.bfloat16), matmul(jnp.float32),
      model_task("resnet50", "bfloat16", batch),
      model_task("xception", "bfloat16", batch),
      model_task("resnet50", "float32", batch),
      model_task("xception", "float32", batch),
      model_task(clip, "bfloat16", batch, train_step=False),
      model_task("resnet_trunc", "bfloat16", npr_batch, front="npr", single_logit=True),
      model_task("resnet_trunc", "float32", npr_batch, front="npr", single_logit=True),
      pipeline_task("raw"), pipeline_task("png"),
      training_task(),
  ]


def _suite_sizes(quick, n_dev):
  """(image size per model, extra model keys, batch, NPR's batch, matmul side, pipeline sizes,
  the CLIP model, the time-estimate scale) of the full GPU check, or of its quick CPU rehearsal
  (tiny models, sizes and batches)."""
  if quick:
    return ({"resnet50": 32, "xception": 32, "clip_vit_tiny": 64, "resnet_trunc": 32},
            {"width": 0.125, "middle_blocks": 1},  # Every model narrow; Xception one middle block.
            2 * n_dev, 2 * n_dev, 256, dict(image_size=32, batch=2 * n_dev, batches=5), "clip_vit_tiny", 0.25)
  return ({"resnet50": 224, "xception": 299, "clip_vit_l14": 224, "resnet_trunc": 224}, {},
          256, 32, 8192, dict(image_size=224, batch=256, batches=50), "clip_vit_l14", 1.0)


def _training_run_config(quick, workdir, n_dev):
  """configs/quick.py in bf16 for the GPU check's real run: 300 steps at batch 256 (quick: 8 tiny
  steps for the CPU rehearsal)."""
  c = defaults.from_file(os.path.join(ROOT, "configs", "quick.py"))
  c.model.dtype = "bfloat16"
  c.data.cache_dir = os.path.join(workdir, "data")
  if quick:
    c.model.width, c.model.middle_blocks, c.data.image_size, c.data.synthetic.size = 0.125, 1, 32, 32
    c.data.synthetic.train, c.data.synthetic.val, c.data.synthetic.test = 8, 4, 3
    c.batch_size, c.total_steps, c.log_every_steps, c.eval_every_steps = 2 * n_dev, 8, 1, 8
  else:
    c.batch_size, c.total_steps, c.log_every_steps, c.eval_every_steps = 256, 300, 10, 300
  return c


def torch_peer(model, image_size, batch, steps, warmup, python, *, kinds="train,eval"):
  """scripts/torch_peer.py on the CPU in a subprocess, float32 like the CPU rows here; returns
  (its rows, '') or ([], the reason it could not)."""
  return _peer_script("torch_peer", ["--case", f"{model}:{image_size}:{batch}:fp32", "--kinds", kinds,
                                     "--steps", steps, "--warmup", warmup, "--device", "cpu"], python)


def format_table(rows):
  cols = ("kind", "model", "image_size", "batch", "dtype", "storage", "workers", "compile_s",
          "step_s_median", "images_per_s", "images_per_s_per_core", "gflops_per_image", "achieved_tflops", "mfu", "footprint_MiB", "temp_MiB",
          "overhead_vs_plain")
  cols = [c for c in cols if any(c in r for r in rows)]
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  lines = [" | ".join(cols)]
  lines += [" | ".join(fmt(r.get(c, "")) for c in cols) for r in rows]
  return "\n".join(lines)


def run_suite(out, deadline_at, quick):
  """The GPU check's JAX part: the devices, then gpu_suite's rows, each appended to `out`."""
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # Every compile: 'compile_cache'.
  rows = deadline.Rows(out)
  d = jax.devices()[0]
  rows.write({"task": "jax:devices", "status": "ok", "kind": "devices", "platform": d.platform,
              "device": d.device_kind, "n_devices": jax.device_count(),
              "platform_version": getattr(d.client, "platform_version", ""), "jax": jax.__version__,
              "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
              "cache_entries_at_start": _cache_entries()})
  deadline.run(gpu_suite(quick), deadline_at or float("inf"), rows)


def main(argv):
  del argv
  if _SUITE.value:
    return run_suite(_OUT.value or "gpu_check_rows.jsonl", _DEADLINE_AT.value, _QUICK.value)
  if _INPUT.value == "data":  # The input pipeline alone: no accelerator is started.
    cli.set_process_defaults("none")
  config = bench_config(_MODEL.value, _SIZE.value, _BATCH.value, _DTYPE.value, _WIDTH.value)
  config.aug.blur_prob = config.aug.jpg_prob = _BLUR_JPEG.value
  config.data.synthetic.storage = _STORAGE.value
  if _DATASET.value:
    config.data.dir, config.data.train_sources = _DATASET.value, ()  # All its generators.
  sharding.check_batch(config.batch_size, sharding.make_mesh())
  rows = benchmark(config, _STEPS.value, _WARMUP.value, _INPUT.value, _WORKERS.value, _PATCH.value,
                   peak=_PEAK.value, data_cache=_DATA.value, pipeline_batches=_PIPE_BATCHES.value,
                   train_step=_TRAIN.value)
  if _PEER.value == "torch" and _INPUT.value == "data":
    folder = export_png(config, _DATA.value)
    peer, why = torch_pipeline_peer(folder, _SIZE.value, _BATCH.value, _WORKERS.value,
                                    _PIPE_BATCHES.value, _PEER_PYTHON.value)
    if why:
      print(f"PyTorch peer skipped: {why}")
    for p in peer:
      p["fakejax_over_peer"] = rows[0]["images_per_s"] / p["images_per_s"]
      rows.append(p)
  elif _PEER.value == "torch":
    peer, why = torch_peer(_MODEL.value, _SIZE.value, _BATCH.value, _STEPS.value, _WARMUP.value,
                           _PEER_PYTHON.value, kinds="train,eval" if _TRAIN.value else "eval")
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
