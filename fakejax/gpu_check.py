r"""The GPU check: fakejax's speed on an accelerator beside PyTorch's on the same card, in one call.

  python -m fakejax.gpu_check --out OUT [--deadline_s 540] [--peer_python python3]
  python -m fakejax.gpu_check --out OUT --quick       # the CPU rehearsal (make gpu-rehearsal)
  python -m fakejax.gpu_check --out OUT --part report # the report again, from OUT/rows.jsonl

Made for a lent machine whose command is killed at a fixed limit (docs/performance.md gives the
device command). Under one deadline it runs
1. the JAX part, in a child process (`fakejax.benchmark --suite gpu`): the devices, the measured
   matmul ceilings, then fakejax's rows in priority order (benchmark.gpu_suite);
2. after that process has exited and freed the device, the PyTorch peer (scripts/torch_peer.py)
   on the same card: torchvision's ResNet-50, timm's Xception and NPR's network with AMP bf16 +
   channels_last, eager and torch.compile'd, and in TF32;
3. the report, OUT/report.md, printed last.
Every row is appended to OUT/rows.jsonl the moment it is measured (fakejax.deadline): a killed
call keeps them, and `--part report` rebuilds the report. OUT holds at most 5 files (the device
tool brings back 8): rows.jsonl, report.md, jax.log, torch.log, and the machine in machine.json.

MFU: fixed FLOPs per image (FORWARD_GFLOPS, a train step counted as 3 forwards) over the dense
peak of the row's dtype on that card (KNOWN_PEAKS: bf16, or TF32 for float32 rows, which XLA and
PyTorch's TF32 mode run on tensor cores), and over the matmul rate measured in the same call.
"""

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time

from fakejax import deadline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XLA's cost analysis of each model's forward on one image (float32, as fakejax builds it:
# tests/test_gpu_check.py recounts them); the PyTorch peer's networks are the same architectures.
FORWARD_GFLOPS = {("resnet50", 224): 7.943, ("xception", 299): 16.790, ("npr", 224): 3.418,
                  ("clip_vit_l14", 224): 162.44}
# Dense tensor-core peaks (TFLOP/s, no sparsity) of one device, by the rows' dtype: bfloat16, and
# float32 as XLA runs it on these GPUs by default and PyTorch in its TF32 mode (TF32 tensor cores).
# From NVIDIA's H100 / H200 / A100 datasheets (SXM parts unless named).
KNOWN_PEAKS = {
    "NVIDIA H100 80GB HBM3": {"bfloat16": 989.4, "float32": 494.7},
    "NVIDIA H200": {"bfloat16": 989.4, "float32": 494.7},
    "NVIDIA H100 PCIe": {"bfloat16": 756.0, "float32": 378.0},
    "NVIDIA A100-SXM4-80GB": {"bfloat16": 312.0, "float32": 156.0},
    "NVIDIA A100-SXM4-40GB": {"bfloat16": 312.0, "float32": 156.0},
}
# The PyTorch peer's precisions under the JAX rows' dtype names.
TORCH_DTYPES = {"bf16": "bfloat16", "tf32": "float32", "fp32": "float32_strict"}
# PyTorch cases, most important first: AMP bf16 + channels_last eager and compiled, then TF32.
TORCH_CASES = ("resnet50:224:256:bf16", "resnet50:224:256:bf16:compile", "xception:299:256:bf16",
               "npr:224:32:bf16", "npr:224:32:tf32", "resnet50:224:256:tf32", "xception:299:256:tf32",
               "xception:299:256:bf16:compile", "npr:224:32:bf16:compile")
QUICK_TORCH_CASES = ("resnet50:32:2:bf16", "npr:32:2:bf16:compile", "xception:32:2:tf32")
PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint",
            "grain", "tensorflow-datasets", "numpy", "torch", "torchvision", "timm", "open_clip_torch")
ENV_KEYS = ("XLA_FLAGS", "JAX_PLATFORMS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
            "CUDA_VISIBLE_DEVICES", "PYTHONPATH", "JAX_COMPILATION_CACHE_DIR", "NVIDIA_TF32_OVERRIDE")


def known_peak(device_kind, dtype):
  """The dense peak TFLOP/s of one device of `device_kind` for rows of `dtype` (0.0: unknown)."""
  return KNOWN_PEAKS.get(device_kind, {}).get(str(dtype), 0.0)


def machine():
  """The machine as the report states it: GPU and driver (nvidia-smi), cores, Python, package
  versions and the environment that changes what XLA and PyTorch do."""
  try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    smi = ""
  versions = {}
  for p in PACKAGES:
    try:
      versions[p] = importlib.metadata.version(p)
    except importlib.metadata.PackageNotFoundError:
      pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": smi or "none (nvidia-smi: absent)",
          "cores": cores, "python": platform.python_version(), "machine": platform.machine(),
          "packages": versions, "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ}}


def _child(cmd, log_path, until, rows, name):
  """Runs `cmd` from the repository root until the Unix time `until` (then kills it: its rows are
  already on disk) with its output in `log_path`; a kill or a failure becomes a row."""
  with open(log_path, "a") as log:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
      code = proc.wait(timeout=max(until - time.time(), 1.0))
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
      rows.write({"task": name, "status": "killed", "reason": "deadline reached while it ran"})
      return
  if code:
    rows.write({"task": name, "status": "error", "error": f"exit status {code} (see {os.path.basename(log_path)})"})


def check(out, deadline_s=540.0, torch_share=0.35, quick=False, peer_python=None, steps=20):
  """The whole check into the folder `out` (module docstring); returns the report's text."""
  start = time.time()
  end = start + deadline_s
  os.makedirs(out, exist_ok=True)
  rows_path = os.path.join(out, "rows.jsonl")
  if os.path.exists(rows_path):
    os.remove(rows_path)  # A new check: rows of an earlier one would mix into the report.
  rows = deadline.Rows(rows_path)
  with open(os.path.join(out, "machine.json"), "w") as f:
    json.dump(machine(), f, indent=1)
  peer = peer_python if peer_python is not None else sys.executable
  jax_until = end - (deadline_s * torch_share if peer else 0.0)
  cmd = [sys.executable, "-m", "fakejax.benchmark", "--suite=gpu", f"--out={os.path.abspath(rows_path)}",
         f"--deadline_at={jax_until - 10}", f"--steps={steps}", f"--warmup={3 if not quick else 1}"]
  _child(cmd + (["--quick"] if quick else []), os.path.join(out, "jax.log"), jax_until, rows, "jax")
  if peer:
    cases = QUICK_TORCH_CASES if quick else TORCH_CASES
    cmd = [peer, "-m", "scripts.torch_peer", f"--out={os.path.abspath(rows_path)}",
           f"--deadline_at={end - 10}", f"--steps={steps}", f"--warmup={3 if not quick else 1}",
           f"--needs_s={5 if quick else 20}"] + [f"--case={c}" for c in cases]
    _child(cmd, os.path.join(out, "torch.log"), end - 5, rows, "torch")
  text = report(deadline.read_rows(rows_path), machine_info=json.load(open(os.path.join(out, "machine.json"))))
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(text)
  return text


# ---------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------
def _dtype(row):
  return TORCH_DTYPES.get(row.get("dtype"), row.get("dtype"))


def with_mfu(rows):
  """Rows with 'tflops' (fixed FLOPs), 'mfu_peak' and 'mfu_ceiling' where known."""
  ceilings = {r["dtype"]: r["achieved_tflops"] for r in rows if r.get("kind") == "matmul"}
  out = []
  for r in rows:
    r = dict(r)
    gflops = FORWARD_GFLOPS.get((r.get("model"), r.get("image_size")))
    if gflops and r.get("kind") in ("train", "eval") and r.get("images_per_s"):
      per_image = gflops * (3 if r["kind"] == "train" else 1)
      r["tflops"] = r["images_per_s"] * per_image / 1e3
      dtype = _dtype(r) if _dtype(r) != "float32_strict" else ""
      peak = known_peak(r.get("device", ""), dtype)
      if peak:
        r["mfu_peak"] = r["tflops"] / peak
      if ceilings.get(dtype):
        r["mfu_ceiling"] = r["tflops"] / ceilings[dtype]
    out.append(r)
  return out


def _fmt(v, digits=4):
  if isinstance(v, bool):
    return "yes" if v else "no"
  if isinstance(v, float):
    return f"{v:.{digits}g}"
  return "" if v is None else str(v)


def _table(rows, cols):
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
  return lines


def _best_torch(rows, model, size, dtype, kind, compiled=None):
  cands = [r for r in rows if r.get("framework") == "torch" and r.get("status") == "ok"
           and (r.get("model"), r.get("image_size"), _dtype(r), r.get("kind")) == (model, size, dtype, kind)
           and (compiled is None or r.get("compiled") == compiled)]
  return max(cands, key=lambda r: r["images_per_s"]) if cands else None


def report(rows, machine_info=None):
  """The Markdown report of a check's rows: the machine, every measured row with MFU, fakejax
  beside PyTorch, the goals, and what did not run."""
  rows = with_mfu(rows)
  ok = [r for r in rows if r.get("status") == "ok"]
  lines = ["# GPU check", ""]
  if machine_info:
    lines += [f"- date: {machine_info['date']}; GPU: {machine_info['gpu']}; cores: {machine_info['cores']}; "
              f"Python {machine_info['python']} ({machine_info['machine']})",
              "- packages: " + ", ".join(f"{k} {v}" for k, v in machine_info["packages"].items()),
              "- environment: " + (", ".join(f"{k}={v}" for k, v in machine_info["env"].items()) or "none set")]
  dev = next((r for r in ok if r.get("kind") == "devices"), None)
  if dev:
    lines.append(f"- JAX devices: {dev['n_devices']} x {dev['device']} ({dev['platform']}, "
                 f"{dev.get('platform_version', '')}); compilation cache {dev['compilation_cache_dir']} "
                 f"({dev['cache_entries_at_start']} entries at start)")
  lines += ["", "## Matmul ceilings (measured)", ""]
  lines += _table([r for r in ok if r.get("kind") == "matmul"], ["dtype", "n", "step_s_median", "achieved_tflops"])
  steps = [r for r in ok if r.get("kind") in ("train", "eval")]
  lines += ["", "## Steps (img/s: median of the timed steps; MFU: fixed FLOPs over the dtype's peak and the "
            "measured ceiling)", ""]
  lines += _table(steps, ["framework", "model", "image_size", "kind", "dtype", "compiled", "batch", "images_per_s",
                          "step_s_median", "compile_s", "compile_cache", "tflops", "mfu_peak", "mfu_ceiling"])
  compare = []
  for r in [r for r in steps if r["framework"] == "jax"]:
    for compiled in (False, True):
      t = _best_torch(ok, r["model"], r["image_size"], r["dtype"], r["kind"], compiled)
      if t:
        compare.append({"model": r["model"], "kind": r["kind"], "dtype": r["dtype"],
                        "torch": "torch.compile" if compiled else "eager", "fakejax_img_s": r["images_per_s"],
                        "torch_img_s": t["images_per_s"], "ratio": r["images_per_s"] / t["images_per_s"]})
  lines += ["", "## fakejax / PyTorch (AMP bf16 or TF32, channels_last; same card, same call)", ""]
  lines += _table(compare, ["model", "kind", "dtype", "torch", "fakejax_img_s", "torch_img_s", "ratio"])
  other = [r for r in ok if r.get("kind") in ("pipeline", "training_run")]
  if other:
    lines += ["", "## Input pipeline and a real training run", ""]
    lines += _table(other, ["kind", "storage", "workers", "image_size", "batch", "images_per_s", "steps", "wall_s",
                            "loss_first", "loss_last", "loss_falls", "test_accuracy"])
  lines += ["", "## Goals", ""] + goals(ok)
  missing = [r for r in rows if r.get("status") != "ok"]
  if missing:
    lines += ["", "## Not measured", ""]
    lines += [f"- {r['task']}: {r['status']}: {r.get('error') or r.get('reason', '')}"
              + (f" (batch {r['batch']})" if r.get("batch") else "") for r in missing]
  return "\n".join(lines) + "\n"


def goals(ok):
  """The GPU goals (docs/performance.md) against this check's rows, one line each."""
  jax_r50 = next((r for r in ok if r.get("framework") == "jax" and r.get("model") == "resnet50"
                  and r.get("kind") == "train" and r.get("dtype") == "bfloat16"), None)
  torch_r50 = _best_torch(ok, "resnet50", 224, "bfloat16", "train")
  raw = next((r for r in ok if r.get("kind") == "pipeline" and r.get("storage") == "raw"), None)
  out = []
  if jax_r50:
    out.append(f"- ResNet-50@{jax_r50['image_size']} bf16 training >= 3,000 img/s: "
               f"{jax_r50['images_per_s']:.0f} img/s ({'met' if jax_r50['images_per_s'] >= 3000 else 'not met'})")
    if torch_r50:
      ratio = jax_r50["images_per_s"] / torch_r50["images_per_s"]
      out.append(f"- ResNet-50 bf16 training >= 1.2x PyTorch AMP + channels_last (its faster of eager and "
                 f"compiled, {torch_r50['images_per_s']:.0f} img/s): {ratio:.2f}x ({'met' if ratio >= 1.2 else 'not met'})")
    if raw:
      out.append(f"- the input pipeline (raw, {raw['workers']} workers, {raw['image_size']} px) keeps up with "
                 f"that step: {raw['images_per_s']:.0f} vs {jax_r50['images_per_s']:.0f} img/s "
                 f"({'met' if raw['images_per_s'] >= jax_r50['images_per_s'] else 'not met'})")
  return out or ["- no ResNet-50 bf16 training row: nothing to judge"]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check", help="Output folder ($OUT on the device).")
  p.add_argument("--deadline_s", type=float, default=540.0, help="The whole check's time, from now.")
  p.add_argument("--torch_share", type=float, default=0.35, help="Share of the time kept for PyTorch.")
  p.add_argument("--quick", action="store_true", help="Tiny models and batches (the CPU rehearsal).")
  p.add_argument("--peer_python", default=None, help="Interpreter of the PyTorch peer (default: this "
                 "one; '' : no peer).")
  p.add_argument("--steps", type=int, default=20, help="Timed steps per row.")
  p.add_argument("--part", default="all", choices=("all", "report"), help="'report': rebuild it from OUT.")
  p.add_argument("--strict", action="store_true", help="Exit 1 when a task did not finish (the rehearsal).")
  args = p.parse_args(argv)
  if args.part == "report":
    info_path = os.path.join(args.out, "machine.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else None
    text = report(deadline.read_rows(os.path.join(args.out, "rows.jsonl")), info)
  else:
    text = check(args.out, args.deadline_s, args.torch_share, args.quick, args.peer_python,
                 args.steps if not args.quick else 2)
  print(text)
  unfinished = [r["task"] for r in deadline.read_rows(os.path.join(args.out, "rows.jsonl"))
                if r.get("status") not in ("ok", "oom")]
  if args.strict and unfinished:
    sys.exit(f"gpu_check: {len(unfinished)} task(s) did not finish: {', '.join(unfinished)}")


if __name__ == "__main__":
  main()
