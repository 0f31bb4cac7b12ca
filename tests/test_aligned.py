"""Stable Diffusion's autoencoder (models.vae) and aligned training data (fakejax.aligned).

Without PyTorch: the JPEG settings read back from files PIL wrote at known qualities, and an
aligned folder built through a small random autoencoder (its layout, its splits, the fakes' JPEG,
a resumed build, prepare reading it). With diffusers (make test-torch): the autoencoder against
diffusers' AutoencoderKL with random weights, fp32 and bf16, from a diffusers folder and from a
single file in the original (LDM) key names; and an aligned folder against DDA's reconstruction
written with diffusers (vae_rec.py's steps, the posterior's mode).
"""

import io
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_png
from fakejax import aligned
from fakejax import convert
from fakejax import datasets
from fakejax.datasets import images
from fakejax.models import vae


@pytest.mark.parametrize("quality", [10, 35, 50, 65, 75, 90, 96, 100])
def test_jpeg_quality_is_read_from_the_tables(tmp_path, quality):
  rgb = np.random.RandomState(quality).randint(0, 256, (40, 48, 3), np.uint8)
  Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=quality)
  settings = images.jpeg_settings(str(tmp_path / "a.jpg"))
  assert settings["quality"] == quality
  # The same file again, from its own tables: the pixels PIL decodes from the original.
  np.testing.assert_array_equal(images.jpeg_like(rgb, settings), np.asarray(Image.open(tmp_path / "a.jpg")))
  write_png(tmp_path / "b.png", rgb)
  assert images.jpeg_settings(str(tmp_path / "b.png")) is None


def _reals(root, n=6):
  """Real images of sizes that are not multiples of 8: PNGs, and JPEGs at qualities 70 and 95."""
  rng = np.random.RandomState(0)
  for i in range(n):
    rgb = rng.randint(0, 256, (33 + 3 * i, 41 + i, 3), np.uint8)
    path = os.path.join(root, "sub" if i % 2 else "", f"im{i}")
    os.makedirs(os.path.dirname(path + ".x"), exist_ok=True)
    if i % 3 == 0:
      write_png(path + ".png", rgb)
    else:
      Image.fromarray(rgb).save(path + ".jpg", quality=70 if i % 3 == 1 else 95)


def _source(reals, f):
  """The real image file an aligned file (name/split/label/path.png) was made from."""
  stem = os.path.join(reals, os.path.splitext(f.split("/", 3)[3])[0])
  return next(stem + e for e in (".png", ".jpg") if os.path.exists(stem + e))


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                if f.endswith(".png"))


def _assert_same_pixels(got, want, jpeg):
  """Equal but where float noise moves a value across an integer (another batch, another library);
  a JPEG spreads such a flip over its block."""
  diff = np.abs(got.astype(int) - want)
  if jpeg:
    assert diff.mean() < 0.5
  else:
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-2


def test_an_aligned_folder_pairs_each_real_with_its_reconstruction(tmp_path):
  reals, out = str(tmp_path / "reals"), str(tmp_path / "aligned")
  _reals(reals)
  model = vae.create("small", seed=1)
  m = aligned.build(reals, out, model, name="small_vae", batch=2, fake_jpeg="match", fractions=(1, 1, 1))
  assert m["pairs"] == 6 and m["made_now"] == 6 and m["jpeg_qualities"] == {"70": 2, "95": 2}
  files = _files(out)
  real = [f for f in files if "/0_real/" in f]
  assert len(real) == 6 and [f.replace("/0_real/", "/1_fake/") for f in real] == [f for f in files if "/1_fake/" in f]
  recon = aligned.Reconstructor(model, latent="sample")
  for f in real:
    name, split, _, rel = f.split("/", 3)
    assert name == "small_vae" and split in ("train", "val", "test")
    src = _source(reals, f)
    want_real = aligned.center_crop(images.load_rgb(src)[0], 8)
    got_real = np.asarray(Image.open(os.path.join(out, f)))
    np.testing.assert_array_equal(got_real, want_real)  # The real, cropped, pixel for pixel.
    fake = recon(want_real[None], jnp.stack([aligned.image_key(0, os.path.relpath(src, reals))]))[0]
    settings = images.jpeg_settings(src)
    want_fake = fake if settings is None else images.jpeg_like(fake, settings)
    got_fake = np.asarray(Image.open(os.path.join(out, f.replace("/0_real/", "/1_fake/"))))
    _assert_same_pixels(got_fake, want_fake, jpeg=settings is not None)
  # Killed half-way: the pairs on disk stay, the rest is made, the same files.
  before = {f: open(os.path.join(out, f), "rb").read() for f in files}
  for f in real[3:]:
    os.remove(os.path.join(out, f))
  m = aligned.build(reals, out, model, name="small_vae", batch=2, fake_jpeg="match", fractions=(1, 1, 1))
  assert (m["kept_from_before"], m["made_now"]) == (3, 3)
  assert _files(out) == files
  for f in files:  # The reals byte for byte; a remade fake but for float noise (other batches).
    if "/0_real/" in f or f.replace("/1_fake/", "/0_real/") in real[:3]:
      assert open(os.path.join(out, f), "rb").read() == before[f], f
    else:
      _assert_same_pixels(np.asarray(Image.open(os.path.join(out, f))), np.asarray(Image.open(io.BytesIO(before[f]))),
                          jpeg=images.jpeg_settings(_source(reals, f)) is not None)
  # prepare reads it: one generator, every real paired with its fake in the same split.
  ds, _ = datasets.prepare_folder(out, str(tmp_path / "ds"), workers=0)
  assert ds.class_names == ("real", "small_vae") and ds.meta["layout"] == "general"
  pairs = 0
  for split in ds.splits:
    idx = ds.index(split)
    reals = sorted(p.replace("/0_real/", "/") for p in idx["path"][idx["label"] == 0])
    assert reals == sorted(p.replace("/1_fake/", "/") for p in idx["path"][idx["label"] == 1])
    assert set(idx["source"][idx["label"] == 1]) == {"small_vae"} and ds.paired_reals(split, "small_vae").sum() == len(reals)
    pairs += len(reals)
  assert pairs == 6


def test_a_drawn_latent_does_not_depend_on_the_batch(tmp_path):
  model = vae.create("small", seed=2)
  recon = aligned.Reconstructor(model, latent="sample")
  px = np.random.RandomState(3).randint(0, 256, (3, 16, 24, 3), np.uint8)
  keys = jnp.stack([aligned.image_key(5, f"x{i}") for i in range(3)])
  whole = recon(px, keys)
  alone = np.concatenate([recon(px[i:i + 1], keys[i:i + 1]) for i in range(3)])
  _assert_same_pixels(whole, alone, jpeg=False)
  mode = aligned.Reconstructor(model, latent="mode")(px, keys)
  assert np.abs(whole.astype(int) - mode).max() > 0  # A draw is not the mean.


# ---------------------------------------------------------------------------
# Against diffusers (make test-torch).
# ---------------------------------------------------------------------------
def _diffusers_vae(seed=0, widths=(32, 64), groups=8):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  torch.manual_seed(seed)
  ref = diffusers.AutoencoderKL(block_out_channels=widths, layers_per_block=1, latent_channels=4,
                                norm_num_groups=groups, down_block_types=("DownEncoderBlock2D",) * len(widths),
                                up_block_types=("UpDecoderBlock2D",) * len(widths))
  with torch.no_grad():  # GroupNorms start at 1 / 0: move them so they count.
    for name, p in ref.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return torch, ref.eval()


def _reference(torch, ref, x):
  with torch.no_grad():
    post = ref.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latent_dist
    dec = ref.decode(post.mode()).sample
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
  return nhwc(post.mean), nhwc(post.logvar), nhwc(dec)


@pytest.mark.torch
def test_the_autoencoder_matches_diffusers(tmp_path):
  torch, ref = _diffusers_vae()
  ref.save_pretrained(str(tmp_path / "vae"), safe_serialization=True)
  x = np.random.RandomState(0).uniform(-1, 1, (2, 32, 48, 3)).astype(np.float32)
  mean_t, logvar_t, dec_t = _reference(torch, ref, x)
  model = convert.load_diffusers_vae(str(tmp_path / "vae"))
  mean, logvar = model.encode(jnp.asarray(x))
  for ours, theirs in ((mean, mean_t), (logvar, logvar_t), (model(jnp.asarray(x)), dec_t)):
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)  # Measured: <= 5e-6.
  # bf16 compute (parameters float32, GroupNorm and softmax float32): measured max 0.04, mean 0.006.
  dec = convert.load_diffusers_vae(str(tmp_path / "vae"), dtype="bfloat16")(jnp.asarray(x))
  assert np.abs(dec - dec_t).max() < 0.1 and np.abs(dec - dec_t).mean() < 0.02
  assert np.abs(dec - dec_t).mean() > 0  # It did compute in bf16.


def _to_ldm(sd, levels):
  """diffusers' keys -> the original single-file ones (what Stability's .safetensors hold)."""
  out = {}
  for k, v in sd.items():
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
    k = re.sub(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.",
               lambda m: f"decoder.up.{levels - 1 - int(m[1])}.{'block' if m[2] == 'resnets' else 'upsample'}.", k)
    for new, old in (("mid_block.resnets.0", "mid.block_1"), ("mid_block.resnets.1", "mid.block_2"),
                     ("mid_block.attentions.0.group_norm", "mid.attn_1.norm"),
                     ("mid_block.attentions.0.to_q", "mid.attn_1.q"), ("mid_block.attentions.0.to_k", "mid.attn_1.k"),
                     ("mid_block.attentions.0.to_v", "mid.attn_1.v"),
                     ("mid_block.attentions.0.to_out.0", "mid.attn_1.proj_out"),
                     ("conv_shortcut", "nin_shortcut"), ("conv_norm_out", "norm_out")):
      k = k.replace(f".{new}.", f".{old}.")
    out["first_stage_model." + k] = v[:, :, None, None] if ".attn_1." in k and v.ndim == 2 else v
  return out


@pytest.mark.torch
def test_a_single_file_in_the_original_names_matches_diffusers(tmp_path):
  torch, ref = _diffusers_vae(seed=1, widths=(32, 32, 64), groups=32)  # A single file's groups: SD's 32.
  from diffusers.loaders import single_file_utils  # pylint: disable=g-import-not-at-top
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
  ldm = _to_ldm(sd, 3)
  # The test's own renaming, checked by diffusers' converter of single files.
  back = single_file_utils.convert_ldm_vae_checkpoint(ldm, dict(ref.config))
  assert set(back) == set(sd) and all(torch.equal(back[k].reshape(sd[k].shape), sd[k]) for k in sd)
  save_file(ldm, str(tmp_path / "sd.safetensors"))
  model = convert.load_diffusers_vae(str(tmp_path / "sd.safetensors"))
  assert model.scaling_factor == 0.18215 and model.factor == 4
  x = np.random.RandomState(1).uniform(-1, 1, (1, 32, 40, 3)).astype(np.float32)
  np.testing.assert_allclose(model(jnp.asarray(x)), _reference(torch, ref, x)[2], atol=1e-4, rtol=1e-4)


@pytest.mark.torch
def test_an_aligned_folder_is_dda_reconstruction_with_diffusers(tmp_path):
  torch, ref = _diffusers_vae(seed=2)
  ref.save_pretrained(str(tmp_path / "vae"), safe_serialization=True)
  reals, out = str(tmp_path / "reals"), str(tmp_path / "aligned")
  _reals(reals, n=4)
  model, info = aligned.load_autoencoder(str(tmp_path / "vae"))
  aligned.build(reals, out, model, latent="mode", fake_jpeg="match", batch=3, info=info)
  for f in [f for f in _files(out) if "/1_fake/" in f]:
    src = _source(reals, f)
    # DDA's vae_rec.py: PIL crop to multiples of 8, x / 255 -> [-1, 1], encode, decode, (d + 1) / 2 * 255,
    # clip, astype(uint8); then its trainer's JPEG_Compression at the real's quality.
    img = Image.open(src).convert("RGB")
    w, h = img.size
    img = img.crop(((w - w // 8 * 8) // 2, (h - h // 8 * 8) // 2, (w - w // 8 * 8) // 2 + w // 8 * 8,
                    (h - h // 8 * 8) // 2 + h // 8 * 8))
    x = torch.from_numpy(np.array(img)).float().div(255.0).permute(2, 0, 1)[None] * 2.0 - 1.0
    with torch.no_grad():
      d = ref.decode(ref.encode(x).latent_dist.mode()).sample
    want = (((d + 1.0) / 2.0)[0].permute(1, 2, 0).numpy() * 255).clip(0, 255).astype(np.uint8)
    got = np.asarray(Image.open(os.path.join(out, f)))
    if src.endswith(".jpg"):
      buf = io.BytesIO()
      Image.fromarray(want).save(buf, format="JPEG", quality=images.jpeg_settings(src)["quality"])
      want = np.asarray(Image.open(buf))
    _assert_same_pixels(got, want, jpeg=src.endswith(".jpg"))
