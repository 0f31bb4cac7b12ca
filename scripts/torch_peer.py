r"""The PyTorch side of fakejax's speed comparisons (`fakejax.benchmark --peer torch`, and
`fakejax.gpu_check` on a GPU, after the JAX process has exited), run from the repository root:

  python -m scripts.torch_peer --case resnet50:224:256:bf16 --case resnet50:224:256:bf16:compile \
      [--kinds train,eval] [--device auto] [--steps 20] [--warmup 3] [--out ROWS.jsonl] \
      [--deadline_at UNIX_TIME]

A case is MODEL:SIZE:BATCH:PRECISION[:compile]:
  MODEL      resnet50, resnet101, mobilenet_v2 (torchvision), xception (timm's legacy_xception),
             npr (NPR's truncated ResNet-50 with its residual front and one logit, trained with
             BCE: scripts/torch_nets.py), clip_vit_l14, clip_vit_b16 (open_clip's image tower,
             QuickGELU, with a linear head).
  PRECISION  fp32 (strict float32), tf32 (float32 inputs, TF32 tensor cores for matmuls and
             convolutions), bf16 (torch.autocast to bfloat16: PyTorch's AMP; the weights, the
             optimizer and the loss stay float32).
  compile    the model wrapped in torch.compile (default mode); its compilation is the time of
             the first step, reported as compile_s.
Always channels_last inputs and weights, Adam, one optimizer step per train step. On CUDA every
timed step ends with torch.cuda.synchronize(). Cases run in order under --deadline_at; out of
memory, a case runs again at half its batch (fakejax.deadline). One JSON row per (case, kind) on
stdout, and appended to --out as it comes.
"""

import argparse
import json
import statistics
import sys
import time

from fakejax import deadline

MODELS = ("resnet50", "resnet101", "mobilenet_v2", "xception", "npr", "clip_vit_l14", "clip_vit_b16")
PRECISIONS = ("fp32", "tf32", "bf16")


def parse_case(spec):
  """'resnet50:224:256:bf16[:compile]' -> dict(model, size, batch, precision, compiled)."""
  parts = spec.split(":")
  if len(parts) not in (4, 5) or (len(parts) == 5 and parts[4] != "compile"):
    raise ValueError(f"--case {spec!r}: expected MODEL:SIZE:BATCH:PRECISION[:compile]")
  model, size, batch, precision = parts[:4]
  if model not in MODELS:
    raise ValueError(f"--case {spec!r}: unknown model {model!r}; known: {', '.join(MODELS)}")
  if precision not in PRECISIONS:
    raise ValueError(f"--case {spec!r}: unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
  return {"model": model, "size": int(size), "batch": int(batch), "precision": precision,
          "compiled": len(parts) == 5}


def build(torch, name):
  """(model with `outputs` logits, outputs) of a MODEL name."""
  if name in ("resnet50", "resnet101", "mobilenet_v2"):
    import torchvision
    return getattr(torchvision.models, name)(num_classes=2), 2
  if name == "npr":
    import torchvision
    from scripts import torch_nets
    return torch_nets.truncated_resnet50(torch, torchvision, torch_nets.npr_front(torch), 1), 1
  if name == "xception":
    import timm
    return timm.create_model("legacy_xception", num_classes=2, pretrained=False), 2
  import open_clip
  arch, dim = {"clip_vit_l14": ("ViT-L-14", 768), "clip_vit_b16": ("ViT-B-16", 512)}[name]
  visual = open_clip.create_model(arch, pretrained=None, force_quick_gelu=True).visual
  return torch.nn.Sequential(visual, torch.nn.Linear(dim, 2)), 2


def measure(torch, case, kinds, device, steps, warmup):
  """Rows of one case: one per kind ('train', 'eval')."""
  if device.type == "cuda":
    torch.cuda.empty_cache()  # What an earlier case (or an out-of-memory attempt) left cached.
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = case["precision"] == "tf32"
  model, outputs = build(torch, case["model"])
  model = model.to(device, memory_format=torch.channels_last)
  opt = torch.optim.Adam(model.parameters(), 1e-3)
  b, s = case["batch"], case["size"]
  x = torch.randn(b, 3, s, s, device=device).to(memory_format=torch.channels_last)
  y = torch.randint(0, 2, (b,), device=device)
  run_model = torch.compile(model) if case["compiled"] else model
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=case["precision"] == "bf16")
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

  def loss_of(logits):
    logits = logits.float()
    if outputs == 1:
      return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.float())
    return torch.nn.functional.cross_entropy(logits, y)

  def train_step():
    opt.zero_grad(set_to_none=True)
    with autocast:
      loss = loss_of(run_model(x))
    loss.backward()
    opt.step()

  def eval_step():
    with torch.inference_mode(), autocast:
      run_model(x)

  rows = []
  for kind, fn in (("train", train_step), ("eval", eval_step)):
    if kind not in kinds:
      continue
    model.train(kind == "train")
    t = time.perf_counter()
    fn()  # Compiles (torch.compile, cuDNN's algorithm search) and allocates.
    sync()
    first = time.perf_counter() - t
    for _ in range(warmup):
      fn()
    sync()
    times = []
    for _ in range(steps):
      t = time.perf_counter()
      fn()
      sync()
      times.append(time.perf_counter() - t)
    med = statistics.median(times)
    rows.append({"kind": kind, "framework": "torch", "model": case["model"], "image_size": s, "batch": b,
                 "dtype": case["precision"], "compiled": case["compiled"], "channels_last": True,
                 "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "compile_s": round(first, 3), "step_s_median": med, "step_s_min": min(times),
                 "step_s_max": max(times), "images_per_s": b / med, "torch": torch.__version__,
                 "threads": torch.get_num_threads()})
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--case", action="append", required=True, help="MODEL:SIZE:BATCH:PRECISION[:compile]")
  p.add_argument("--kinds", default="train,eval", help="Steps timed: train, eval or both.")
  p.add_argument("--device", default="auto", help="'auto' (CUDA when there is one), 'cuda' or 'cpu'.")
  p.add_argument("--steps", type=int, default=10, help="Timed steps (the median is reported).")
  p.add_argument("--warmup", type=int, default=2, help="Untimed steps after the first.")
  p.add_argument("--out", default="", help="Also append the rows to this JSON-lines file.")
  p.add_argument("--deadline_at", type=float, default=0.0, help="Unix time after which no case starts.")
  p.add_argument("--needs_s", type=float, default=0.0, help="Time a case may take: none starts with less left.")
  p.add_argument("--keep_freed_memory", action="store_true", help="glibc's allocator as fakejax's CPU "
                 "commands set it (cli.keep_freed_host_memory): PyTorch beside them on equal terms.")
  args = p.parse_args(argv)
  if args.keep_freed_memory:
    from fakejax import cli
    cli.keep_freed_host_memory()
  try:
    cases = [parse_case(c) for c in args.case]
  except ValueError as e:
    p.error(str(e))
  try:
    import torch
  except ImportError:
    sys.exit("PyTorch is not installed in this interpreter (see --peer_python)")
  device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                        else "cpu" if args.device == "auto" else args.device)
  kinds = args.kinds.split(",")

  class Out:  # Rows to stdout, and to --out as they come.
    def write(self, row):
      print(json.dumps(row), flush=True)
      if args.out:
        deadline.Rows(args.out).write(row)

  tasks = [deadline.Task(f"torch:{c['model']}:{c['precision']}{':compile' if c['compiled'] else ''}",
                         lambda b, c=c: measure(torch, {**c, "batch": b}, kinds, device, args.steps,
                                                args.warmup),
                         batch=c["batch"], needs_s=args.needs_s) for c in cases]
  deadline.run(tasks, args.deadline_at or float("inf"), Out(), log=lambda m: print(m, file=sys.stderr))


if __name__ == "__main__":
  main()
