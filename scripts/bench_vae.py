r"""Throughput of the aligned-data step: Stable Diffusion's autoencoder, encode + decode, fakejax
(models.vae, jitted) against diffusers' AutoencoderKL on the same machine, same weights.

  .venv-torch/bin/python scripts/bench_vae.py --size 512 --batch 1 --repeats 2   # both (diffusers there)
  .venv/bin/python scripts/bench_vae.py --size 512 --batch 8 --dtype bfloat16     # fakejax alone (a GPU)

Random weights of the SD 1.x/2.x configuration (the same arrays in both: diffusers' module is
converted with fakejax.convert), one posterior mean per image (the draw costs nothing), inputs
uint8 -> [-1, 1] -> uint8 as fakejax.aligned does, each timing after a warm-up call (compilation
excluded), synchronised (block_until_ready / torch.no_grad on the CPU). Prints one JSON line.
"""

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def _timed(fn, repeats):
  fn()  # Warm-up: compilation, allocation.
  t = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - t) / repeats


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--size", type=int, default=512)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = p.parse_args()
  from fakejax import aligned  # pylint: disable=g-import-not-at-top
  from fakejax import convert  # pylint: disable=g-import-not-at-top
  from fakejax.models import vae  # pylint: disable=g-import-not-at-top
  pixels = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3), np.uint8)
  out = {"size": args.size, "batch": args.batch, "dtype": args.dtype, "device": str(jax.devices()[0]),
         "jax": jax.__version__}
  try:
    import diffusers  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    diffusers = None
  if diffusers is not None:
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(**{k: v for k, v in vae.CONFIGS["sd"].items()},
                                  down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4).eval()
    folder = tempfile.mkdtemp()
    ref.save_pretrained(folder, safe_serialization=True)
    model = convert.load_diffusers_vae(folder, dtype=args.dtype)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255.0) * 2 - 1

    def torch_step():
      with torch.no_grad():
        d = ref.decode(ref.encode(x).latent_dist.mode()).sample
      return ((d + 1) / 2 * 255).clamp(0, 255).to(torch.uint8)
    seconds = _timed(torch_step, args.repeats)
    out.update(diffusers=diffusers.__version__, torch=torch.__version__, torch_threads=torch.get_num_threads(),
               diffusers_img_s=args.batch / seconds)
  else:
    model = vae.create("sd", dtype=jnp.dtype(args.dtype))
  recon = aligned.Reconstructor(model, latent="mode")
  keys = jnp.stack([aligned.image_key(0, str(i)) for i in range(args.batch)])
  out["fakejax_img_s"] = args.batch / _timed(lambda: recon(pixels, keys), args.repeats)
  out["cores"] = os.cpu_count()
  print(json.dumps(out))


if __name__ == "__main__":
  main()
