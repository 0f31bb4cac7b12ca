"""Weight import: outputs equal to the reference Keras / torchvision models, clear mismatch errors."""

import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

from flax import nnx  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from fakejax import checkpoint  # pylint: disable=g-import-not-at-top
from fakejax import convert  # pylint: disable=g-import-not-at-top
from fakejax import models  # pylint: disable=g-import-not-at-top
from tests.conftest import assert_bf16_like_amp  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pooled(model_name, weights, x, dtype="float32"):
  """Pooled features of our model (eval mode) holding `weights`, computed in `dtype`."""
  model = models.create(model_name, 2, dtype=dtype)
  state = nnx.state(model)
  convert.init_model_state(state, weights, "test")
  nnx.update(model, state)
  model.eval()
  maps = {}
  model(x, taps=lambda name, a: maps.setdefault(name, a))
  return np.asarray(maps[models.layer_names(model)[-1]].astype(np.float32).mean(axis=(1, 2)))  # Global pool.


def _randomize_keras_batch_norm(model, rng):
  """Non-trivial BatchNorm parameters and statistics, so a swapped or missed one shows."""
  for layer in model.layers:
    if layer.__class__.__name__ == "BatchNormalization":
      gamma, beta, mean, var = (w.shape for w in layer.weights)
      layer.set_weights([rng.uniform(0.5, 1.5, gamma), rng.normal(0, 0.1, beta),
                         rng.normal(0, 0.1, mean), rng.uniform(0.5, 1.5, var)])


def _rel_err(got, ref):
  return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def keras():
  return pytest.importorskip("keras")


@pytest.mark.parametrize("name,size,top", [("xception", 71, False), ("mobilenet_v2", 67, True)])
def test_keras_parity(keras, tmp_path, name, size, top):
  """Keras applications model, random weights, saved in the applications files' H5 layout."""
  keras.utils.set_random_seed(0)  # Keras's own initialisers: the same weights every run.
  rng = np.random.default_rng(0)
  cls = {"xception": keras.applications.Xception, "mobilenet_v2": keras.applications.MobileNetV2}[name]
  kw = dict(include_top=True, classes=7) if top else dict(include_top=False, pooling="avg")
  ref = cls(weights=None, input_shape=(size, size, 3), **kw)
  _randomize_keras_batch_norm(ref, rng)
  path = str(tmp_path / "weights.h5")
  if top:
    ref.save(path)  # Full-model H5: the weights sit under 'model_weights'.
    pool = next(l for l in ref.layers if l.__class__.__name__ == "GlobalAveragePooling2D")
    features = keras.Model(ref.input, pool.output)
  else:
    from keras.src.legacy.saving import legacy_h5_format  # pylint: disable=g-import-not-at-top
    import h5py  # pylint: disable=g-import-not-at-top
    with h5py.File(path, "w") as f:  # What keras.applications' *_notop.h5 files are.
      legacy_h5_format.save_weights_to_hdf5_group(f, ref)
    features = ref
  x = rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  want = np.asarray(features(x, training=False))
  weights, info = convert.convert("keras", name, path)
  assert info["preprocess"] == "minus_one_one"
  assert not any(k.startswith("head/") for k in weights)
  got = _pooled(name, weights, x)
  assert got.shape == want.shape
  assert _rel_err(got, want) <= 1e-4, _rel_err(got, want)
  # bfloat16: within twice the error of Keras's own mixed precision on the same weights and input.
  policy = keras.config.dtype_policy()
  keras.config.set_dtype_policy("mixed_bfloat16")
  try:
    ref16 = cls(weights=None, input_shape=(size, size, 3), **kw)
  finally:
    keras.config.set_dtype_policy(policy)
  ref16.set_weights(ref.get_weights())
  if top:
    ref16 = keras.Model(ref16.input, next(l for l in ref16.layers if l.__class__.__name__
                                         == "GlobalAveragePooling2D").output)
  amp = np.asarray(ref16(x, training=False)).astype(np.float32)
  assert_bf16_like_amp(_pooled(name, weights, x, "bfloat16"), amp, want)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet50", "resnet101", "resnet50_nodown"])
def test_torchvision_resnet_parity(tmp_path, name):
  """float32 equal to torchvision's ResNet; bfloat16 within twice torch.autocast's error.
  resnet50_nodown: AlignedForensics' res50nodown is torchvision's ResNet-50 with stride0=1 (its
  resnet_mod.py: conv1 and maxpool at stride 1, their paddings unchanged)."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  ref = getattr(torchvision.models, name.removesuffix("_nodown"))(weights=None)
  if name.endswith("_nodown"):
    ref.conv1.stride, ref.maxpool.stride = (1, 1), 1
  for m in ref.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.weight.data.uniform_(0.5, 1.5)
      m.bias.data.normal_(0, 0.1)
      m.running_mean.normal_(0, 0.1)
      m.running_var.uniform_(0.5, 1.5)
  ref.fc = torch.nn.Identity()
  ref.eval()
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # PyTorch's mixed precision: the bf16 bound.
      amp = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).float().numpy()
  sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
  save_file(sd, str(tmp_path / "r.safetensors"))
  torch.save(sd, str(tmp_path / "r.pth"))
  for f in ("r.safetensors", "r.pth"):
    weights, info = convert.convert("torchvision", name, str(tmp_path / f))
    assert info["preprocess"] == "imagenet"
    got = _pooled(name, weights, x)
    assert _rel_err(got, want) <= 1e-4, (f, _rel_err(got, want))
  assert_bf16_like_amp(_pooled(name, weights, x, "bfloat16"), amp, want)


def test_torchvision_state_dict_mapping_without_torch(tmp_path):
  """A synthetic state dict with torchvision's key names covers every parameter of our ResNet."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  abstract = checkpoint.flat(nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: models.create("resnet50", 2)))))
  sd = {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "fc.weight": np.zeros((1000, 2048), np.float32)}
  for k, v in abstract.items():
    parts = k.split("/")
    if parts[0] != "stages":
      continue
    s, b, sub, kind, leaf = parts[1:]
    tv = (f"layer{int(s) + 1}.{b}." + ({"downsample": "downsample.0" if kind == "conv" else "downsample.1"}
                                        .get(sub) or (sub if kind == "conv" else "bn" + sub[-1])))
    if kind == "conv":
      h, w, i, o = v.shape
      sd[tv + ".weight"] = np.random.default_rng(0).normal(size=(o, i, h, w)).astype(np.float32)
    else:
      torch_name = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[leaf]
      sd[f"{tv}.{torch_name}"] = np.full(v.shape, 0.5, np.float32)
  for leaf in ("weight", "bias", "running_mean", "running_var"):
    sd[f"bn1.{leaf}"] = np.ones(64, np.float32)
  sd["bn1.num_batches_tracked"] = np.zeros((), np.int64)
  save_file(sd, str(tmp_path / "r.safetensors"))
  weights, _ = convert.convert("torchvision", "resnet50", str(tmp_path / "r.safetensors"))
  assert set(weights) == {k for k in abstract if not k.startswith("head/")}
  w = weights["stages/1/0/conv2/conv/kernel"]
  np.testing.assert_array_equal(w, sd["layer2.0.conv2.weight"].transpose(2, 3, 1, 0))
  sd["features.0.weight"] = sd["conv1.weight"]  # Not a ResNet key at all.
  save_file(sd, str(tmp_path / "bad.safetensors"))
  with pytest.raises(convert.ConversionError, match="features.0.weight"):
    convert.convert("torchvision", "resnet50", str(tmp_path / "bad.safetensors"))
  weights["stages/4/0/conv1/conv/kernel"] = weights["stem/conv/kernel"]  # A ResNet key too many.
  state = nnx.state(nnx.eval_shape(lambda: models.create("resnet50", 2)))
  with pytest.raises(checkpoint.MismatchError, match="stages/4/0/conv1/conv/kernel: checkpoint"):
    convert.init_model_state(state, weights, "r.safetensors")


def test_mismatches_are_named(keras, tmp_path):
  ref = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3))
  ref.save(str(tmp_path / "m.h5"))
  with pytest.raises(convert.ConversionError, match="block1_conv1"):
    convert.convert("keras", "xception", str(tmp_path / "m.h5"))  # MobileNet weights for Xception.
  weights, _ = convert.convert("keras", "mobilenet_v2", str(tmp_path / "m.h5"))
  narrow = nnx.state(nnx.eval_shape(lambda: models.create("mobilenet_v2", 2, width=0.5)))
  with pytest.raises(checkpoint.MismatchError, match=r"stem/conv/kernel: checkpoint \(3, 3, 3, 32\) vs "
                     r"model \(3, 3, 3, 16\)"):
    convert.init_model_state(narrow, weights, "m.h5")
  del weights["last/bn/var"]
  full = nnx.state(nnx.eval_shape(lambda: models.create("mobilenet_v2", 2)))
  with pytest.raises(checkpoint.MismatchError, match="last/bn/var: checkpoint missing"):
    convert.init_model_state(full, weights, "m.h5")


@pytest.mark.slow  # an end-to-end chain of three real convert processes: make test-slow
def test_convert_command_writes_a_weights_folder(keras, tmp_path):
  ref = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3))
  ref.save(str(tmp_path / "m.h5"))
  out = str(tmp_path / "out")
  cmd = [sys.executable, "-m", "fakejax.convert", "--from", "keras", "--model", "mobilenet_v2",
         str(tmp_path / "m.h5"), out]
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  assert r.returncode == 0, r.stderr
  assert "init_from" in r.stdout
  weights, info = checkpoint.load_weights(out)
  direct, _ = convert.convert("keras", "mobilenet_v2", str(tmp_path / "m.h5"))
  assert info["origin"] == "keras" and set(weights) == set(direct)
  for k in direct:
    np.testing.assert_array_equal(weights[k], direct[k])
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)  # Never overwrites.
  assert r.returncode != 0 and "already exists" in r.stderr and "Traceback" not in r.stderr
  r = subprocess.run(cmd[:5] + ["--model", "xception", str(tmp_path / "m.h5"), str(tmp_path / "o2")],
                     capture_output=True, text=True, cwd=ROOT)
  assert r.returncode != 0 and "Not the Keras xception weights" in r.stderr
  assert not os.path.exists(tmp_path / "o2")


def test_weights_load_where_the_process_has_no_cpu_backend(tmp_path, monkeypatch):
  """A process started with JAX_PLATFORMS=cuda has no CPU backend: reading converted weights (or a
  run's) must not ask for a CPU device."""
  import jax  # pylint: disable=g-import-not-at-top
  weights = {"a/kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "b/bias": np.ones(3, np.float32)}
  checkpoint.save_weights(str(tmp_path / "w"), weights, {"origin": "test"})
  for name in ("local_devices", "devices"):
    real = getattr(jax, name)

    def no_cpu(*args, backend=None, real=real, **kw):
      if backend == "cpu":
        raise RuntimeError("Unknown backend cpu (this process runs under JAX_PLATFORMS=cuda)")
      return real(*args, backend=backend, **kw)
    monkeypatch.setattr(jax, name, no_cpu)
  got, info = checkpoint.load_weights(str(tmp_path / "w"))
  assert info == {"origin": "test"} and sorted(got) == sorted(weights)
  for k, v in weights.items():
    np.testing.assert_array_equal(got[k], v)
