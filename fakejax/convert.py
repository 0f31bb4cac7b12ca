r"""ImageNet weights from the files users already have: Keras H5, torchvision state dicts, BiT .npz.

  python -m fakejax.convert --from keras --model xception xception_weights_tf_dim_ordering_tf_kernels_notop.h5 OUT
  python -m fakejax.convert --from keras --model mobilenet_v2 mobilenet_v2_weights_...no_top.h5 OUT
  python -m fakejax.convert --from torchvision --model resnet50 resnet50-0676ba61.pth|.safetensors OUT
  python -m fakejax.convert --from bit --model bit_resnet50 BiT-M-R50x1.npz OUT
  python -m fakejax.convert --from npr NPR.pth RUN            # a released detector -> a run folder
  python -m fakejax.convert --from safe checkpoint-best.pth RUN
  python -m fakejax.convert --from cnndetection blur_jpg_prob0.5.pth RUN
  python -m fakejax.convert --from univfd fc_weights.pth RUN --clip open_clip_model.safetensors
  python -m fakejax.convert --from dda ckpt.pth RUN          # DINOv2 ViT-L/14 + LoRA + fc, whole
  python -m fakejax.convert --from bfree weights/BFREE_dino2reg4 RUN   # B-Free's released folder
  python -m fakejax.convert --from clip --model clip_vit_l14 open_clip_model.safetensors OUT
  python -m fakejax.convert --from timm_dinov2 --model dinov2_vit_l14 model.safetensors|.pth OUT

OUT is a weights folder that `--config.model.init_from=OUT` loads into a fresh
model (`keras:FILE` / `torchvision:FILE` / `bit:FILE` load a file directly, and a training
run's workdir works too). The classification head is never converted: it is
built for the configured number of classes. Everything else must match
exactly, or the error names every mismatched parameter.

The released detectors (`--from npr|safe|cnndetection|univfd|dda|bfree`, no --model) convert whole, head included,
into a run folder that `evaluate`, `predict`, `explain` and `serve` load like a trained run: the
architecture, input front-end, preprocessing, class order (real, fake) and threshold 0.5 are
recorded in its config.json, the repository's test preset in its run.json (`evaluate` uses it
unless --preset says otherwise). NPR's NPR.pth is a plain state dict; SAFE's checkpoint wraps
it as {'model': ..., 'args': Namespace, ...}; CNNDetection's as {'model': ..., ...}. UnivFD's
fc_weights.pth is the state dict of its linear head alone ('weight' 1x768, 'bias'); the CLIP
encoder comes from --clip: open_clip's ViT-L-14 `open_clip_model.safetensors` (keys 'visual.*',
no PyTorch needed) or OpenAI's TorchScript `ViT-L-14.pt` (PyTorch). DDA's checkpoint wraps its
DINOv2ModelWithLoRA's state dict as {'model': ..., 'optimizer': ..., 'total_steps': ...} (from_timm_dinov2).
B-Free's weights folder (BFREE_dino2reg4/: config.yaml naming the architecture, the input
normalisation and the weight file, model_epoch_best.pth) holds its Wrapper5crops' timm ViT saved
at the 504 px window: a 36 x 36 positional embedding, kept as it is (model.pos_embed_size), and the
one-logit timm `head`; its test is preset 'bfree' (five 504 px windows, logits averaged).

Keras files are read in the legacy H5 layout of the Keras applications weight
files (also what `model.save('file.h5')` writes): layers by name, weights in
layer order. torchvision `.safetensors` files need no PyTorch; `.pth` files are
read with `torch.load(weights_only=True)` when PyTorch is installed. Nothing
is ever unpickled otherwise. BiT files are the NumPy archives big_transfer released
(gs://bit_models/BiT-M-R50x1.npz), names as its TF code (`resnet/block1/unit01/a/...`).
"""

import json
import os
import re

from absl import flags
from flax import nnx
import jax
import numpy as np

from fakejax import checkpoint
from fakejax import cli
from fakejax import models
from fakejax import runs

ORIGINS = {"keras": "minus_one_one", "torchvision": "imagenet", "bit": "minus_one_one",
           "clip": "clip", "timm_dinov2": "imagenet"}  # -> preprocessing
SUPPORTED = {"keras": ("xception", "mobilenet_v2"), "torchvision": ("resnet50", "resnet101", "resnet50_nodown"),
             "bit": ("bit_resnet50",), "clip": tuple(models.vit.ARCHS),
             "timm_dinov2": tuple(models.dinov2.ARCHS)}
KERAS_TOPS = ("predictions", "Logits")  # ImageNet classifiers of Keras applications: dropped.


class ConversionError(checkpoint.MismatchError):
  """A weight file that does not fit the model (names every mismatch)."""


# ---------------------------------------------------------------------------
# Keras.
# ---------------------------------------------------------------------------
def read_keras_h5(path):
  """{layer name: [arrays in the layer's weight order]} of a legacy-layout Keras H5 file."""
  import h5py  # pylint: disable=g-import-not-at-top
  decode = lambda s: s.decode() if isinstance(s, bytes) else str(s)
  with h5py.File(path, "r") as f:
    g = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
    if "layer_names" not in g.attrs:
      raise ConversionError(
          f"{path} is not a Keras weight file in the H5 layout of the Keras applications files "
          "(no 'layer_names'). A Keras 3 '.weights.h5' file names layers by class, not by name: "
          "save the model with model.save('file.h5') instead.")
    out = {}
    for name in map(decode, g.attrs["layer_names"]):
      names = [decode(w) for w in g[name].attrs.get("weight_names", [])]
      if names:
        out[name] = [np.asarray(g[name][w]) for w in names]
  return out


def _bn(dst, w):
  return dict(zip((f"{dst}/scale", f"{dst}/bias", f"{dst}/mean", f"{dst}/var"), w))


def _conv(dst, w):
  return {f"{dst}/kernel": w[0]}


def _depthwise(dst, w):  # Keras (kh, kw, C, 1) -> nnx.Conv with feature_group_count=C: (kh, kw, 1, C)
  return {f"{dst}/kernel": w[0].transpose(0, 1, 3, 2)}


def _separable(dst, w):
  return {**_depthwise(f"{dst}/depthwise", w[:1]), **_conv(f"{dst}/pointwise", w[1:])}


def _unnamed(layer_names, prefix):
  """Layers Keras named by class ('conv2d', 'conv2d_1', ...), in creation order."""
  found = [n for n in layer_names if re.fullmatch(prefix + r"(_\d+)?", n)]
  return sorted(found, key=lambda n: int(n[len(prefix) + 1:] or 0) if n != prefix else -1)


def _keras_xception_plan(layer_names):
  plan = [("block1_conv1", _conv, "conv1/conv"), ("block1_conv1_bn", _bn, "conv1/bn"),
          ("block1_conv2", _conv, "conv2/conv"), ("block1_conv2_bn", _bn, "conv2/bn")]
  entry = (("block1", 2), ("block2", 3), ("block3", 4), ("block13", 13))
  for (ours, k), conv, bn in zip(entry, _unnamed(layer_names, "conv2d"),
                                 _unnamed(layer_names, "batch_normalization")):
    plan += [(conv, _conv, f"{ours}/shortcut/conv"), (bn, _bn, f"{ours}/shortcut/bn")]
  for ours, k in entry:
    for j in (1, 2):
      plan += [(f"block{k}_sepconv{j}", _separable, f"{ours}/sep{j}"),
               (f"block{k}_sepconv{j}_bn", _bn, f"{ours}/bn{j}")]
  for i in range(8):
    for j in range(3):
      plan += [(f"block{i + 5}_sepconv{j + 1}", _separable, f"middle/{i}/seps/{j}"),
               (f"block{i + 5}_sepconv{j + 1}_bn", _bn, f"middle/{i}/bns/{j}")]
  plan += [("block14_sepconv1", _separable, "sep14"), ("block14_sepconv1_bn", _bn, "bn14"),
           ("block14_sepconv2", _separable, "sep15"), ("block14_sepconv2_bn", _bn, "bn15")]
  return plan


def _keras_mobilenet_v2_plan(layer_names):
  del layer_names
  plan = [("Conv1", _conv, "stem/conv"), ("bn_Conv1", _bn, "stem/bn")]
  for i in range(17):
    p = f"block_{i}_" if i else "expanded_conv_"
    if i:
      plan += [(p + "expand", _conv, f"blocks/{i}/expand/conv"), (p + "expand_BN", _bn, f"blocks/{i}/expand/bn")]
    plan += [(p + "depthwise", _depthwise, f"blocks/{i}/depthwise/conv"),
             (p + "depthwise_BN", _bn, f"blocks/{i}/depthwise/bn"),
             (p + "project", _conv, f"blocks/{i}/project/conv"),
             (p + "project_BN", _bn, f"blocks/{i}/project/bn")]
  return plan + [("Conv_1", _conv, "last/conv"), ("Conv_1_bn", _bn, "last/bn")]


def from_keras(model, layers):
  """{our parameter path: array} from read_keras_h5's layers."""
  plan = {"xception": _keras_xception_plan, "mobilenet_v2": _keras_mobilenet_v2_plan}[model](list(layers))
  planned = {name for name, _, _ in plan}
  missing = [name for name, _, _ in plan if name not in layers]
  extra = [name for name in layers if name not in planned and name not in KERAS_TOPS]
  if missing or extra:
    raise ConversionError(f"Not the Keras {model} weights: {len(missing)} layer(s) missing "
                          f"({', '.join(missing)}) and {len(extra)} unexpected ({', '.join(extra)})")
  out = {}
  for name, fn, dst in plan:
    out.update(fn(dst, layers[name]))
  return out


# ---------------------------------------------------------------------------
# torchvision.
# ---------------------------------------------------------------------------
def read_torch_state_dict(path):
  """{name: array} of a .safetensors file (no PyTorch needed) or a .pth state dict (PyTorch)."""
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return load_file(path)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConversionError(f"Reading {os.path.basename(path)} needs PyTorch (pip install torch); or "
                          "save the state dict as .safetensors, which needs no PyTorch") from None
  import argparse  # pylint: disable=g-import-not-at-top
  torch.serialization.add_safe_globals([argparse.Namespace])  # SAFE saves its args beside the weights.
  sd = torch.load(path, map_location="cpu", weights_only=True)  # Never unpickles arbitrary objects.
  if isinstance(sd, dict):
    sd = sd.get("model", sd.get("state_dict", sd))  # SAFE and CNNDetection wrap the state dict.
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def from_torchvision_resnet(sd, head=None):
  """{our parameter path: array} of a torchvision-layout ResNet state dict: the classifier
  dropped, or with `head` (its module name: 'fc', NPR's and SAFE's 'fc1') converted too."""
  out, unknown = {}, []
  for key, value in sd.items():
    key = key.removeprefix("module.")  # Saved from DataParallel.
    if head and key in (f"{head}.weight", f"{head}.bias"):
      out["head/kernel" if key.endswith("weight") else "head/bias"] = (
          np.asarray(value).T if key.endswith("weight") else np.asarray(value))
      continue
    if (not head and key.startswith("fc.")) or key.endswith("num_batches_tracked"):
      continue
    m = re.fullmatch(r"(conv1|bn1)\.(\w+)", key) or re.fullmatch(
        r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)", key)
    if m is None:
      unknown.append(key)
      continue
    if m.group(1) in ("conv1", "bn1"):
      dst, kind, name = "stem", m.group(1)[:-1], m.group(2)
    else:
      layer = m.group(3)
      sub = ("downsample" if layer.startswith("downsample") else f"conv{layer[-1]}")
      kind = {"downsample.0": "conv", "downsample.1": "bn"}.get(layer, layer[:-1])
      dst, name = f"stages/{int(m.group(1)) - 1}/{m.group(2)}/{sub}", m.group(4)
    if kind == "conv":
      out[f"{dst}/conv/kernel"] = np.asarray(value).transpose(2, 3, 1, 0)  # OIHW -> HWIO
    else:
      out[f"{dst}/bn/{_BN_NAMES[name]}"] = np.asarray(value)
  if unknown:
    raise ConversionError(f"Not a torchvision ResNet state dict: {len(unknown)} unexpected key(s): "
                          f"{', '.join(unknown)}")
  return out


# ---------------------------------------------------------------------------
# BiT.
# ---------------------------------------------------------------------------
def read_npz(path):
  """{name: array} of a NumPy .npz archive (never unpickled)."""
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


# Released leaf names -> ours, within unit sub-layer a, b or c (our gn1/conv1, gn2/conv2, gn3/conv3).
_BIT_LEAVES = {"group_norm/gamma": "gn{}/scale", "group_norm/beta": "gn{}/bias",
               "standardized_conv2d/kernel": "conv{}/kernel"}


def from_bit(arrays):
  """{our parameter path: array} of a released BiT .npz (big_transfer's names; head dropped)."""
  out, unknown = {}, []
  for key, value in arrays.items():
    # Some released files number their convolutions (big_vision's loader undoes it the same way).
    name = re.sub(r"/standardized_conv2d_\d+/", "/standardized_conv2d/", key).removeprefix("resnet/")
    m = re.fullmatch(r"block([1-4])/unit(\d+)/([abc])/(proj/)?(.+)", name)
    if name.startswith("head/"):
      continue
    if name == "root_block/standardized_conv2d/kernel":
      out["root/kernel"] = value  # HWIO, as ours.
    elif name in ("group_norm/gamma", "group_norm/beta"):  # The pre-head GroupNorm.
      out["norm/scale" if name.endswith("gamma") else "norm/bias"] = value.reshape(-1)
    elif m and m[5] in _BIT_LEAVES and not m[4]:
      dst = _BIT_LEAVES[m[5]].format("abc".index(m[3]) + 1)
      out[f"block{m[1]}/{int(m[2]) - 1}/{dst}"] = value if dst.endswith("kernel") else value.reshape(-1)
    elif m and m[3] == "a" and m[4] and m[5] == "standardized_conv2d/kernel":
      out[f"block{m[1]}/{int(m[2]) - 1}/proj/kernel"] = value
    else:
      unknown.append(key)
  if unknown:
    raise ConversionError(f"Not a BiT ResNet-V2 .npz: {len(unknown)} unexpected key(s): {', '.join(unknown)}")
  return out


# ---------------------------------------------------------------------------
# CLIP (open_clip's safetensors, OpenAI's TorchScript .pt).
# ---------------------------------------------------------------------------
def read_clip(path):
  """{name: array} of a CLIP weight file: open_clip's `open_clip_model.safetensors` (no PyTorch
  needed), a state dict (.pth/.bin), or OpenAI's TorchScript `ViT-L-14.pt` (PyTorch)."""
  try:
    return read_torch_state_dict(path)
  except RuntimeError as e:  # torch.load(weights_only=True) refuses TorchScript archives.
    if "TorchScript" not in str(e):
      raise
  import torch  # pylint: disable=g-import-not-at-top
  sd = torch.jit.load(path, map_location="cpu").state_dict()  # OpenAI's release is TorchScript.
  return {k: v.float().numpy() for k, v in sd.items()}


_CLIP_BLOCK = {"ln_1.weight": "ln_1/scale", "ln_1.bias": "ln_1/bias", "ln_2.weight": "ln_2/scale",
               "ln_2.bias": "ln_2/bias", "attn.in_proj_weight": "in_proj/kernel",
               "attn.in_proj_bias": "in_proj/bias", "attn.out_proj.weight": "out_proj/kernel",
               "attn.out_proj.bias": "out_proj/bias", "mlp.c_fc.weight": "c_fc/kernel",
               "mlp.c_fc.bias": "c_fc/bias", "mlp.c_proj.weight": "c_proj/kernel",
               "mlp.c_proj.bias": "c_proj/bias"}
_CLIP_TOP = {"class_embedding": "class_embedding", "positional_embedding": "positional_embedding",
             "ln_pre.weight": "ln_pre/scale", "ln_pre.bias": "ln_pre/bias", "proj": "proj",
             "ln_post.weight": "ln_post/scale", "ln_post.bias": "ln_post/bias"}


def from_clip(sd):
  """{our parameter path: array} of CLIP's image encoder (models.vit) from a CLIP state dict:
  the whole model's (keys 'visual.*'; the text tower is left out) or the visual tower's own."""
  visual = "visual." if any(k.startswith("visual.") for k in sd) else ""
  out, unknown = {}, []
  for key, value in sd.items():
    if not key.startswith(visual):
      continue  # The text tower, logit_scale.
    name = key[len(visual):]
    m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", name)
    if name == "conv1.weight":
      out["patch_embed/kernel"] = np.asarray(value).transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif name in _CLIP_TOP:
      out[_CLIP_TOP[name]] = np.asarray(value)
    elif m and m[2] in _CLIP_BLOCK:
      dst = _CLIP_BLOCK[m[2]]
      out[f"blocks/{m[1]}/{dst}"] = np.asarray(value).T if dst.endswith("kernel") else np.asarray(value)
    else:
      unknown.append(key)
  if unknown:
    raise ConversionError(f"Not a CLIP ViT image encoder (models.vit): {len(unknown)} unexpected "
                          f"key(s): {', '.join(unknown[:20])}")
  if not out:
    raise ConversionError("No CLIP image encoder in this file (no 'visual.*' or 'conv1.weight' keys)")
  return out


# ---------------------------------------------------------------------------
# DINOv2 (timm, the facebookresearch hub, Hugging Face; DDA's LoRA checkpoints).
# ---------------------------------------------------------------------------
# Hugging Face's Dinov2(WithRegisters)Model names -> the hub's / timm's (q, k, v are fused after).
_HF_DINOV2 = ((r"^embeddings\.cls_token$", "cls_token"), (r"^embeddings\.mask_token$", "mask_token"),
              (r"^embeddings\.register_tokens$", "register_tokens"),
              (r"^embeddings\.position_embeddings$", "pos_embed"),
              (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
              (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."), (r"\.attention\.attention\.", ".attn."),
              (r"\.attention\.output\.dense\.", ".attn.proj."),
              (r"\.layer_scale(\d)\.lambda1$", r".ls\1.gamma"), (r"^layernorm\.", "norm."))
_DINOV2_TOP = {"patch_embed.proj.bias": "patch_embed/bias", "norm.weight": "norm/scale",
               "norm.bias": "norm/bias", "fc.weight": "head/kernel", "fc.bias": "head/bias"}  # fc: DDA's head.
_DINOV2_LEAVES = {"weight": "kernel", "bias": "bias", "lora.lora_A": "lora_a", "lora.lora_B": "lora_b"}
_DINOV2_DROPPED = ("mask_token", "head.weight", "head.bias", "classifier.weight", "classifier.bias")


def _dinov2_timm_names(sd):
  """The state dict with timm's / the hub's names: Hugging Face's renamed (its query, key and value
  fused into qkv), the wrappers' prefixes (DataParallel, HF's classifier, DDA's LoRA model) gone."""
  out, qkv = {}, {}
  for key, value in sd.items():
    for prefix in ("module.", "base_model.model.", "base_model.", "dinov2."):
      key = key.removeprefix(prefix)
    for pattern, repl in _HF_DINOV2:
      key = re.sub(pattern, repl, key)
    key = key.replace(".original_layer.", ".")  # DDA's LoRALinear around the frozen layer.
    m = re.fullmatch(r"(blocks\.\d+\.attn\.)(query|key|value)\.(weight|bias)", key)
    if m:
      qkv.setdefault(m[1] + "qkv." + m[3], {})[m[2]] = np.asarray(value)
    else:
      out[key] = np.asarray(value)
  for key, parts in qkv.items():
    out[key] = np.concatenate([parts[k] for k in ("query", "key", "value")], 0)
  return out


def _dinov2_tokens(sd):
  """cls_token (C,), reg_token (R, C) and pos_embed (h * w, C) of a timm / hub state dict: the
  positional embedding of the class (and register) tokens, where it has one, added to them."""
  cls = np.asarray(sd.pop("cls_token")).reshape(-1)
  regs = sd.pop("reg_token", sd.pop("register_tokens", None))
  regs = None if regs is None else np.asarray(regs).reshape(-1, cls.shape[0])
  pos = np.asarray(sd.pop("pos_embed")).reshape(-1, cls.shape[0])
  prefix = len(pos) - int(np.sqrt(len(pos))) ** 2
  if prefix not in (0, 1, 1 + (0 if regs is None else len(regs))):
    raise ConversionError(f"A DINOv2 positional embedding of {len(pos)} rows: not a square grid plus "
                          "the class (and register) tokens")
  out = {"cls_token": cls + pos[0] if prefix else cls, "pos_embed": pos[prefix:]}
  if regs is not None:
    out["reg_token"] = regs + pos[1:prefix] if prefix > 1 else regs
  return out


def from_timm_dinov2(sd, head="fc"):
  """{our parameter path: array} of a DINOv2 ViT (models.dinov2) from a state dict of timm's
  `vit_*_patch14_dinov2` / `*_reg4_dinov2`, of the facebookresearch hub's `dinov2_vit*14_pretrain.pth`
  / `*_reg4_pretrain.pth`, of Hugging Face's Dinov2Model / Dinov2WithRegistersModel, or of DDA's
  checkpoint (its LoRA factors and its `fc` head included). `head`: the classifier kept, 'fc' (DDA's)
  or 'head' (timm's, B-Free's); other classifiers are left out."""
  top = {k: v for k, v in _DINOV2_TOP.items() if not k.startswith("fc.")}
  top.update({f"{head}.weight": "head/kernel", f"{head}.bias": "head/bias"})
  dropped = tuple(k for k in _DINOV2_DROPPED if k not in top)
  sd = _dinov2_timm_names(sd)
  if "cls_token" not in sd or "pos_embed" not in sd:
    raise ConversionError("Not a DINOv2 ViT state dict: no cls_token / pos_embed (nor Hugging Face's "
                          "embeddings.cls_token / position_embeddings)")
  out, unknown = _dinov2_tokens(sd), []
  for key, value in sd.items():
    m = re.fullmatch(r"blocks\.(\d+)\.(norm[12]|attn\.qkv|attn\.proj|mlp\.fc[12]|ls[12])\.(.+)", key)
    layer = m and m[2].split(".")[-1]
    if key in dropped:
      continue
    if key == "patch_embed.proj.weight":
      out["patch_embed/kernel"] = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif key in top:
      out[top[key]] = value.T if top[key] == "head/kernel" else value
    elif m and layer.startswith("norm") and m[3] in ("weight", "bias"):
      out[f"blocks/{m[1]}/{layer}/{'scale' if m[3] == 'weight' else 'bias'}"] = value
    elif m and layer.startswith("ls") and m[3] == "gamma":
      out[f"blocks/{m[1]}/{layer}"] = value
    elif m and m[3] in _DINOV2_LEAVES and not layer.startswith(("norm", "ls")):
      out[f"blocks/{m[1]}/{layer}/{_DINOV2_LEAVES[m[3]]}"] = value if m[3] == "bias" else value.T
    else:
      unknown.append(key)
  if unknown:
    raise ConversionError(f"Not a DINOv2 ViT (models.dinov2): {len(unknown)} unexpected key(s): "
                          f"{', '.join(unknown[:20])}")
  return out


# ---------------------------------------------------------------------------
# Stable Diffusion's autoencoder (models.vae): diffusers folders and single files.
# ---------------------------------------------------------------------------
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# Older diffusers files name the mid-block attention as LDM's AttnBlock did.
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# The original (LDM / CompVis / Stability single-file) names -> diffusers', after the level indices.
_LDM_NAMES = (("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"),
              ("mid.block_1", "mid_block.resnets.0"), ("mid.block_2", "mid_block.resnets.1"),
              ("mid.attn_1.norm", "mid_block.attentions.0.group_norm"),
              ("mid.attn_1.q", "mid_block.attentions.0.to_q"), ("mid.attn_1.k", "mid_block.attentions.0.to_k"),
              ("mid.attn_1.v", "mid_block.attentions.0.to_v"),
              ("mid.attn_1.proj_out", "mid_block.attentions.0.to_out.0"))
_VAE_NORMS = ("norm1", "norm2", "group_norm", "conv_norm_out")


def read_diffusers_vae(path, scaling_factor=None):
  """(diffusers config dict, {diffusers key: array}) of an autoencoder.

  Args:
    path: a diffusers folder (config.json + diffusion_pytorch_model.safetensors or .bin, or a
      pipeline folder with a vae/ subfolder), or one .safetensors / .ckpt file: diffusers' keys,
      or the original single-file keys (`encoder.down.0.block.0...`, alone or under
      `first_stage_model.` in a whole Stable Diffusion checkpoint); the config then comes from
      the shapes (GroupNorm: 32 groups, as every SD autoencoder).
    scaling_factor: for single files (which do not record it): SD 1.x/2.x 0.18215 (default), SDXL 0.13025.
  """
  if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")) \
     and os.path.isfile(os.path.join(path, "vae", "config.json")):
    path = os.path.join(path, "vae")
  if os.path.isdir(path):
    with open(os.path.join(path, "config.json")) as f:
      config = json.load(f)
    files = [os.path.join(path, n) for n in _DIFFUSERS_WEIGHTS if os.path.isfile(os.path.join(path, n))]
    if not files:
      raise ConversionError(f"{path} has no {' or '.join(_DIFFUSERS_WEIGHTS)}")
    return config, _diffusers_keys(read_torch_state_dict(files[0]))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No autoencoder folder or file {path}")
  sd = _diffusers_keys(read_torch_state_dict(path))
  levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down_blocks.")})
  if not levels:
    raise ConversionError(f"{os.path.basename(path)} holds no autoencoder (no encoder.down_blocks / encoder.down keys)")
  config = {"block_out_channels": [int(sd[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0])
                                   for i in levels],
            "layers_per_block": len({k.split(".")[4] for k in sd if k.startswith("encoder.down_blocks.0.resnets.")}),
            "latent_channels": int(sd["decoder.conv_in.weight"].shape[1]),
            "norm_num_groups": 32,  # Not in the weights; every Stable Diffusion autoencoder's.
            "scaling_factor": 0.18215 if scaling_factor is None else scaling_factor,
            "use_quant_conv": "quant_conv.weight" in sd, "use_post_quant_conv": "post_quant_conv.weight" in sd,
            "mid_block_add_attention": "encoder.mid_block.attentions.0.to_q.weight" in sd}
  return config, sd


def _diffusers_keys(sd):
  """A state dict in diffusers' key names, from diffusers' own (old or new) or the original ones."""
  if any(k.startswith("first_stage_model.") for k in sd):
    sd = {k.removeprefix("first_stage_model."): v for k, v in sd.items() if k.startswith("first_stage_model.")}
  if not any(k.startswith("encoder.down.") for k in sd):
    return {re.sub(r"attentions\.0\.(query|key|value|proj_attn)\.",
                   lambda m: f"attentions.0.{_OLD_ATTENTION[m[1]]}.", k): v for k, v in sd.items()}
  ups = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("decoder.up."))
  out = {}
  for key, value in sd.items():
    k = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", key)
    k = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", k)
    k = re.sub(r"^decoder\.up\.(\d+)\.(block|upsample)\.",  # LDM counts the decoder's levels upwards.
               lambda m: f"decoder.up_blocks.{ups - 1 - int(m[1])}."
                         f"{'resnets' if m[2] == 'block' else 'upsamplers.0'}.", k)
    for old, new in _LDM_NAMES:
      k = k.replace(f".{old}.", f".{new}.")
    value = np.asarray(value)
    out[k] = value[:, :, 0, 0] if ".attentions.0.to_" in k and value.ndim == 4 else value  # 1x1 convs there.
  return out


def from_diffusers_vae(sd):
  """{our parameter path (models.vae): array} of a diffusers-keyed autoencoder state dict."""
  out = {}
  for key, value in sd.items():
    k = key.replace(".downsamplers.0.conv.", ".conv.").replace(".upsamplers.0.conv.", ".conv.")
    k = k.replace(".to_out.0.", ".to_out.")
    *module, leaf = k.split(".")
    value = np.asarray(value, np.float32)
    if leaf == "weight" and value.ndim == 4:
      leaf, value = "kernel", value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif leaf == "weight" and value.ndim == 2:
      leaf, value = "kernel", value.T
    elif leaf == "weight" and module[-1] in _VAE_NORMS:
      leaf = "scale"
    out["/".join(module + [leaf])] = value
  return out


def load_diffusers_vae(path, *, dtype="float32", scaling_factor=None):
  """A models.vae.AutoencoderKL with the weights of a diffusers autoencoder (read_diffusers_vae).

  Raises:
    ConversionError: naming every parameter that is missing, extra or of another shape.
  """
  from fakejax.models import vae  # pylint: disable=g-import-not-at-top
  config, sd = read_diffusers_vae(path, scaling_factor)
  try:
    model = vae.from_diffusers_config(config, dtype=np.dtype(dtype) if dtype != "bfloat16" else jax.numpy.bfloat16)
  except ValueError as e:
    raise ConversionError(f"{path}: {e}") from None
  state = nnx.state(model)
  weights = from_diffusers_vae(sd)
  checkpoint.check_compatible(weights, nnx.to_pure_dict(state), path)
  pure = jax.tree_util.tree_map_with_path(
      lambda p, x: np.asarray(weights[checkpoint.path_name(p)], x.dtype), nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)
  return model


# ---------------------------------------------------------------------------
# Loading into a model.
# ---------------------------------------------------------------------------
_READERS = {"keras": lambda model, path: from_keras(model, read_keras_h5(path)),
            "torchvision": lambda model, path: from_torchvision_resnet(read_torch_state_dict(path)),
            "bit": lambda model, path: from_bit(read_npz(path)),
            "clip": lambda model, path: from_clip(read_clip(path)),
            "timm_dinov2": lambda model, path: from_timm_dinov2(read_torch_state_dict(path))}


def convert(origin, model, path):
  """(weights {path: array}, info) of a weight file of `origin` (a key of SUPPORTED)."""
  if origin not in SUPPORTED:
    raise ValueError(f"Unknown weight origin {origin!r}; known: {', '.join(SUPPORTED)}")
  if model not in SUPPORTED[origin]:
    raise ValueError(f"{origin} weights are supported for {', '.join(SUPPORTED[origin])}, not {model!r}")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No weight file {path}")
  weights = _READERS[origin](model, path)
  info = {"origin": origin, "model": model, "preprocess": ORIGINS[origin], "source": os.path.abspath(path)}
  return weights, info


def pretrained_info(spec, model):
  """What `init_from` points at, without reading its arrays: {'origin', 'model', 'preprocess', ...}."""
  origin, sep, path = spec.partition(":")
  if sep and origin in ORIGINS:
    return {"origin": origin, "model": model, "preprocess": ORIGINS[origin], "source": path}
  if checkpoint.is_weights(spec):
    with open(os.path.join(spec, checkpoint.WEIGHTS_INFO)) as f:
      return json.load(f)
  if os.path.isfile(os.path.join(spec, "config.json")):  # A training run.
    with open(os.path.join(spec, "config.json")) as f:
      m = json.load(f)["model"]
    return {"origin": "run", "model": m["name"], "preprocess": m["preprocess"], "source": spec}
  raise FileNotFoundError(f"init_from {spec!r} is neither a folder written by fakejax.convert, a "
                          "training run, nor keras:FILE.h5 / torchvision:FILE / bit:FILE.npz")


def load_pretrained(spec, model):
  """(weights {path: array}, info) of `init_from` for a model of name `model`."""
  info = pretrained_info(spec, model)
  if info["model"] != model:
    raise ConversionError(f"init_from {spec} holds {info['model']} weights, but the model is {model}")
  origin, sep, path = spec.partition(":")
  if sep and origin in ORIGINS:
    return convert(origin, model, path)
  if info["origin"] == "run":
    return checkpoint.load_run_weights(spec), info
  return checkpoint.load_weights(spec)


def init_model_state(model_state, weights, what):
  """Copies `weights` into an nnx.State of a model (in place); returns it.

  The head is taken only where the weights have one of the same shape (a run of the same task);
  LoRA adapters (models.lora) the weights lack keep their initial values; every other parameter
  and BatchNorm statistic must be there with the right shape, else a MismatchError names each one.
  """
  pure = nnx.to_pure_dict(model_state)
  want = checkpoint.flat(pure)
  head = lambda k: k.startswith("head/")
  weights = {k: v for k, v in weights.items()
             if not head(k) or (k in want and tuple(want[k].shape) == tuple(np.shape(v)))}
  # LoRA adapters the weights lack (a backbone's file) keep their initial values.
  target = {k: v for k, v in want.items() if not (head(k) or models.lora.is_lora(k)) or k in weights}
  checkpoint.check_compatible(weights, target, what)
  name = checkpoint.path_name
  pure = jax.tree_util.tree_map_with_path(
      lambda p, x: np.asarray(weights[name(p)], x.dtype) if name(p) in weights else x, pure)
  nnx.replace_by_pure_dict(model_state, pure)
  return model_state


# ---------------------------------------------------------------------------
# Released detectors -> run folders.
# ---------------------------------------------------------------------------
# Each: the model keys of its config, the classifier's module name, its crop and its test preset.
PUBLISHED = {
    "npr": dict(model=dict(name="resnet_trunc", front="npr", single_logit=True, preprocess="imagenet"),
                head="fc1", image_size=224, preset="npr_forensynths"),
    "safe": dict(model=dict(name="resnet_trunc", front="safe_dwt", single_logit=False, preprocess="unit"),
                 head="fc1", image_size=256, preset="safe"),
    "cnndetection": dict(model=dict(name="resnet50", front="none", single_logit=True, preprocess="imagenet"),
                         head="fc", image_size=224, preset="cnndetection"),
    # fc_weights.pth (a linear 768 -> 1) on CLIP ViT-L/14's embedding; the CLIP file by --clip.
    "univfd": dict(model=dict(name="clip_vit_l14", front="none", single_logit=True, preprocess="clip"),
                   head="fc", image_size=224, preset="univfd"),
    # DDA's checkpoint ({'model': DINOv2ModelWithLoRA's state dict, 'optimizer', 'total_steps'}): the hub's
    # DINOv2 ViT-L/14 (no registers: its positional-embedding resampling), LoRA rank 8 alpha 1 on every
    # block's qkv, proj, fc1, fc2, and `fc` (1024 -> 1) on the final-norm class token; CLIP's mean and std.
    "dda": dict(model=dict(name="dinov2_vit_l14", front="none", single_logit=True, preprocess="clip",
                           lora_rank=8, lora_alpha=1.0, lora_targets=models.dinov2.LORA_TARGETS,
                           pos_interp="hub"),
                head="fc", image_size=336, preset="dda"),
    # B-Free's folder (read_bfree): timm's DINOv2 ViT-B/14 with registers, set to the 504 px window
    # (Wrapper5crops: a 36 x 36 positional embedding), timm's `head` (768 -> 1); the architecture and
    # the normalisation as its config.yaml says.
    "bfree": dict(model=dict(name="dinov2_vit_b14_reg4", front="none", single_logit=True, preprocess="imagenet",
                             pos_embed_size=504),
                  head="head", image_size=504, preset="bfree"),
}
# The released detectors whose architecture --model may replace (a checkpoint of the same recipe on
# another DINOv2: the tests' tiny one).
MODEL_OVERRIDES = {"dda": tuple(models.dinov2.ARCHS), "bfree": tuple(models.dinov2.ARCHS)}
# B-Free's config.yaml norm_type (code/utils/normalization.py get_list_norm) -> our preprocessing.
BFREE_NORMS = {"resnet": "imagenet", "clip": "clip", "none": "unit", "xception": "minus_one_one"}
BFREE_SIZES = {"small": "s", "base": "b", "large": "l"}


def read_bfree(path):
  """(state dict, {'model': our architecture, 'preprocess', 'window'}) of B-Free's weights folder as
  released (config.yaml with weights_file, arch 'timm_c5i<window>_<timm DINOv2 name>', norm_type),
  given the folder or its weight file."""
  import yaml  # pylint: disable=g-import-not-at-top  (flax's, orbax's and ml_collections' dependency)
  folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  cfg_path = os.path.join(folder, "config.yaml")
  if not os.path.isfile(cfg_path):
    raise cli.UserError(f"--from bfree reads B-Free's weights folder as released (config.yaml beside "
                        f"model_epoch_best.pth): no config.yaml in {folder}")
  with open(cfg_path) as f:
    cfg = yaml.safe_load(f)
  m = re.fullmatch(r"timm_c5i(\d+)_vit_(small|base|large)_patch14(_reg4)?_dinov2(\..*)?", str(cfg.get("arch")))
  if not m or cfg.get("norm_type") not in BFREE_NORMS:
    raise ConversionError(f"{cfg_path}: arch {cfg.get('arch')!r} / norm_type {cfg.get('norm_type')!r} is not a "
                          "B-Free DINOv2 (timm_c5i<size>_vit_<small|base|large>_patch14[_reg4]_dinov2; "
                          f"norm_type {', '.join(BFREE_NORMS)})")
  weights = path if os.path.isfile(path) else os.path.join(folder, cfg["weights_file"])
  return read_torch_state_dict(weights), {
      "model": f"dinov2_vit_{BFREE_SIZES[m[2]]}14{m[3] or ''}", "preprocess": BFREE_NORMS[cfg["norm_type"]],
      "window": int(m[1])}


def published_config(name, model=None):
  """The config of a converted released detector (fakejax.defaults plus its model keys); `model`
  replaces its architecture (MODEL_OVERRIDES)."""
  from fakejax import defaults  # pylint: disable=g-import-not-at-top
  spec = PUBLISHED[name]
  allowed = MODEL_OVERRIDES.get(name, ())
  if model and model not in allowed:
    raise cli.UserError(f"--from {name} takes --model {' or '.join(allowed) or 'none'}, not {model!r}")
  c = defaults.get_config()
  for k, v in {**spec["model"], **({"name": model} if model else {})}.items():
    c.model[k] = v
  c.model.dropout = 0.0
  c.data.image_size = spec["image_size"]
  c.data.too_small = "zero"
  c.data.train_sources = ()
  return c


def convert_published(name, path, out, clip=None, model=None):
  """Writes the released detector `name` (a key of PUBLISHED) from its file `path` as a run at `out`.

  `clip`: UnivFD's CLIP weight file (read_clip), unless `path` is a whole UnivFD checkpoint
  (their trainer's, keys 'model.visual.*' beside 'fc.*'). `model`: another architecture of the
  recipe (MODEL_OVERRIDES). A LoRA model's every adapter must be in the file.

  Raises:
    ConversionError: naming every key of the file that does not fit the architecture.
    FileExistsError: when `out` exists (nothing is overwritten).
  """
  out = os.path.abspath(out)
  if os.path.exists(out):
    raise FileExistsError(f"{out} already exists; remove it or choose another output folder")
  for f in (path, clip):
    if f is not None and not (os.path.isfile(f) or (name == "bfree" and os.path.isdir(f))):
      raise FileNotFoundError(f"No weight file {f}")
  spec = PUBLISHED[name]
  config, preset = published_config(name, model), spec["preset"]
  if name == "univfd":
    weights = _univfd_weights(read_torch_state_dict(path), clip, path)
  elif name == "dda":
    weights = from_timm_dinov2(read_torch_state_dict(path))
  elif name == "bfree":
    weights, preset = _bfree_weights(path, config, model)
  else:
    weights = from_torchvision_resnet(read_torch_state_dict(path), head=spec["head"])
  if "head/kernel" not in weights:
    raise ConversionError(f"{os.path.basename(path)} has no classifier '{spec['head']}.weight': not a "
                          f"{name} detector checkpoint")
  model = models.from_config(config.model, 2)
  state = nnx.state(model)
  adapters = [k for k in checkpoint.flat(nnx.to_pure_dict(state))
              if models.lora.is_lora(k) and k not in weights]
  if adapters:  # init_model_state would keep their initial values: a silently different detector.
    raise ConversionError(f"{os.path.basename(path)} lacks {len(adapters)} LoRA adapter(s) of {name} "
                          f"({', '.join(adapters[:6])}): not a {name} checkpoint")
  init_model_state(state, weights, path)  # Every parameter and statistic, or the mismatches named.
  nnx.update(model, state)
  tmp = f"{out}.tmp{os.getpid()}"  # Written aside, renamed when whole: a crash leaves no half run.
  ckpt = checkpoint.Checkpointer(tmp)
  ckpt.save_best(0, nnx.state(model), {"step": 0, "converted_from": name})
  ckpt.close()  # On disk before the rename.
  runs.write_text(os.path.join(tmp, "config.json"), config.to_json(indent=2))
  runs.write_json(os.path.join(tmp, "run.json"), {
      **runs.Task("binary", ("real", "fake")).info(), "dataset": "", "preset": preset,
      "converted": {"from": name, "source": os.path.abspath(path),
                    **({"clip": os.path.abspath(clip)} if clip else {})}})
  os.rename(tmp, out)
  return out


def _bfree_weights(path, config, model):
  """B-Free's weights (read_bfree) and its test preset; sets `config`'s architecture (unless --model
  named one), normalisation and positional-embedding size: the window its checkpoint was saved at,
  which is also the crop. A window other than 504 (a test's) gets no preset: --mode five_crops."""
  sd, info = read_bfree(path)
  weights = from_timm_dinov2(sd, head="head")
  patch = 14
  window = int(round(np.sqrt(len(weights["pos_embed"])))) * patch
  if window != info["window"]:
    raise ConversionError(f"{path}: a {window} px positional embedding, but its arch says c5i{info['window']}")
  config.model.name = model or info["model"]
  config.model.preprocess, config.model.pos_embed_size = info["preprocess"], window
  config.data.image_size = window
  return weights, PUBLISHED["bfree"]["preset"] if window == PUBLISHED["bfree"]["image_size"] else ""


def _univfd_weights(sd, clip, path):
  """UnivFD's head ('weight'/'bias' of fc_weights.pth, or 'fc.*') and CLIP encoder (from `clip`,
  or the 'model.*' keys of a whole checkpoint) as our parameter paths."""
  head = {k.removeprefix("fc."): v for k, v in sd.items() if k in ("weight", "bias", "fc.weight", "fc.bias")}
  rest = {k.removeprefix("model."): v for k, v in sd.items() if k not in ("weight", "bias", "fc.weight", "fc.bias")}
  if set(head) != {"weight", "bias"}:
    raise ConversionError(f"{os.path.basename(path)} is not UnivFD's fc_weights.pth: expected the keys "
                          f"'weight' and 'bias' (or 'fc.weight', 'fc.bias'), found {', '.join(sorted(sd)[:10])}")
  if clip is None and not rest:
    raise cli.UserError("--from univfd needs the CLIP ViT-L/14 weights: --clip open_clip_model.safetensors "
                        "(open_clip's ViT-L-14 'openai') or --clip ViT-L-14.pt (OpenAI's, needs PyTorch)")
  weights = from_clip(read_clip(clip) if clip else rest)
  weights["head/kernel"], weights["head/bias"] = np.asarray(head["weight"]).T, np.asarray(head["bias"])
  return weights


def main(argv):
  if len(argv) != 3:
    raise cli.UserError("usage: python -m fakejax.convert --from keras|torchvision|bit|clip|timm_dinov2 "
                        "--model NAME FILE OUT, or --from npr|safe|cnndetection|dda FILE OUT, or --from bfree "
                        "FOLDER OUT, or --from univfd fc_weights.pth OUT --clip FILE")
  src, out = argv[1], argv[2]
  if flags.FLAGS["from"].value in PUBLISHED:
    run = convert_published(flags.FLAGS["from"].value, src, out, clip=flags.FLAGS.clip, model=flags.FLAGS.model)
    preset = runs.read_json(os.path.join(run, "run.json"))["preset"]
    print(f"{flags.FLAGS['from'].value} -> {run}\nscore it with: python -m fakejax.evaluate --workdir {run} "
          f"--dataset PREPARED_DATASET " + (f"(preset {preset})" if preset else "--mode five_crops (no preset)"))
    return
  model = flags.FLAGS.model
  if not model:
    raise cli.UserError(f"--from {flags.FLAGS['from'].value} needs --model")
  weights, info = convert(flags.FLAGS["from"].value, model, src)
  # Check against the architecture before writing anything.
  abstract = nnx.state(nnx.eval_shape(lambda: models.create(model, 2)))
  init_model_state(abstract, weights, f"{src}")
  checkpoint.save_weights(out, weights, info)
  n = sum(int(np.prod(np.shape(v))) for v in weights.values())
  print(f"{len(weights)} arrays ({n:,} values) of {info['origin']} {model} -> {os.path.abspath(out)}\n"
        f"train from them with: --config.model.name={model} --config.model.init_from={out}")


if __name__ == "__main__":
  flags.DEFINE_enum("from", None, list(SUPPORTED) + list(PUBLISHED), "Origin of the weight file.")
  flags.DEFINE_enum("model", None, sorted({m for v in SUPPORTED.values() for m in v}),
                    "Model name (the released detectors: only --from dda or bfree, for another DINOv2 than theirs).")
  flags.DEFINE_string("clip", None, "--from univfd: the CLIP ViT-L/14 weights (open_clip's "
                      "open_clip_model.safetensors, or OpenAI's ViT-L-14.pt with PyTorch).")
  flags.mark_flags_as_required(["from"])
  cli.run(main, devices="shared")
