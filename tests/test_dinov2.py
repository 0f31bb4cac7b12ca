"""DINOv2 ViTs (models.dinov2), LoRA (models.lora) and their weight files (convert --from timm_dinov2|dda).

Without PyTorch: LoRA against its formula by hand, the frozen backbone under lora.TRAINABLE, a run
trained with model.transfer='lora' (only the adapters and the head move; it restores, evaluates and
predicts), the optimizer's groups and DDA's schedule, configs/dda.py, the shapes at DDA's 336 and
B-Free's 504 px, and the converter's layouts (timm, the facebookresearch hub, Hugging Face, DDA's
checkpoint) against each other on hand-written state dicts. Against timm itself (random weights;
make test-torch): the tokens after the final norm at the native size and at interpolated ones, with
and without registers, the positional-embedding resampling against timm's and the hub's
F.interpolate, DDA's LoRA layers, torch's CosineAnnealingLR, and a DDA checkpoint converted by the
CLI and scored by `predict` against timm + LoRA + fc.
"""

import csv
import os
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image
import pytest
from safetensors.numpy import save_file

from tests.conftest import ROOT
from tests.conftest import assert_bf16_like_amp
from tests.conftest import subprocess_env
from fakejax import checkpoint
from fakejax import cli
from fakejax import convert
from fakejax import defaults
from fakejax import models
from fakejax import predict
from fakejax import runs
from fakejax import scoring
from fakejax import sharding
from fakejax import training
from fakejax.models import dinov2
from fakejax.models import lora
from fakejax.training import optim as optim_lib
from fakejax.training import strategies
from fakejax.training import trainer

TINY = dict(depth=2, heads=4, hidden=64, patch=14, image_size=126)  # dinov2_vit_tiny's: grid 9.


def _tiny(registers=0, seed=0, **kw):
  return dinov2.DinoV2("dinov2_vit_tiny", registers=registers, rngs=nnx.Rngs(seed), **kw)


def timm_state_dict(width=64, depth=2, patch=14, grid=9, registers=0, seed=0, embed_class=None):
  """A DINOv2 state dict with timm's names, written by hand: random everything (LayerScale, tokens
  and norms included). `embed_class`: pos_embed has a row for the class token (timm's layout
  without registers; default: when there are none)."""
  rng = np.random.default_rng(seed)
  r = lambda *shape: rng.normal(0, 0.1, shape).astype(np.float32)
  embed_class = not registers if embed_class is None else embed_class
  sd = {"cls_token": r(1, 1, width), "pos_embed": r(1, grid * grid + embed_class, width),
        "patch_embed.proj.weight": r(width, 3, patch, patch), "patch_embed.proj.bias": r(width),
        "norm.weight": 1 + r(width), "norm.bias": r(width)}
  if registers:
    sd["reg_token"] = r(1, registers, width)
  for i in range(depth):
    for name, cout, cin in (("attn.qkv", 3 * width, width), ("attn.proj", width, width),
                            ("mlp.fc1", 4 * width, width), ("mlp.fc2", width, 4 * width)):
      sd[f"blocks.{i}.{name}.weight"], sd[f"blocks.{i}.{name}.bias"] = r(cout, cin), r(cout)
    for j in (1, 2):
      sd[f"blocks.{i}.norm{j}.weight"], sd[f"blocks.{i}.norm{j}.bias"] = 1 + r(width), r(width)
      sd[f"blocks.{i}.ls{j}.gamma"] = r(width)
  return sd


def _load(model, weights):
  nnx.update(model, convert.init_model_state(nnx.state(model), weights, "test"))
  return model


def _images(n, h, w=None, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, h, w or h, 3)).astype(np.float32))


# ---------------------------------------------------------------------------
# LoRA.
# ---------------------------------------------------------------------------
def test_lora_with_zero_b_is_the_base_model():
  """B starts at zero: the adapted model computes what the base model does, at any input size;
  the converted base weights load into it (the adapters keep their initial values)."""
  weights = convert.from_timm_dinov2(timm_state_dict(registers=4))
  base = _load(_tiny(registers=4), weights)
  adapted = _load(_tiny(registers=4, lora_rank=4, lora_alpha=2.0), weights)
  assert np.all(np.asarray(adapted.blocks[0].fc2.lora_b[...]) == 0)
  assert np.abs(np.asarray(adapted.blocks[0].qkv.lora_a[...])).max() > 0
  for x in (_images(2, 126), _images(1, 70, 98)):
    np.testing.assert_array_equal(np.asarray(adapted.features(x)), np.asarray(base.features(x)))


def test_lora_delta_is_alpha_over_rank_x_a_b():
  """One adapted layer: its output minus the base layer's is alpha / rank * x @ A @ B (numpy)."""
  model = _tiny(lora_rank=3, lora_alpha=1.5, lora_targets=("qkv", "fc1"))
  assert isinstance(model.blocks[1].qkv, lora.LoRALinear)
  assert not isinstance(model.blocks[1].proj, lora.LoRALinear)
  layer = model.blocks[1].fc1
  rng = np.random.default_rng(0)
  layer.lora_b[...] = jnp.asarray(rng.normal(size=(3, 256)).astype(np.float32))
  x = rng.normal(size=(2, 5, 64)).astype(np.float32)
  a, b = np.asarray(layer.lora_a[...], np.float64), np.asarray(layer.lora_b[...], np.float64)
  kernel, bias = np.asarray(layer.kernel[...], np.float64), np.asarray(layer.bias[...], np.float64)
  want = x @ kernel + bias + 1.5 / 3 * (x @ a @ b)
  np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)
  bound = 64**-0.5  # kaiming_uniform_(a=sqrt(5)) of (rank, in): +-1/sqrt(in).
  assert np.abs(a).max() <= bound and np.abs(a).max() > 0.8 * bound


def test_a_frozen_backbone_trains_only_lora_and_the_head():
  """wrt=lora.TRAINABLE: gradients and updates reach the adapters and the head, nothing else."""
  model = _tiny(registers=4, lora_rank=2, single_logit=True)
  frozen = lambda m: checkpoint.flat(nnx.to_pure_dict(nnx.state(m, nnx.Not(lora.TRAINABLE))))
  before, x = frozen(model), _images(2, 70)
  opt = nnx.Optimizer(model, optax.sgd(0.5), wrt=lora.TRAINABLE)
  loss = lambda m: jnp.mean(optax.sigmoid_binary_cross_entropy(m(x)[:, 1], jnp.array([0.0, 1.0])))
  grads = nnx.grad(loss, argnums=nnx.DiffState(0, lora.TRAINABLE))(model)
  names = set(checkpoint.flat(nnx.to_pure_dict(grads)))
  assert names == {k for k in checkpoint.flat(nnx.to_pure_dict(nnx.state(model))) if lora.is_lora(k)
                   or k.startswith("head/")} and len(names) == 2 * 4 * 2 + 2
  b_before = np.asarray(model.blocks[0].proj.lora_b[...]).copy()
  opt.update(model, grads)
  after = frozen(model)
  assert before.keys() == after.keys() and "blocks/0/qkv/kernel" in after
  for k in before:
    np.testing.assert_array_equal(np.asarray(after[k]), np.asarray(before[k]), err_msg=k)
  assert np.abs(np.asarray(model.blocks[0].proj.lora_b[...]) - b_before).max() > 0


# ---------------------------------------------------------------------------
# Training with model.transfer='lora' (configs/dda.py).
# ---------------------------------------------------------------------------
def _lora_config(make_config, **kw):
  """dinov2_vit_tiny with rank-2 LoRA and DDA's head and resampling, on the tiny synthetic benchmark."""
  return make_config(**{"model.name": "dinov2_vit_tiny", "model.transfer": "lora", "model.lora_rank": 2,
                        "model.single_logit": True, "model.pos_interp": "hub", "model.preprocess": "clip",
                        "data.image_size": 28, "optim.name": "adamw", "optim.lr": 1e-2,
                        "model.backbone_lr": 0.5, "total_steps": 3, **kw})


def test_lora_run_trains_only_the_adapters_and_the_head(make_config, tiny_synthetic, tmp_path):
  """Three steps of transfer='lora': every backbone parameter is bit for bit its initial value,
  every B factor is off zero, the head moved; the run restores from its saved config (LoRA
  included), evaluates and predicts."""
  c = _lora_config(make_config)
  workdir = str(tmp_path / "lora")
  out = training.train_and_evaluate(c, workdir)
  assert out["step"] == 3 and 0 <= out["test"]["accuracy"] <= 1
  ts = training.TrainState.for_config(trainer.resolve(c), 2, 3, sharding.make_mesh())  # The run's own init.
  init = checkpoint.flat(nnx.to_pure_dict(ts.init()["model"]))
  run = runs.Run(workdir, which="latest")
  assert run.config.model.lora_rank == 2 and run.config.model.transfer == "lora"
  got = checkpoint.flat(nnx.to_pure_dict(run.state))
  assert got.keys() == init.keys() and "blocks/1/fc2/lora_b" in got
  frozen = {k for k in got if not (lora.is_lora(k) or k.startswith("head/"))}
  for k in frozen:
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(init[k]), err_msg=k)
  moved = {k for k in got.keys() - frozen if not np.array_equal(np.asarray(got[k]), np.asarray(init[k]))}
  b_factors = {k for k in got if k.endswith("lora_b")}
  assert len(b_factors) == 2 * 4 and b_factors <= moved and {"head/kernel", "head/bias"} <= moved
  assert all(np.abs(np.asarray(got[k])).max() > 0 for k in b_factors)
  idx = tiny_synthetic.select("test")[:4]
  results, labels = run.score_sets([(tiny_synthetic, "test", idx)], run.view("full"))["test"]
  assert labels.tolist() == tiny_synthetic.index("test")["label"][idx].tolist()
  src, files = tiny_synthetic.source("test"), []
  for i in idx:
    files.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(tiny_synthetic.decode(src[int(i)])).save(files[-1])
  rows = predict.predict(run, files, run.view("full"), 0.5)  # The same pixels: the same scores.
  assert not any(r["error"] for r in rows)
  np.testing.assert_allclose([float(r["p_fake"]) for r in rows], [r.score for r in results], atol=2e-6)


def test_lora_transfer_needs_adapters_and_dinov2():
  c = defaults.get_config()
  c.model.transfer = "lora"
  with pytest.raises(cli.UserError, match="lora_rank"):
    strategies.for_config(c, 10)
  c.model.lora_rank = 4  # On Xception: no LoRA layers to put it on.
  with pytest.raises(cli.UserError, match="DINOv2"):
    models.from_config(c.model, 2)


def test_adapters_and_head_take_the_full_rate_and_adamw_decays_the_factors():
  """backbone_lr scales the backbone alone; AdamW with weight decay (and zero gradients) moves
  every parameter of >= 2 dimensions, LoRA factors included, by -lr wd p times its group's scale."""
  model = _tiny(lora_rank=2, single_logit=True)
  params = nnx.state(model, nnx.Param)
  optim = ml_collections.ConfigDict(dict(name="adamw", weight_decay=0.5))
  tx = optim_lib.create_transfer_optimizer(optim, lambda step: 0.1, backbone_lr=0.25)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  flat_p, flat_u = (checkpoint.flat(nnx.to_pure_dict(t)) for t in (params, updates))
  for k, p in flat_p.items():
    scale = 1.0 if lora.is_lora(k) or k.startswith("head/") else 0.25
    want = -0.1 * 0.5 * scale * np.asarray(p) if np.ndim(p) >= 2 else np.zeros(np.shape(p))
    np.testing.assert_allclose(np.asarray(flat_u[k]), want, rtol=1e-6, atol=1e-12, err_msg=k)


def test_cosine_annealing_is_torchs_closed_form_past_t_max():
  """DDA's CosineAnnealingLR(T_max=1000, eta_min=lr * 1e-3), stepped every step: down to eta_min
  at 1000, back up to lr at 2000."""
  optim = defaults.from_file(os.path.join(ROOT, "configs", "dda.py")).optim
  fn = optim_lib.create_learning_rate_fn(optim, 5000)
  lr, lo = 1e-4, 1e-7
  for t in (0, 1, 250, 999, 1000, 1500, 2000, 3333):
    want = lo + (lr - lo) * 0.5 * (1 + np.cos(np.pi * t / 1000))
    np.testing.assert_allclose(float(fn(t)), want, rtol=1e-5, err_msg=str(t))


def test_dda_config_and_its_published_run():
  c = defaults.from_file(os.path.join(ROOT, "configs", "dda.py"))
  m = c.model
  assert (m.name, m.transfer, m.lora_rank, m.lora_alpha, m.pos_interp, m.preprocess) == (
      "dinov2_vit_l14", "lora", 8, 1.0, "hub", "clip")
  assert tuple(m.lora_targets) == dinov2.LORA_TARGETS and m.single_logit and c.data.pairs
  assert c.data.image_size == 336 and c.data.too_small == "zero" and m.init_from.startswith("timm_dinov2:")
  photo = defaults.from_file(os.path.join(ROOT, "configs", "dda.py"), "photo")
  assert photo.data.dir == "photo" and photo.data.pairs and photo.model.name in dinov2.ARCHS
  with pytest.raises(ValueError, match="photo"):
    defaults.from_file(os.path.join(ROOT, "configs", "dda.py"), "nonsense")
  pub = convert.published_config("dda")
  for k in ("name", "lora_rank", "lora_alpha", "pos_interp", "preprocess", "single_logit"):
    assert pub.model[k] == m[k], k
  view = runs.view_of(pub.data, "auto", convert.PUBLISHED["dda"]["preset"])
  assert (view.mode, view.crop, view.resize, view.too_small) == ("full", 336, 0, "zero")
  assert convert.published_config("dda", "dinov2_vit_tiny").model.name == "dinov2_vit_tiny"
  with pytest.raises(cli.UserError, match="--model"):
    convert.published_config("npr", "dinov2_vit_tiny")


# ---------------------------------------------------------------------------
# Shapes and positional embeddings.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, size, tokens", [
    ("dinov2_vit_l14", 336, 24), ("dinov2_vit_l14_reg4", 504, 36), ("dinov2_vit_s14", 224, 16),
    ("dinov2_vit_b14_reg4", 518, 37)])
def test_the_published_sizes_take_any_multiple_of_14(name, size, tokens):
  model = nnx.eval_shape(lambda: models.create(name, 2, lora_rank=8))
  width, depth = dinov2.ARCHS[name][:2]
  shapes = models.layer_shapes(model, size, batch=2)
  assert shapes[0] == ("patch_embed", (2, tokens, tokens, width)) and len(shapes) == depth + 1
  assert shapes[-1] == (f"blocks.{depth - 1}", (2, tokens, tokens, width))
  graphdef, state = nnx.split(model)
  out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).tokens(x), state,
                       jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  assert out.shape == (2, 1 + dinov2.ARCHS[name][3] + tokens**2, width)
  assert models.resolve_preprocess(name, "auto") == "imagenet" and name in models.NO_BATCH_NORM


def test_resampling_matrices():
  """Rows of weights that sum to 1; the same grid is left alone; 'hub' samples further out."""
  for n_in, n_out in ((37, 24), (37, 36), (9, 13), (37, 16)):
    for mode in dinov2.POS_INTERP:
      m = dinov2.resample_matrix(n_in, n_out, mode)
      assert m.shape == (n_out, n_in)
      np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)  # Weights in float32, as torch
  np.testing.assert_allclose(dinov2.resample_matrix(9, 9, "timm"), np.eye(9), atol=1e-12)
  pos = jnp.asarray(np.random.default_rng(0).normal(size=(81, 8)).astype(np.float32))
  for mode in dinov2.POS_INTERP:
    assert dinov2.resample_pos_embed(pos, (9, 9), (9, 9), mode) is pos
  with pytest.raises(ValueError, match="pos_interp"):
    _tiny(pos_interp="bilinear")
  weights = convert.from_timm_dinov2(timm_state_dict())
  timm_like, hub_like = _load(_tiny(), weights), _load(_tiny(pos_interp="hub"), weights)
  for size, same in ((126, True), (70, False)):
    x = _images(1, size)
    assert np.array_equal(np.asarray(timm_like.features(x)), np.asarray(hub_like.features(x))) == same


# ---------------------------------------------------------------------------
# Weight files.
# ---------------------------------------------------------------------------
def _hub_layout(sd, rng):
  """timm's register layout as the facebookresearch hub saves it: pos_embed with a class row (the
  hub adds it to the class token), 'register_tokens', a mask token."""
  pos0 = rng.normal(0, 0.1, (1, 1, sd["cls_token"].shape[-1])).astype(np.float32)
  hub = {k: v for k, v in sd.items() if k not in ("cls_token", "pos_embed", "reg_token")}
  hub.update(cls_token=sd["cls_token"] - pos0, pos_embed=np.concatenate([pos0, sd["pos_embed"]], 1),
             register_tokens=sd["reg_token"], mask_token=np.zeros_like(pos0[0]))
  return hub


def _hf_layout(hub):
  """The hub's names as Hugging Face's Dinov2WithRegistersModel has them (q, k, v apart)."""
  names = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
           "register_tokens": "embeddings.register_tokens", "mask_token": "embeddings.mask_token",
           "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
           "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
           "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
  hf = {}
  for k, v in hub.items():
    if ".attn.qkv." in k:
      for part, chunk in zip(("query", "key", "value"), np.split(v, 3, 0)):
        name = k.removeprefix("blocks.").replace("attn.qkv", f"attention.attention.{part}")
        hf[f"encoder.layer.{name}"] = chunk
      continue
    k = names.get(k, k).replace("attn.proj", "attention.output.dense").replace("blocks.", "encoder.layer.")
    hf[k.replace("ls1.gamma", "layer_scale1.lambda1").replace("ls2.gamma", "layer_scale2.lambda1")] = v
  return {f"dinov2.{k}": v for k, v in hf.items()} | {"classifier.weight": np.zeros((3, 128), np.float32)}


def test_timm_hub_and_hugging_face_layouts_convert_alike():
  rng = np.random.default_rng(1)
  sd = timm_state_dict(registers=4)
  want = convert.from_timm_dinov2(sd)
  assert want["reg_token"].shape == (4, 64) and want["pos_embed"].shape == (81, 64)
  np.testing.assert_array_equal(want["blocks/1/qkv/kernel"], sd["blocks.1.attn.qkv.weight"].T)
  np.testing.assert_array_equal(want["patch_embed/kernel"],
                                sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(want["blocks/0/ls2"], sd["blocks.0.ls2.gamma"])
  hub = _hub_layout(sd, rng)
  for layout in (hub, _hf_layout(hub)):
    got = convert.from_timm_dinov2(layout)
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-7, err_msg=k)
  # Without registers timm's pos_embed has the class row (the hub's layout): it joins the class token.
  plain = timm_state_dict()
  got = convert.from_timm_dinov2(plain)
  np.testing.assert_array_equal(got["cls_token"], plain["cls_token"][0, 0] + plain["pos_embed"][0, 0])
  np.testing.assert_array_equal(got["pos_embed"], plain["pos_embed"][0, 1:])
  # Registers with positional rows too (timm's no_embed_class=False): both fold in.
  both = timm_state_dict(registers=2, embed_class=True)
  rows = rng.normal(size=(1, 2, 64)).astype(np.float32)
  both["pos_embed"] = np.concatenate([both["pos_embed"][:, :1], rows, both["pos_embed"][:, 1:]], 1)
  got = convert.from_timm_dinov2(both)
  np.testing.assert_array_equal(got["reg_token"], both["reg_token"][0] + both["pos_embed"][0, 1:3])


def test_dda_checkpoint_converts_with_its_adapters_and_head():
  """DDA's DINOv2ModelWithLoRA state dict: 'base_model.model.' + LoRALinear's original_layer and
  lora.lora_A (rank, in) / lora_B (out, rank), the head 'base_model.fc'."""
  rng = np.random.default_rng(2)
  sd = timm_state_dict()
  dda = {}
  for k, v in sd.items():
    m = k.rsplit(".", 1)
    if any(t in k for t in ("attn.qkv.", "attn.proj.", "mlp.fc1.", "mlp.fc2.")):
      dda[f"base_model.model.{m[0]}.original_layer.{m[1]}"] = v
      if m[1] == "weight":
        dda[f"base_model.model.{m[0]}.lora.lora_A"] = rng.normal(size=(8, v.shape[1])).astype(np.float32)
        dda[f"base_model.model.{m[0]}.lora.lora_B"] = rng.normal(size=(v.shape[0], 8)).astype(np.float32)
    else:
      dda[f"base_model.model.{k}"] = v
  dda.update({"base_model.model.mask_token": np.zeros((1, 64), np.float32),
              "base_model.fc.weight": rng.normal(size=(1, 64)).astype(np.float32),
              "base_model.fc.bias": np.array([0.5], np.float32)})
  got = convert.from_timm_dinov2(dda)
  prefix = "base_model.model.blocks.1."
  np.testing.assert_array_equal(got["blocks/1/fc2/lora_a"], dda[prefix + "mlp.fc2.lora.lora_A"].T)
  np.testing.assert_array_equal(got["blocks/0/qkv/kernel"], sd["blocks.0.attn.qkv.weight"].T)
  np.testing.assert_array_equal(got["head/kernel"], dda["base_model.fc.weight"].T)
  with pytest.raises(ValueError, match="lora_a"):  # Adapters are never dropped silently.
    _load(_tiny(single_logit=True), got)
  model = _load(_tiny(lora_rank=8, single_logit=True), got)  # Every adapter and the head taken.
  np.testing.assert_array_equal(model.blocks[1].proj.lora_b[...], dda[prefix + "attn.proj.lora.lora_B"].T)
  assert float(model.head.bias[0]) == 0.5


def test_timm_dinov2_origin_reads_safetensors_and_names_bad_keys(tmp_path):
  sd = timm_state_dict(registers=4)
  save_file(sd, str(tmp_path / "model.safetensors"))
  weights, info = convert.convert("timm_dinov2", "dinov2_vit_tiny", str(tmp_path / "model.safetensors"))
  assert info["preprocess"] == "imagenet" and "dinov2_vit_l14_reg4" in convert.SUPPORTED["timm_dinov2"]
  model = _load(_tiny(registers=4), weights)
  np.testing.assert_array_equal(model.reg_token[...], sd["reg_token"][0])
  with pytest.raises(ValueError, match="reg_token"):  # A register file into a model without registers.
    _load(_tiny(), weights)
  sd["blocks.0.attn.q_norm.weight"] = np.ones(64, np.float32)
  with pytest.raises(convert.ConversionError, match="q_norm"):
    convert.from_timm_dinov2(sd)


# ---------------------------------------------------------------------------
# Against timm (make test-torch).
# ---------------------------------------------------------------------------
def _timm_tiny(registers, seed=0):
  """timm's VisionTransformer with DINOv2's options at dinov2_vit_tiny's size (random weights, the
  LayerScale, class and register tokens and norms moved off their initial values)."""
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  torch.manual_seed(seed)
  model = timm.models.vision_transformer.VisionTransformer(
      img_size=126, patch_size=14, embed_dim=64, depth=2, num_heads=4, init_values=1e-5, num_classes=0,
      reg_tokens=registers, no_embed_class=bool(registers), dynamic_img_size=True)
  return torch, _randomize(torch, model)


def _randomize(torch, model):
  """LayerScale, tokens, norms and the positional embedding off their initial values, so that each
  counts (timm starts LayerScale at 1e-5, the tokens at ~1e-6, the embedding at std 0.02)."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name == "pos_embed":
        p.copy_(torch.randn_like(p))
      elif "gamma" in name or "token" in name or "norm" in name:
        p.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
  return model.eval()


def _timm_tokens(torch, model, x):
  with torch.no_grad():
    return model.forward_features(torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)).numpy()


def _ours_from(torch, ref, registers, **kw):
  weights = convert.from_timm_dinov2({k: v.numpy() for k, v in ref.state_dict().items()})
  return _load(_tiny(registers=registers, **kw), weights)


@pytest.mark.torch
@pytest.mark.parametrize("registers", [0, 4])
def test_tokens_match_timm_at_native_and_interpolated_sizes(registers):
  """All tokens after the final norm, float32: within 1e-5 of the largest, at the native 126 px
  (grid 9), downsampled (70: 5), upsampled (182: 13) and non-square (98x140) embeddings; bfloat16
  within twice torch.autocast's error (on the last size)."""
  torch, ref = _timm_tiny(registers)
  model = _ours_from(torch, ref, registers)
  for h, w in ((126, 126), (70, 70), (182, 182), (98, 140)):
    x = _images(2, h, w, seed=h)
    want, got = _timm_tokens(torch, ref, x), np.asarray(model.tokens(x))
    err = np.abs(got - want).max()
    print(f"registers {registers} {h}x{w}: max abs diff {err:.2e} (largest {np.abs(want).max():.2f})")
    assert got.shape == want.shape and err <= 1e-5 * np.abs(want).max(), (h, w, err)
  with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # PyTorch's mixed precision: the bound.
    amp = ref.forward_features(torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)).float().numpy()
  model16 = _tiny(registers=registers, dtype=jnp.dtype("bfloat16"))
  nnx.update(model16, nnx.state(model))
  assert_bf16_like_amp(model16.tokens(x).astype(jnp.float32), amp, want)


@pytest.mark.torch
def test_vit_s14_reg4_matches_timm_at_224_and_336():
  """The real ViT-S/14 with registers (37x37 embedding, resampled to 16 and 24): the features."""
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  torch.manual_seed(0)
  ref = _randomize(torch, timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False,
                                            dynamic_img_size=True))
  weights = convert.from_timm_dinov2({k: v.numpy() for k, v in ref.state_dict().items()})
  model = _load(dinov2.DinoV2("dinov2_vit_s14_reg4", rngs=nnx.Rngs(0)), weights)
  for size in (224, 336):
    x = _images(1, size, seed=size)
    want, got = _timm_tokens(torch, ref, x)[:, 0], np.asarray(model.features(x))
    err = np.abs(got - want).max()
    print(f"ViT-S/14 reg4 {size}: max abs diff {err:.2e} (largest {np.abs(want).max():.2f})")
    assert err <= 1e-4 * np.abs(want).max(), (size, err)


@pytest.mark.torch
def test_pos_embed_resampling_matches_timm_and_the_hub():
  """'timm': timm's resample_abs_pos_embed; 'hub': the facebookresearch hub's interpolate_pos_encoding
  (F.interpolate with scale_factor (new + 0.1) / 37, bicubic, no antialiasing), on 37x37."""
  torch = pytest.importorskip("torch")
  from timm.layers import resample_abs_pos_embed  # pylint: disable=g-import-not-at-top
  pos = np.random.default_rng(0).normal(size=(37 * 37, 16)).astype(np.float32)
  for new in ((16, 16), (24, 24), (36, 36), (24, 30), (45, 45)):
    timm_want = resample_abs_pos_embed(torch.from_numpy(pos)[None], list(new), (37, 37), num_prefix_tokens=0)
    grid = torch.from_numpy(pos).reshape(1, 37, 37, 16).permute(0, 3, 1, 2)
    hub_want = torch.nn.functional.interpolate(grid, mode="bicubic", antialias=False,
                                               scale_factor=tuple((n + 0.1) / 37 for n in new))
    hub_want = hub_want.permute(0, 2, 3, 1).reshape(-1, 16)
    for mode, want in (("timm", timm_want[0].numpy()), ("hub", hub_want.numpy())):
      got = np.asarray(dinov2.resample_pos_embed(jnp.asarray(pos), (37, 37), new, mode))
      print(f"{mode} {new}: max abs diff {np.abs(got - want).max():.1e}")
      # Values ~N(0, 1); torch sums in float32 (our matrices are float64): up to ~1e-5 apart.
      np.testing.assert_allclose(got, want, rtol=0, atol=2e-5, err_msg=f"{mode} {new}")
    print(f"{new}: 'hub' vs 'timm' max abs diff {np.abs(hub_want.numpy() - timm_want[0].numpy()).max():.3f}")


def _with_dda_lora(torch, ref, rank=8, alpha=1.0):
  """timm's model with DDA's LoRALinear (Training/models/lora.py, LoRALayer folded in: A (rank, in),
  B (out, rank), alpha / rank; both random here) around every block's qkv, proj, fc1 and fc2."""
  nn = torch.nn

  class LoRALinear(nn.Module):
    def __init__(self, original_layer):
      super().__init__()
      self.original_layer = original_layer
      self.lora = nn.Module()
      self.lora.lora_A = nn.Parameter(torch.randn(rank, original_layer.in_features) * 0.1)
      self.lora.lora_B = nn.Parameter(torch.randn(original_layer.out_features, rank) * 0.1)

    def forward(self, x):
      d = torch.einsum("...r,or->...o", torch.einsum("...d,rd->...r", x, self.lora.lora_A), self.lora.lora_B)
      return self.original_layer(x) + d * (alpha / rank)

  for blk in ref.blocks:
    blk.attn.qkv, blk.attn.proj = LoRALinear(blk.attn.qkv), LoRALinear(blk.attn.proj)
    blk.mlp.fc1, blk.mlp.fc2 = LoRALinear(blk.mlp.fc1), LoRALinear(blk.mlp.fc2)
  return ref.eval()


@pytest.mark.torch
def test_dda_lora_matches_its_torch_layers():
  """DDA's LoRALinear around timm's qkv, proj, fc1, fc2, B random: the converted model's tokens,
  within 1e-5."""
  torch, ref = _timm_tiny(0, seed=1)
  ref = _with_dda_lora(torch, ref)
  sd = {f"base_model.model.{k}": v.numpy() for k, v in ref.state_dict().items()}
  model = _load(_tiny(lora_rank=8, lora_alpha=1.0), convert.from_timm_dinov2(sd))
  x = _images(2, 98)
  want, got = _timm_tokens(torch, ref, x), np.asarray(model.tokens(x))
  print(f"DDA LoRA: max abs diff {np.abs(got - want).max():.2e}")
  assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.torch
def test_cosine_annealing_is_torchs_scheduler():
  """configs/dda.py's schedule against torch.optim.lr_scheduler.CosineAnnealingLR stepped per update."""
  torch = pytest.importorskip("torch")
  optim = defaults.from_file(os.path.join(ROOT, "configs", "dda.py")).optim
  fn = optim_lib.create_learning_rate_fn(optim, 3000)
  opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000, eta_min=1e-4 * 0.001)
  for t in range(3000):
    if t % 7 == 0 or t in (999, 1000, 1001, 2000):
      # float32 steps: within 1e-5 of the peak lr (1e-5 relative near eta_min = 1e-7 is 1e-12).
      np.testing.assert_allclose(float(fn(t)), opt.param_groups[0]["lr"], rtol=0, atol=1e-9, err_msg=str(t))
    opt.step()
    sched.step()


def _hub_forward(torch, ref, fc, x):
  """The hub's DinoVisionTransformer.forward_features at any size, with timm's modules: patch
  embedding, the class token, + interpolate_pos_encoding (F.interpolate, bicubic, scale_factor
  (grid + 0.1) / 9, no antialiasing; the class row kept), the blocks, the final norm; then DDA's fc
  on the class token (x_norm_clstoken). x: (N, C, H, W) normalised."""
  f = torch.nn.functional
  with torch.no_grad():
    tokens = ref.patch_embed(x)
    n, gh, gw, c = tokens.shape  # timm's dynamic_img_size: NHWC.
    pos = ref.pos_embed
    grid = pos[:, 1:].reshape(1, 9, 9, c).permute(0, 3, 1, 2)
    grid = f.interpolate(grid, mode="bicubic", antialias=False, scale_factor=((gh + 0.1) / 9, (gw + 0.1) / 9))
    assert grid.shape[-2:] == (gh, gw)
    tokens = torch.cat([ref.cls_token.expand(n, -1, -1), tokens.reshape(n, gh * gw, c)], 1)
    tokens = tokens + torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, c)], 1)
    tokens = ref.norm(ref.blocks(tokens))
    return fc(tokens[:, 0])[:, 0]


def _predict_rows(run, tmp_path, env, *flags):
  """`python -m fakejax.predict --workdir RUN [flags] tmp_path/photos`: its CSV rows by file name."""
  r = subprocess.run([sys.executable, "-m", "fakejax.predict", "--workdir", run, *flags, "--out",
                      str(tmp_path / "p.csv"), str(tmp_path / "photos")],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(tmp_path / "p.csv") as f:
    return {os.path.basename(row["path"]): row for row in csv.DictReader(f)}


@pytest.mark.torch
def test_dda_checkpoint_becomes_a_run_that_predict_scores_like_torch(tmp_path):
  """A DDA checkpoint as its trainer saves it ({'model': DINOv2ModelWithLoRA's state dict, 'optimizer',
  'total_steps'}), at dinov2_vit_tiny's size with random weights, LoRA factors and fc, converted by
  the CLI (`--from dda --model dinov2_vit_tiny`) and scored by `predict` with DDA's preset (center
  crop 336, zero-padded when smaller; CLIP's mean and std; the hub's resampling): p_fake is the
  sigmoid of the torch reference's logit within 1e-4."""
  torch, ref = _timm_tiny(0, seed=3)
  with torch.no_grad():  # The pixels' share of the class token up (LayerScale ~1, a stronger embedding).
    ref.patch_embed.proj.weight.normal_(0, 0.02)
    for p in (p for name, p in ref.named_parameters() if "gamma" in name):
      p.normal_(0, 1.0)
  ref = _with_dda_lora(torch, ref)
  fc = torch.nn.Linear(64, 1)
  torch.nn.init.normal_(fc.weight, 0.0, 1.0)
  rng = np.random.default_rng(0)
  (tmp_path / "photos").mkdir()
  sizes = {"big.png": (350, 371), "small.png": (300, 340)}  # Cropped; zero-padded to 336.
  for name, (h, w) in sizes.items():
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(tmp_path / "photos" / name)
  tv = pytest.importorskip("torchvision.transforms")
  transform = tv.Compose([tv.CenterCrop(336), tv.ToTensor(),  # DDA's Inference/inference.py.
                          tv.Normalize(mean=[0.48145466, 0.4578275, 0.40821073],
                                       std=[0.26862954, 0.26130258, 0.27577711])])
  x = {name: transform(Image.open(tmp_path / "photos" / name).convert("RGB"))[None] for name in sizes}
  with torch.no_grad():
    fc.bias.copy_(fc.bias - _hub_forward(torch, ref, fc, x["big.png"]))  # p_fake ~0.5: the steepest.
  sd = {f"base_model.model.{k}": v for k, v in ref.state_dict().items()}
  sd.update({"base_model.model.mask_token": torch.zeros(1, 64), "base_model.fc.weight": fc.weight.data,
             "base_model.fc.bias": fc.bias.data})
  opt = torch.optim.AdamW([p for n, p in ref.named_parameters() if "lora" in n], lr=1e-4)
  for p in opt.param_groups[0]["params"]:
    p.grad = torch.zeros_like(p)
  opt.step()  # An optimizer state with tensors, as theirs.
  torch.save({"model": sd, "optimizer": opt.state_dict(), "total_steps": 5}, str(tmp_path / "ckpt.pth"))
  env, run = subprocess_env(), str(tmp_path / "dda")
  r = subprocess.run([sys.executable, "-m", "fakejax.convert", "--from", "dda", "--model", "dinov2_vit_tiny",
                      str(tmp_path / "ckpt.pth"), run], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  got = _predict_rows(run, tmp_path, env)
  for name in sizes:
    want = torch.sigmoid(_hub_forward(torch, ref, fc, x[name])).item()
    with torch.no_grad():  # timm's resampling instead of the hub's: what the test must tell apart.
      timm_p = torch.sigmoid(fc(ref.forward_features(x[name])[:, 0])[:, 0]).item()
    print(f"{name}: p_fake {got[name]['p_fake']} vs torch {want:.6f} (timm's resampling: {timm_p:.6f})")
    assert got[name]["view"] == "full", got[name]
    assert abs(float(got[name]["p_fake"]) - want) <= 1e-5, (name, got[name], want)
    assert abs(timm_p - want) > 1e-4


# ---------------------------------------------------------------------------
# B-Free's five-crop test (scoring view 'five_crops', preset 'bfree').
# ---------------------------------------------------------------------------
def test_five_crops_windows_by_hand():
  """Pixels that encode their own coordinates: the five windows' origins on the 14 px token grid
  (a 150 x 100 image has a 10 x 7 grid: the remainder strips are dropped), and a small image
  tiled then cut to the first window (B-Free's replicate_wrap)."""
  yy, xx = np.mgrid[0:150, 0:100]
  img = np.stack([yy, xx, np.zeros_like(yy)], -1)
  crops = scoring.views.five_crops(img, 56, 14)
  assert crops.shape == (5, 56, 56, 3)
  # Centre: token ((10-4)//2, (7-4)//2) = (3, 1); then (0,0), bottom-left, bottom-right, top-right
  # on the 140 x 98 grid area.
  assert [tuple(c[0, 0, :2]) for c in crops] == [(42, 14), (0, 0), (84, 0), (84, 42), (0, 42)]
  small = scoring.views.five_crops(img[:30, :20], 56, 14)  # A 2 x 1 grid: 28 x 14 px repeated.
  assert (small == small[0]).all()
  want = np.tile(img[:28, :14], (2, 4, 1))
  np.testing.assert_array_equal(small[0], want)
  view = scoring.View("five_crops", crop=56)
  assert view.plan(150, 100) == ((56, 56), 5) and view.rule == "mean_logit"
  assert scoring.PRESETS["bfree"] == dict(mode="five_crops", crop=504, align=14, resize=0)


def _bfree_wrapper5crops(torch, model, embed, x, size):
  """B-Free's Wrapper5crops.forward (grip-unina/B-Free, code/networks/wrapper5crops.py),
  transcribed: the patch embedding of the whole image, its token grid repeated up to the window
  when smaller (replicate_wrap), five token windows batched through the ViT, outputs averaged."""
  g = size // 14
  e = embed.proj(x)
  if e.shape[-2] < g or e.shape[-1] < g:
    reps = (max(-(-g // e.shape[-2]), 1), max(-(-g // e.shape[-1]), 1))
    e = e.repeat(1, 1, *reps)[..., :g, :g]
  hs, ws = max((e.shape[-2] - g) // 2, 0), max((e.shape[-1] - g) // 2, 0)
  e = torch.cat((e[:, :, hs:g + hs, ws:g + ws], e[:, :, :g, :g], e[:, :, -g:, :g], e[:, :, -g:, -g:],
                 e[:, :, :g, -g:]), 0)
  y = model(embed.norm(e.flatten(2).transpose(1, 2)))
  return torch.mean(torch.stack(torch.split(y, y.shape[0] // 5, 0), 0), 0)


def _timm_tiny_reg4_fixed(seed, num_classes=0):
  """timm's DINOv2-like ViT with 4 registers at dinov2_vit_tiny's size, random weights, without
  dynamic image size: what B-Free's Wrapper5crops wraps (then set_input_size to its window)."""
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  torch.manual_seed(seed)
  return torch, _randomize(torch, timm.models.vision_transformer.VisionTransformer(
      img_size=126, patch_size=14, embed_dim=64, depth=2, num_heads=4, init_values=1e-5,
      num_classes=num_classes, reg_tokens=4, no_embed_class=True))


@pytest.mark.torch
def test_five_crops_match_bfree_wrapper():
  """A timm DINOv2 with registers (random weights, no dynamic size, set to a 56 px window as B-Free
  sets 504) through the transcribed wrapper, against the converted model on our five_crops view,
  features averaged (the head is linear, so the mean logit follows): images larger than the window,
  non-square, exactly the window, and smaller in one or both directions."""
  torch, ref = _timm_tiny_reg4_fixed(seed=0)
  model = _ours_from(torch, ref, 4)
  ref.set_input_size(img_size=56)
  embed, ref.patch_embed = ref.patch_embed, torch.nn.Identity()
  rng = np.random.default_rng(0)
  for h, w in ((150, 100), (60, 200), (56, 56), (30, 80), (20, 300), (45, 45)):
    img = rng.normal(size=(h, w, 3)).astype(np.float32)
    with torch.no_grad():
      want = _bfree_wrapper5crops(torch, ref, embed, torch.from_numpy(img).permute(2, 0, 1)[None], 56).numpy()[0]
    got = np.asarray(model.features(jnp.asarray(scoring.views.five_crops(img, 56, 14)))).mean(0)
    err = np.abs(got - want).max()
    print(f"{h}x{w}: max abs diff {err:.2e} (largest {np.abs(want).max():.2f})")
    assert err <= 1e-5 * max(np.abs(want).max(), 1), (h, w, err)


def test_bfree_folder_reads_as_its_config_yaml_says(tmp_path):
  """read_bfree / --from bfree without PyTorch (a .safetensors weight file named by config.yaml):
  the architecture from `arch`, the normalisation from `norm_type`, the positional embedding kept at
  its saved grid (model.pos_embed_size = the window) and timm's `head` as the classifier; a folder
  without config.yaml, an arch whose window disagrees with the embedding, an unknown norm_type:
  refused, nothing written."""
  sd = timm_state_dict(grid=4, registers=4, seed=2)
  rng = np.random.default_rng(3)
  sd["head.weight"], sd["head.bias"] = rng.normal(size=(1, 64)).astype(np.float32), np.ones(1, np.float32)
  folder = tmp_path / "BFREE"
  folder.mkdir()
  save_file(sd, str(folder / "w.safetensors"))
  yaml = "weights_file: w.safetensors\narch: timm_c5i{}_vit_base_patch14_reg4_dinov2.lvd142m\nnorm_type: {}\n"
  with pytest.raises(cli.UserError, match="no config.yaml"):
    convert.convert_published("bfree", str(folder), str(tmp_path / "none"), model="dinov2_vit_tiny_reg4")
  for window, norm, error in ((504, "clip", "c5i504"), (56, "imagenet", "norm_type")):
    (folder / "config.yaml").write_text(yaml.format(window, norm))
    with pytest.raises(convert.ConversionError, match=error):
      convert.convert_published("bfree", str(folder), str(tmp_path / "bad"), model="dinov2_vit_tiny_reg4")
  assert not (tmp_path / "none").exists() and not (tmp_path / "bad").exists()
  (folder / "config.yaml").write_text(yaml.format(56, "clip"))
  _, info = convert.read_bfree(str(folder / "w.safetensors"))
  assert info == {"model": "dinov2_vit_b14_reg4", "preprocess": "clip", "window": 56}
  run = convert.convert_published("bfree", str(folder), str(tmp_path / "run"), model="dinov2_vit_tiny_reg4")
  c, meta = runs.load_config(run), runs.read_json(os.path.join(run, "run.json"))
  assert (c.model.name, c.model.preprocess, c.model.pos_embed_size, c.data.image_size) == (
      "dinov2_vit_tiny_reg4", "clip", 56, 56)
  assert meta["preset"] == "" and meta["converted"]["from"] == "bfree"
  state, _ = checkpoint.restore_model(run, runs.model_spec(c.model, 2, sharding.make_mesh()).abstract, "best")
  flat = checkpoint.flat(nnx.to_pure_dict(state))
  np.testing.assert_array_equal(flat["pos_embed"], sd["pos_embed"].reshape(16, 64))
  np.testing.assert_array_equal(flat["head/kernel"], sd["head.weight"].T)


@pytest.mark.torch
def test_bfree_folder_becomes_a_run_that_predict_scores_like_its_wrapper(tmp_path):
  """B-Free's weights folder as released (config.yaml + model_epoch_best.pth holding {'model': the
  Wrapper5crops' state dict, saved after set_input_size: the positional embedding at the window's
  grid}), at a tiny size (56 px window: grid 4) with random weights and head, converted by the CLI
  (`--from bfree --model dinov2_vit_tiny_reg4`) and scored by `predict --mode five_crops`: p_fake
  is the sigmoid of the transcribed wrapper's logit (timm's model, ImageNet normalisation as
  norm_type 'resnet') within 1e-5, for an image larger than the window and one smaller."""
  tv = pytest.importorskip("torchvision.transforms")
  torch, ref = _timm_tiny_reg4_fixed(seed=5, num_classes=1)
  ref.set_input_size(img_size=56)  # Wrapper5crops.__init__: the embedding resampled to 4 x 4, then trained.
  embed, ref.patch_embed = ref.patch_embed, torch.nn.Identity()
  with torch.no_grad():
    ref.head.weight.normal_(0, 1.0)  # A head that separates: the class token's share of the logit up.
    ref.pos_embed.add_(0.1 * torch.randn_like(ref.pos_embed))  # Not a resampling of any 9 x 9 grid.
  rng = np.random.default_rng(1)
  (tmp_path / "photos").mkdir()
  sizes = {"big.png": (150, 100), "small.png": (40, 90)}  # The second: its grid repeated (replicate_wrap).
  for name, (h, w) in sizes.items():
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(tmp_path / "photos" / name)
  transform = tv.Compose([tv.ToTensor(), tv.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
  x = {name: transform(Image.open(tmp_path / "photos" / name).convert("RGB"))[None] for name in sizes}
  with torch.no_grad():
    ref.head.bias.sub_(_bfree_wrapper5crops(torch, ref, embed, x["big.png"], 56)[0])  # p_fake ~0.5: the steepest.
    want = {name: torch.sigmoid(_bfree_wrapper5crops(torch, ref, embed, x[name], 56)[0, 0]).item() for name in sizes}
  folder = tmp_path / "BFREE_tiny"
  folder.mkdir()
  sd = {**{f"patch_embed.{k}": v for k, v in embed.state_dict().items()}, **ref.state_dict()}
  torch.save({"model": sd}, str(folder / "model_epoch_best.pth"))
  (folder / "config.yaml").write_text("model_name: BFREE_tiny\nweights_file: model_epoch_best.pth\n"
                                      "arch: timm_c5i56_vit_small_patch14_reg4_dinov2.lvd142m\nnorm_type: resnet\n")
  env, run = subprocess_env(), str(tmp_path / "bfree")
  r = subprocess.run([sys.executable, "-m", "fakejax.convert", "--from", "bfree", "--model", "dinov2_vit_tiny_reg4",
                      str(folder), run], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "--mode five_crops" in r.stdout  # A 56 px window: no preset recorded (B-Free's is 504).
  config = runs.load_config(run)
  assert (config.model.pos_embed_size, config.data.image_size, config.model.preprocess) == (56, 56, "imagenet")
  got = _predict_rows(run, tmp_path, env, "--mode", "five_crops")
  for name in sizes:
    print(f"{name}: p_fake {got[name]['p_fake']} vs B-Free's wrapper {want[name]:.6f}")
    assert got[name]["view"] == "five_crops", got[name]
    assert abs(float(got[name]["p_fake"]) - want[name]) <= 1e-5, (name, got[name], want[name])
  assert abs(want["small.png"] - 0.5) > 1e-3  # The two images score apart: the test can tell.
