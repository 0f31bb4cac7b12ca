"""The PyTorch side of `fakejax.benchmark --input data --peer torch`: a DataLoader over PNG files.

  python scripts/torch_pipeline_peer.py FOLDER CROP BATCH WORKERS BATCHES

What a PyTorch detector script does (CNNDetection's is this): an ImageFolder-style tree of PNG
files, PIL decoding, RandomCrop + RandomHorizontalFlip, uint8 tensors batched by a DataLoader
with WORKERS worker processes. Times BATCHES batches after 10 warm-up batches (the workers'
prefetch buffers fill while nothing is timed) and prints one JSON line.
"""

import json
import os
import sys
import time


def main():
  folder, crop, batch, workers, batches = sys.argv[1], *map(int, sys.argv[2:6])
  try:
    import numpy as np
    from PIL import Image
    import torch
  except ImportError as e:
    sys.exit(f"PyTorch is not installed in this interpreter ({e}; see --peer_python)")
  torch.set_num_threads(1)

  class Folder(torch.utils.data.Dataset):
    """PNG files below `folder`, labelled by their first folder (0_real / 1_fake)."""

    def __init__(self):
      self.files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
                          if f.endswith(".png"))

    def __len__(self):
      return len(self.files)

    def __getitem__(self, i):
      with Image.open(self.files[i]) as im:
        img = np.asarray(im.convert("RGB"))
      h, w = img.shape[:2]
      y, x = np.random.randint(0, h - crop + 1), np.random.randint(0, w - crop + 1)
      img = img[y:y + crop, x:x + crop]
      if np.random.rand() < 0.5:
        img = img[:, ::-1]
      return torch.from_numpy(np.ascontiguousarray(img)), int("1_fake" in self.files[i])

  loader = torch.utils.data.DataLoader(Folder(), batch_size=batch, shuffle=True, drop_last=True,
                                       num_workers=workers, persistent_workers=workers > 0)
  def forever():
    while True:
      yield from loader
  it = forever()
  for _ in range(10):
    next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  dt = time.perf_counter() - t
  print(json.dumps({"kind": "pipeline", "model": "torch DataLoader", "image_size": crop, "batch": batch,
                    "workers": workers, "batches": batches, "step_s_median": dt / batches,
                    "images_per_s": batches * batch / dt, "torch": torch.__version__}))


if __name__ == "__main__":
  main()
