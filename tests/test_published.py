"""Released detectors (NPR, SAFE, CNNDetection) converted into runs (fakejax.convert --from NAME):
the key mapping checked on small hand-written checkpoints with the official key names, the run
loaded and scored like a trained one, every mismatch named. No PyTorch needed (safetensors)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from scripts import torch_nets
from tests.conftest import assert_bf16_like_amp
from tests.conftest import subprocess_env
from fakejax import convert
from fakejax import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bn(sd, name, c, rng):
  sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
  sd[f"{name}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
  sd[f"{name}.running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
  sd[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
  sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)


def official_truncated_resnet_state_dict(head_out, seed=0, blocks=(3, 4), stem=3, head="fc1"):
  """The keys and shapes of NPR's / SAFE's networks/resnet.py state_dict(), written by hand:
  conv1 3x3 (64, 3, 3, 3), bn1, layer1 (3 bottlenecks of 64), layer2 (4 of 128, stride 2), fc1.
  With blocks (3, 4, 6, 3), stem 7 and head 'fc': torchvision's ResNet-50 (CNNDetection's)."""
  rng = np.random.default_rng(seed)
  conv = lambda o, i, k: rng.normal(0, (2 / (k * k * o)) ** 0.5, (o, i, k, k)).astype(np.float32)
  sd = {"conv1.weight": conv(64, 3, stem)}
  _bn(sd, "bn1", 64, rng)
  cin = 64
  for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), blocks), 1):
    for b in range(blocks):
      p = f"layer{layer}.{b}"
      sd[f"{p}.conv1.weight"] = conv(planes, cin, 1)
      sd[f"{p}.conv2.weight"] = conv(planes, planes, 3)
      sd[f"{p}.conv3.weight"] = conv(planes * 4, planes, 1)
      for j, c in ((1, planes), (2, planes), (3, planes * 4)):
        _bn(sd, f"{p}.bn{j}", c, rng)
      if b == 0:
        sd[f"{p}.downsample.0.weight"] = conv(planes * 4, cin, 1)
        _bn(sd, f"{p}.downsample.1", planes * 4, rng)
      cin = planes * 4
  sd[f"{head}.weight"] = rng.normal(0, 0.05, (head_out, cin)).astype(np.float32)
  sd[f"{head}.bias"] = rng.normal(0, 0.05, head_out).astype(np.float32)
  return sd


def test_cnndetection_resnet50_with_its_one_logit_fc(tmp_path):
  sd = official_truncated_resnet_state_dict(1, blocks=(3, 4, 6, 3), stem=7, head="fc")
  path = str(tmp_path / "blur_jpg_prob0.5.safetensors")
  save_file({f"module.{k}": v for k, v in sd.items()}, path)  # Saved from DataParallel.
  run = runs.Run(convert.convert_published("cnndetection", path, str(tmp_path / "run")))
  assert run.preprocess == "imagenet" and run.info["preset"] == "cnndetection"
  np.testing.assert_array_equal(run.state["head"]["kernel"][...], sd["fc.weight"].T)
  np.testing.assert_array_equal(run.state["stages"][3][2]["conv3"]["conv"]["kernel"][...],
                                sd["layer4.2.conv3.weight"].transpose(2, 3, 1, 0))


@pytest.mark.parametrize("name,head_out", [("npr", 1), ("safe", 2)])
def test_released_checkpoint_becomes_a_run_with_every_tensor_in_place(name, head_out, tmp_path):
  sd = official_truncated_resnet_state_dict(head_out)
  path = str(tmp_path / f"{name}.safetensors")
  save_file(sd, path)
  out = convert.convert_published(name, path, str(tmp_path / "run"))
  run = runs.Run(out)
  assert run.preprocess == {"npr": "imagenet+npr", "safe": "unit+safe_dwt"}[name]
  assert run.class_names == ("real", "fake") and run.info["preset"] == {"npr": "npr_forensynths",
                                                                         "safe": "safe"}[name]
  st = run.state
  np.testing.assert_array_equal(st["stem"]["conv"]["kernel"][...], sd["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(st["stem"]["bn"]["mean"][...], sd["bn1.running_mean"])
  np.testing.assert_array_equal(st["stages"][1][3]["conv2"]["conv"]["kernel"][...],
                                sd["layer2.3.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(st["stages"][0][0]["downsample"]["bn"]["var"][...],
                                sd["layer1.0.downsample.1.running_var"])
  np.testing.assert_array_equal(st["head"]["kernel"][...], sd["fc1.weight"].T)
  np.testing.assert_array_equal(st["head"]["bias"][...], sd["fc1.bias"])
  # Scored like a trained run: one image through the evaluator, a probability.
  img = np.random.default_rng(1).integers(0, 256, (1, 48, 48, 3), np.uint8)
  logits = np.asarray(run.forward(run.inference_state, img))
  assert logits.shape == (1, 2) and np.all(np.isfinite(logits))
  if name == "npr":
    assert logits[0, 0] == 0  # One logit z, scored as [0, z].


def test_a_checkpoint_that_does_not_fit_names_every_mismatch(tmp_path):
  sd = official_truncated_resnet_state_dict(1)
  del sd["layer2.3.conv3.weight"]
  sd["layer3.0.conv1.weight"] = np.zeros((256, 512, 1, 1), np.float32)
  sd["fc1.weight"] = np.zeros((2, 512), np.float32)  # SAFE's head given to NPR.
  sd["fc1.bias"] = np.zeros((2,), np.float32)
  path = str(tmp_path / "bad.safetensors")
  save_file(sd, path)
  with pytest.raises(ValueError) as e:
    convert.convert_published("npr", path, str(tmp_path / "run"))
  msg = str(e.value)
  assert "layer3.0.conv1.weight" in msg or "stages/2" in msg
  assert not os.path.exists(tmp_path / "run")  # Nothing written.
  sd = official_truncated_resnet_state_dict(1)
  del sd["layer2.3.conv3.weight"]
  save_file(sd, path)
  with pytest.raises(ValueError, match="conv3"):
    convert.convert_published("npr", path, str(tmp_path / "run"))


@pytest.mark.slow  # an end-to-end chain of three real processes (convert, then evaluate twice): make test-slow
def test_cli_converts_and_evaluate_uses_the_preset(tmp_path, tiny_synthetic):
  path = str(tmp_path / "NPR.safetensors")
  save_file(official_truncated_resnet_state_dict(1), path)
  env = subprocess_env()
  r = subprocess.run([sys.executable, "-m", "fakejax.convert", "--from", "npr", path, str(tmp_path / "run")],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  r = subprocess.run([sys.executable, "-m", "fakejax.evaluate", "--workdir", str(tmp_path / "run"),
                      "--preset", "npr_gangen", "--dataset", tiny_synthetic.path, "--out", str(tmp_path / "rep")],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  rep = json.load(open(tmp_path / "rep" / "report.json"))
  assert rep["info"]["preset"] == "npr_gangen" and rep["rows"][-1]["test_set"] == "mean"
  r = subprocess.run([sys.executable, "-m", "fakejax.evaluate", "--workdir", str(tmp_path / "run")],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode != 0 and "--dataset" in r.stderr


# ---------------------------------------------------------------------------
# Against PyTorch references (make test-torch).
# ---------------------------------------------------------------------------
def _torch_reference(name):
  """The released network in PyTorch, random weights with moved BatchNorm statistics:
  CNNDetection's torchvision ResNet-50 with one output, or NPR's / SAFE's truncated ResNet-50
  (scripts/torch_nets.py: torchvision's Bottleneck with the official stem, layers and forward).
  - NPR's front: x - interpolate(x, 0.5) (nearest down, nearest up), times 2/3; one output.
  - SAFE's: the HH band of pytorch_wavelets' DWTForward(J=1, mode='symmetric', wave='bior1.3'),
    torchvision's Resize back to the input size; two outputs."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  from torch import nn  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  if name == "cnndetection":
    model = torchvision.models.resnet50(num_classes=1)
  elif name == "safe":
    dwt = pytest.importorskip("pytorch_wavelets").DWTForward(J=1, mode="symmetric", wave="bior1.3")
    front = lambda x: torchvision.transforms.Resize([x.shape[-2], x.shape[-1]])(dwt(x)[1][0][:, :, 2])
    model = torch_nets.truncated_resnet50(torch, torchvision, front, 2)
  else:
    model = torch_nets.truncated_resnet50(torch, torchvision, torch_nets.npr_front(torch), 1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
  return torch, model.eval()


@pytest.mark.torch
@pytest.mark.parametrize("name", ["npr", "cnndetection", "safe"])
def test_released_detector_scores_like_its_pytorch_network(name, tmp_path):
  """A checkpoint saved by torch.save from the reference network (CNNDetection's and SAFE's wrap
  it as {'model': ...}) converts into a run whose logits equal the reference's on the same
  images (ImageNet-normalised; SAFE's in [0, 1]), within 1e-5 relative (BatchNorm folded here)."""
  torch, ref = _torch_reference(name)
  sd = ref.state_dict()
  path = str(tmp_path / f"{name}.pth")
  torch.save({"model": sd} if name in ("cnndetection", "safe") else sd, path)
  run = runs.Run(convert.convert_published(name, path, str(tmp_path / "run")))
  img = np.random.default_rng(3).integers(0, 256, (3, 64, 64, 3), np.uint8)
  if name == "safe":  # ToTensor only: [0, 1].
    x = img / 255.0
  else:
    x = (img / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  x = torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2)
  with torch.no_grad():
    want = ref(x).numpy()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # PyTorch's mixed precision: the bf16 bound.
      amp = ref(x).float().numpy()
  got = np.asarray(run.forward(run.inference_state, img))
  run16 = runs.Run(run.workdir, dtype="bfloat16")
  got16 = np.asarray(run16.forward(run16.inference_state, img), np.float32)
  if name != "safe":
    assert np.all(got[:, 0] == 0)  # One logit z, scored as [0, z].
    got, got16 = got[:, 1:], got16[:, 1:]
  assert np.abs(got - want).max() <= 1e-5 * max(np.abs(want).max(), 1.0), (got, want)
  assert_bf16_like_amp(got16, amp, want)
