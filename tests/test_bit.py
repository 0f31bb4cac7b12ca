"""BiT ResNet-V2: size and shapes as the released model, its .npz names, outputs equal to timm's."""

from flax import nnx
import jax
import numpy as np
import pytest

from tests.conftest import assert_bf16_like_amp

from fakejax import checkpoint
from fakejax import convert
from fakejax import models


def test_backbone_parameter_count():
  model = nnx.eval_shape(lambda: models.create("bit_resnet50", 2))
  # timm.create_model('resnetv2_50x1_bit', num_classes=0): sum of parameters().numel().
  assert models.backbone_param_count(model, with_batch_stats=True) == 23_500_352
  assert nnx.state(model.head)["kernel"].shape == (2048, 2) == (model.num_features, 2)


def test_layer_shapes_at_224():
  model = nnx.eval_shape(lambda: models.create("bit_resnet50", 2))
  shapes = dict(models.layer_shapes(model, 224))
  # A ResNet-50's maps at 224 px (timm's pool_size (7, 7) for resnetv2_50x1_bit).
  assert shapes["root"] == (1, 56, 56, 64)
  assert [shapes[f"block{i}"] for i in (1, 2, 3, 4)] == [
      (1, 56, 56, 256), (1, 28, 28, 512), (1, 14, 14, 1024), (1, 7, 7, 2048)]
  assert len(shapes) == 1 + (3 + 4 + 6 + 3) + 4 and model.CAM_LAYER in shapes


def _random_model(num_classes, seed=0, **kw):
  """A BiT with random parameters (GroupNorm affine too), built without eager initialisation."""
  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: models.create("bit_resnet50", num_classes, **kw)))
  fill = lambda path, x: ((rng.uniform(0.5, 1.5, x.shape) if checkpoint.path_name(path).endswith("scale") else
                           rng.normal(0, 0.5, x.shape)).astype(np.float32))
  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def test_taps_see_every_layer_and_steer_the_forward():
  model = _random_model(3, width=0.125)
  seen = []
  zero_block4 = lambda n, a: seen.append(n) or (a * 0 if n == "block4" else a)
  logits = nnx.jit(lambda m, x: m(x, taps=zero_block4))(model, jax.random.normal(jax.random.key(0), (2, 32, 32, 3)))
  assert tuple(seen) == models.layer_names(model)
  # With block4 zeroed, the pre-head GroupNorm outputs its bias: logits = relu(bias) @ kernel + bias.
  want = np.maximum(model.norm.bias[...], 0) @ model.head.kernel[...] + model.head.bias[...]
  np.testing.assert_allclose(logits, np.broadcast_to(want, (2, 3)), rtol=1e-5)


def _released(width=1.0, head_classes=21843):
  """{name: (shape, our parameter path)} of a released BiT-M-R50xW .npz.

  Written from big_transfer's bit_tf2/models.py (what produced the files): HWIO kernels, the
  stride-2 projection `a/proj` in the first unit of each block, GroupNorm gamma/beta per channel.
  """
  f = lambda n: int(n * width)
  spec = {"resnet/root_block/standardized_conv2d/kernel": ((7, 7, 3, f(64)), "root/kernel"),
          "resnet/group_norm/gamma": ((f(2048),), "norm/scale"),
          "resnet/group_norm/beta": ((f(2048),), "norm/bias"),
          "resnet/head/conv2d/kernel": ((1, 1, f(2048), head_classes), None),
          "resnet/head/conv2d/bias": ((head_classes,), None)}
  cin = f(64)
  for b, units in enumerate((3, 4, 6, 3), 1):
    mid = f(64 * 2 ** (b - 1))
    for u in range(1, units + 1):
      src, dst = f"resnet/block{b}/unit{u:02d}", f"block{b}/{u - 1}"
      for k, (letter, c, kernel) in enumerate((("a", cin, (1, 1, cin, mid)), ("b", mid, (3, 3, mid, mid)),
                                                ("c", mid, (1, 1, mid, 4 * mid))), 1):
        spec[f"{src}/{letter}/group_norm/gamma"] = ((c,), f"{dst}/gn{k}/scale")
        spec[f"{src}/{letter}/group_norm/beta"] = ((c,), f"{dst}/gn{k}/bias")
        spec[f"{src}/{letter}/standardized_conv2d/kernel"] = (kernel, f"{dst}/conv{k}/kernel")
      if u == 1:
        spec[f"{src}/a/proj/standardized_conv2d/kernel"] = ((1, 1, cin, 4 * mid), f"{dst}/proj/kernel")
      cin = 4 * mid
  return spec


def _param_shapes(**kw):
  state = nnx.state(nnx.eval_shape(lambda: models.create("bit_resnet50", 2, **kw)))
  return {k: tuple(v.shape) for k, v in checkpoint.flat(nnx.to_pure_dict(state)).items()
          if not k.startswith("head/")}


def test_released_shapes_are_ours():
  assert {dst: shape for shape, dst in _released().values() if dst} == _param_shapes()


def test_released_npz_names(tmp_path):
  """Every released name lands on its parameter (each array holds its own index); head dropped."""
  spec = _released(width=0.5, head_classes=3)  # Half width keeps the file small.
  arrays = {name: np.full(shape, i, np.float32) for i, (name, (shape, _)) in enumerate(spec.items())}
  # Some released files number their convolutions; the names mean the same.
  arrays["resnet/block3/unit02/b/standardized_conv2d_7/kernel"] = arrays.pop(
      "resnet/block3/unit02/b/standardized_conv2d/kernel")
  np.savez(tmp_path / "BiT-M-R50x05.npz", **arrays)
  weights, info = convert.convert("bit", "bit_resnet50", str(tmp_path / "BiT-M-R50x05.npz"))
  assert info["preprocess"] == "minus_one_one"
  assert set(weights) == set(_param_shapes(width=0.5))
  for i, (name, (shape, dst)) in enumerate(spec.items()):
    if dst is not None:
      assert weights[dst].shape == shape and np.all(weights[dst] == i), (name, dst)
  state = nnx.state(nnx.eval_shape(lambda: models.create("bit_resnet50", 2, width=0.5)))
  convert.init_model_state(state, weights, "BiT-M-R50x05.npz")  # Every shape fits.
  assert convert.pretrained_info(f"bit:{tmp_path}/x.npz", "bit_resnet50")["preprocess"] == "minus_one_one"
  arrays["resnet/block5/unit01/a/group_norm/gamma"] = np.ones(4, np.float32)
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(convert.ConversionError, match="resnet/block5/unit01/a/group_norm/gamma"):
    convert.convert("bit", "bit_resnet50", str(tmp_path / "bad.npz"))


def _timm_to_released(sd):
  """timm resnetv2 state dict (OIHW) -> the released .npz names (HWIO)."""
  out = {}
  for key, value in sd.items():
    value = value.numpy()
    parts = key.split(".")
    if parts[0] == "stem":
      out["resnet/root_block/standardized_conv2d/kernel"] = value.transpose(2, 3, 1, 0)
    elif parts[0] == "norm":
      out[f"resnet/group_norm/{ {'weight': 'gamma', 'bias': 'beta'}[parts[1]] }"] = value
    else:
      _, s, _, b, layer, *_, leaf = parts
      unit = f"resnet/block{int(s) + 1}/unit{int(b) + 1:02d}"
      if layer == "downsample":
        out[f"{unit}/a/proj/standardized_conv2d/kernel"] = value.transpose(2, 3, 1, 0)
      elif layer.startswith("conv"):
        out[f"{unit}/{'abc'[int(layer[-1]) - 1]}/standardized_conv2d/kernel"] = value.transpose(2, 3, 1, 0)
      else:
        gn = {"weight": "gamma", "bias": "beta"}[leaf]
        out[f"{unit}/{'abc'[int(layer[-1]) - 1]}/group_norm/{gn}"] = value
  return out


@pytest.mark.torch
def test_timm_resnetv2_50x1_bit_parity(tmp_path):
  """timm's BiT with random weights, saved under the released names, gives our pooled features."""
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  torch.manual_seed(0)
  ref = timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=0).eval()
  for m in ref.modules():
    if isinstance(m, torch.nn.GroupNorm):
      m.weight.data.uniform_(0.5, 1.5)
      m.bias.data.normal_(0, 0.5)
    elif isinstance(m, torch.nn.Conv2d):
      m.eps = 1e-10  # The released code's weight-standardisation epsilon (timm's BiT uses 1e-8).
      m.weight.data += 0.1 * torch.randn(m.weight.shape[0], 1, 1, 1)  # Means standardisation removes.
  # 64 px: every stride-2 layer sees an even size, where "fixed" padding differs from SAME.
  x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # PyTorch's mixed precision: the bf16 bound.
      amp = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).float().numpy()
  np.savez(tmp_path / "bit.npz", **_timm_to_released(ref.state_dict()))
  weights, _ = convert.convert("bit", "bit_resnet50", str(tmp_path / "bit.npz"))
  # An identity head: the logits are the pooled features. (Built abstract: eager init is slow.)
  weights.update({"head/kernel": np.eye(2048, dtype=np.float32), "head/bias": np.zeros(2048, np.float32)})
  graphdef, state = nnx.split(nnx.eval_shape(lambda: models.create("bit_resnet50", 2048)))
  model = nnx.merge(graphdef, convert.init_model_state(state, weights, "bit.npz"))
  model.eval()
  got = np.asarray(nnx.jit(lambda m, x: m(x))(model, jax.device_put(x)))
  err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
  assert err <= 1e-4, err
  graphdef16, _ = nnx.split(nnx.eval_shape(lambda: models.create("bit_resnet50", 2048, dtype="bfloat16")))
  model16 = nnx.merge(graphdef16, nnx.state(model))
  assert_bf16_like_amp(nnx.jit(lambda m, x: m(x))(model16, jax.device_put(x)).astype(np.float32), amp, want)
