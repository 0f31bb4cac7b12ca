"""CLIP's image encoder (models.vit) and UnivFD's released files (convert --from clip|univfd).

The key mapping is checked without PyTorch on hand-written state dicts with open_clip's names;
the forward against open_clip itself (its CLIP model, random weights) where PyTorch and
open_clip are installed (make test-torch); the whole UnivFD run (ViT-L/14, the published
preset, evaluate and predict) against open_clip + a linear head in a slow test there too.
"""

import csv
import os
import shutil
import subprocess
import sys

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.conftest import assert_bf16_like_amp
from tests.conftest import subprocess_env
from fakejax import convert
from fakejax import runs
from fakejax import models
from fakejax.models import vit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(depth=2, heads=4, hidden=64, image_size=56, patch=14, embed_dim=32)


def _small(single_logit=True, dtype=jnp.float32):
  return vit.ClipViT("clip_vit_l14", single_logit=single_logit, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0), **SMALL)


def clip_state_dict(width=64, layers=2, patch=14, grid=4, out=32, seed=0, text=True):
  """open_clip's CLIP state dict as open_clip_model.safetensors holds it, written by hand: the
  visual tower under 'visual.' and (ignored by us) a text tower and logit_scale."""
  rng = np.random.default_rng(seed)
  r = lambda *shape: rng.normal(0, 0.1, shape).astype(np.float32)
  sd = {"visual.conv1.weight": r(width, 3, patch, patch), "visual.class_embedding": r(width),
        "visual.positional_embedding": r(grid * grid + 1, width), "visual.proj": r(width, out)}
  for ln in ("ln_pre", "ln_post"):
    sd[f"visual.{ln}.weight"], sd[f"visual.{ln}.bias"] = 1 + r(width), r(width)
  for i in range(layers):
    p = f"visual.transformer.resblocks.{i}."
    sd.update({p + "ln_1.weight": 1 + r(width), p + "ln_1.bias": r(width), p + "ln_2.weight": 1 + r(width),
               p + "ln_2.bias": r(width), p + "attn.in_proj_weight": r(3 * width, width),
               p + "attn.in_proj_bias": r(3 * width), p + "attn.out_proj.weight": r(width, width),
               p + "attn.out_proj.bias": r(width), p + "mlp.c_fc.weight": r(4 * width, width),
               p + "mlp.c_fc.bias": r(4 * width), p + "mlp.c_proj.weight": r(width, 4 * width),
               p + "mlp.c_proj.bias": r(width)})
  if text:
    sd.update({"token_embedding.weight": r(100, 32), "transformer.resblocks.0.ln_1.weight": r(32),
               "logit_scale": np.array(4.6, np.float32)})
  return sd


def test_open_clip_state_dict_lands_where_the_names_say(tmp_path):
  sd = clip_state_dict()
  path = str(tmp_path / "open_clip_model.safetensors")
  save_file(sd, path)
  weights, info = convert.convert("clip", "clip_vit_l14", path)
  assert info["preprocess"] == "clip" and not any("token" in k for k in weights)
  model = _small()
  state = convert.init_model_state(nnx.state(model), weights, path)
  nnx.update(model, state)
  np.testing.assert_array_equal(model.patch_embed.kernel[...], sd["visual.conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(model.blocks[1].in_proj.kernel[...],
                                sd["visual.transformer.resblocks.1.attn.in_proj_weight"].T)
  np.testing.assert_array_equal(model.blocks[0].c_proj.bias[...], sd["visual.transformer.resblocks.0.mlp.c_proj.bias"])
  np.testing.assert_array_equal(model.proj[...], sd["visual.proj"])  # x @ proj, as open_clip.
  np.testing.assert_array_equal(model.ln_post.scale[...], sd["visual.ln_post.weight"])
  # The patch embedding by hand: patch (0, 1) of an image dotted with each filter.
  img = np.random.default_rng(3).normal(size=(1, 56, 56, 3)).astype(np.float32)
  got = np.asarray(model.patch_embed(jnp.asarray(img)))[0, 0, 1]
  want = np.einsum("hwc,ochw->o", img[0, 0:14, 14:28], sd["visual.conv1.weight"])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_clip_file_that_does_not_fit_names_the_keys(tmp_path):
  sd = clip_state_dict()
  sd["visual.attnpool.k_proj.weight"] = np.zeros((4, 4), np.float32)  # A ResNet CLIP's key.
  with pytest.raises(convert.ConversionError, match="attnpool.k_proj"):
    convert.from_clip(sd)
  sd = clip_state_dict()
  del sd["visual.transformer.resblocks.1.mlp.c_fc.bias"]
  with pytest.raises(ValueError, match="blocks/1/c_fc/bias"):
    convert.init_model_state(nnx.state(_small()), convert.from_clip(sd), "x")
  with pytest.raises(ValueError, match="56x56 inputs"):
    _small()(jnp.zeros((1, 64, 64, 3)))


def test_clip_preprocessing_is_openai_clips_normalize():
  """'clip' = ToTensor + Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD): by hand."""
  px = np.array([[[[0, 128, 255]]]], np.uint8)
  want = (px / 255.0 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array(
      [0.26862954, 0.26130258, 0.27577711])
  np.testing.assert_allclose(np.asarray(models.preprocess(px, "clip")), want, rtol=1e-6)
  assert models.resolve_preprocess("clip_vit_l14", "auto") == "clip"


def test_univfd_head_and_clip_become_a_run(tmp_path):
  """fc_weights.pth's {'weight', 'bias'} (here as safetensors) + a CLIP file -> a run whose head is
  the released linear layer; a head file of another shape or without --clip is refused."""
  fc = {"weight": np.random.default_rng(1).normal(size=(1, 768)).astype(np.float32),
        "bias": np.array([0.25], np.float32)}
  save_file(fc, str(tmp_path / "fc_weights.safetensors"))
  with pytest.raises(Exception, match="--clip"):
    convert.convert_published("univfd", str(tmp_path / "fc_weights.safetensors"), str(tmp_path / "run"))
  save_file(clip_state_dict(), str(tmp_path / "clip.safetensors"))
  save_file({"fc1.weight": fc["weight"]}, str(tmp_path / "bad.safetensors"))
  with pytest.raises(convert.ConversionError, match="fc_weights.pth"):
    convert.convert_published("univfd", str(tmp_path / "bad.safetensors"), str(tmp_path / "run"),
                              clip=str(tmp_path / "clip.safetensors"))
  assert not os.path.exists(tmp_path / "run")
  sd = clip_state_dict(text=False)
  got = convert._univfd_weights({**fc, **{f"model.{k}": v for k, v in sd.items()}}, None, "ckpt")
  np.testing.assert_array_equal(got["head/kernel"], fc["weight"].T)
  np.testing.assert_array_equal(got["blocks/0/ln_1/scale"], sd["visual.transformer.resblocks.0.ln_1.weight"])


# ---------------------------------------------------------------------------
# Against open_clip (make test-torch).
# ---------------------------------------------------------------------------
def _open_clip_small(seed=0):
  torch = pytest.importorskip("torch")
  open_clip = pytest.importorskip("open_clip")
  torch.manual_seed(seed)
  model = open_clip.model.CLIP(
      embed_dim=32, quick_gelu=True,
      vision_cfg=open_clip.model.CLIPVisionCfg(layers=2, width=64, head_width=16, patch_size=14, image_size=56),
      text_cfg=open_clip.model.CLIPTextCfg(context_length=8, vocab_size=100, width=32, heads=2, layers=1))
  with torch.no_grad():  # open_clip leaves LayerNorms at 1/0: move them so they count.
    for name, p in model.visual.named_parameters():
      if "ln" in name:
        p.add_(0.1 * torch.randn_like(p))
  return torch, model.eval()


@pytest.mark.torch
def test_clip_encoder_matches_open_clip(tmp_path):
  torch, ref = _open_clip_small()
  from safetensors.torch import save_file as torch_save_file  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "open_clip_model.safetensors")
  torch_save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
  torch.save(ref.state_dict(), str(tmp_path / "clip.pth"))
  x = np.random.default_rng(0).normal(size=(3, 56, 56, 3)).astype(np.float32)
  with torch.no_grad():
    want = ref.encode_image(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # PyTorch's mixed precision: the bf16 bound.
      amp = ref.encode_image(torch.from_numpy(x).permute(0, 3, 1, 2)).float().numpy()
    # OpenAI's releases are TorchScript archives of the whole model (traced, same names).
    torch.jit.trace(ref.visual, torch.zeros(1, 3, 56, 56)).save(str(tmp_path / "visual.pt"))
  for f in ("open_clip_model.safetensors", "clip.pth", "visual.pt"):
    weights, _ = convert.convert("clip", "clip_vit_l14", str(tmp_path / f))
    model = _small()
    nnx.update(model, convert.init_model_state(nnx.state(model), weights, f))
    got = np.asarray(model.features(jnp.asarray(x)))
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= 1e-5, (f, err)
  model16 = _small(dtype="bfloat16")
  nnx.update(model16, nnx.state(model))
  assert_bf16_like_amp(model16.features(jnp.asarray(x)).astype(jnp.float32), amp, want)


@pytest.mark.slow
@pytest.mark.torch
def test_univfd_vit_l14_run_scores_like_open_clip_with_its_head(tmp_path):
  """The acceptance: a random ViT-L/14 CLIP written by open_clip and a random fc_weights.pth
  written by torch.save, converted by the CLI, scored by `predict` with UnivFD's preset (center
  crop 224, CLIP normalisation): probabilities equal open_clip's encode_image + the linear head
  + sigmoid on the same crops, within 1e-5 relative on the logits."""
  torch = pytest.importorskip("torch")
  open_clip = pytest.importorskip("open_clip")
  from safetensors.torch import save_file as torch_save_file  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  # The image tower alone (1.2 GB; the whole model's 1.7 GB file plus the converted run filled a
  # CI disk once). Reading a whole model's file, text tower left out, is tested above.
  free = shutil.disk_usage(tmp_path).free
  if free < 4 << 30:
    pytest.skip(f"needs 4 GiB free beside {tmp_path} for ViT-L/14's weights and the converted run, has "
                f"{free / 2**30:.1f} GiB")
  torch.manual_seed(0)
  ref = open_clip.create_model("ViT-L-14", pretrained=None, force_quick_gelu=True).eval()
  fc = torch.nn.Linear(768, 1)
  torch_save_file({k: v.contiguous() for k, v in ref.state_dict().items() if k.startswith("visual.")},
                  str(tmp_path / "open_clip_model.safetensors"))
  torch.save(fc.state_dict(), str(tmp_path / "fc_weights.pth"))
  rng = np.random.default_rng(0)
  folder = tmp_path / "photos"
  folder.mkdir()
  sizes = [(256, 256), (240, 300), (224, 231)]
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(folder / f"{i}.png")
  env = subprocess_env()
  run = str(tmp_path / "univfd")
  r = subprocess.run([sys.executable, "-m", "fakejax.convert", "--from", "univfd", str(tmp_path / "fc_weights.pth"),
                      run, "--clip", str(tmp_path / "open_clip_model.safetensors")],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  r = subprocess.run([sys.executable, "-m", "fakejax.predict", "--workdir", run, "--out", str(tmp_path / "p.csv"),
                      str(folder)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(tmp_path / "p.csv") as f:
    got = {os.path.basename(row["path"]): row for row in csv.DictReader(f)}
  mean = torch.tensor(open_clip.constants.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(open_clip.constants.OPENAI_DATASET_STD).view(1, 3, 1, 1)
  crops, want = [], []
  for i, (h, w) in enumerate(sizes):
    img = np.asarray(Image.open(folder / f"{i}.png"))
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))  # torchvision CenterCrop.
    crops.append(img[top:top + 224, left:left + 224])
    x = torch.from_numpy(crops[-1].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
      want.append(fc(ref.encode_image((x - mean) / std)).item())
    assert got[f"{i}.png"]["view"] == "full"  # UnivFD's preset: the 224 center crop.
    assert abs(float(got[f"{i}.png"]["p_fake"]) - 1 / (1 + np.exp(-want[-1]))) <= 2e-6, (i, got, want)
  loaded = runs.Run(run)
  logits = np.asarray(loaded.forward(loaded.inference_state, np.stack(crops)))
  want = np.asarray(want)
  assert np.abs(logits[:, 1] - want).max() <= 1e-5 * np.abs(want).max(), (logits, want)
