"""The PyTorch side of `fakejax.benchmark --peer torch` (run in its own process).

  python scripts/torch_peer.py MODEL IMAGE_SIZE BATCH STEPS WARMUP

torchvision ResNet-50/101 / MobileNetV2 or timm's legacy_xception; the same batch, image size
and optimizer (Adam), float32, channels_last. Prints one JSON line per step kind.
"""

import json
import statistics
import sys
import time


def main():
  model_name, size, batch, steps, warmup = sys.argv[1], *map(int, sys.argv[2:6])
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

  for kind, fn in (("train", train_step), ("eval", eval_step)):
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
