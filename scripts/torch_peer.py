"""The PyTorch side of `fakejax.benchmark --peer torch` (run in its own process).

  python scripts/torch_peer.py MODEL IMAGE_SIZE BATCH STEPS WARMUP [KINDS]

torchvision ResNet-50/101 / MobileNetV2, timm's legacy_xception, or open_clip's CLIP image
encoder (ViT-L-14 / ViT-B-16, QuickGELU) with a linear head; the same batch, image size and
optimizer (Adam), float32, channels_last. KINDS: 'train,eval' (default) or 'eval'. Prints one
JSON line per step kind.
"""

import json
import statistics
import sys
import time


def main():
  model_name, size, batch, steps, warmup = sys.argv[1], *map(int, sys.argv[2:6])
  kinds = (sys.argv[6] if len(sys.argv) > 6 else "train,eval").split(",")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.exit("PyTorch is not installed in this interpreter (see --peer_python)")
  if model_name in ("resnet50", "resnet101", "mobilenet_v2"):
    try:
      import torchvision  # pylint: disable=g-import-not-at-top
    except ImportError:
      sys.exit("torchvision is not installed")
    model = getattr(torchvision.models, model_name)(num_classes=2)
  elif model_name == "xception":
    try:
      import timm  # pylint: disable=g-import-not-at-top
    except ImportError:
      sys.exit("timm is not installed (needed for legacy_xception)")
    model = timm.create_model("legacy_xception", num_classes=2, pretrained=False)
  elif model_name in ("clip_vit_l14", "clip_vit_b16"):
    try:
      import open_clip  # pylint: disable=g-import-not-at-top
    except ImportError:
      sys.exit("open_clip is not installed (pip install open_clip_torch)")
    arch, dim = {"clip_vit_l14": ("ViT-L-14", 768), "clip_vit_b16": ("ViT-B-16", 512)}[model_name]
    visual = open_clip.create_model(arch, pretrained=None, force_quick_gelu=True).visual
    model = torch.nn.Sequential(visual, torch.nn.Linear(dim, 2))
  else:
    sys.exit(f"no PyTorch equivalent for {model_name}")
  model = model.to(memory_format=torch.channels_last)
  opt = torch.optim.Adam(model.parameters(), 1e-3)
  x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
  y = torch.randint(0, 2, (batch,))

  def train_step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()

  def eval_step():
    with torch.inference_mode():
      model(x)

  for kind, fn in [(k, f) for k, f in (("train", train_step), ("eval", eval_step)) if k in kinds]:
    model.train(kind == "train")
    for _ in range(warmup):
      fn()
    times = []
    for _ in range(steps):
      t = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(json.dumps({"kind": kind, "model": f"torch:{model_name}", "image_size": size, "batch": batch,
                      "dtype": "float32", "step_s_median": med, "images_per_s": batch / med,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
