"""The graph a GPU compiles, exported for CUDA on this CPU host (jax.export, platforms=['cuda']):
each architecture's bf16 train step and its inference forward (BatchNorm folded), with the
kernel switch on 'auto' as a user's run has it (DINOv2 as DDA trains it: LoRA adapters and the
head), and the aligned-data step's autoencoder reconstruction (fakejax.aligned, bf16). Checked:
every convolution and matmul has bf16 operands, no host callback or CPU kernel (custom_call) is
embedded, the train step donates its state, and model.dtype='auto' resolves to bf16 off the CPU."""

import re

from flax import nnx
import jax
import jax.numpy as jnp
import pytest

from tests.conftest import head_dot
from fakejax import aligned
from fakejax import defaults
from fakejax import scoring
from fakejax import models
from fakejax import sharding
from fakejax import training
from fakejax.models import cpu_kernels
from fakejax.models import vae

ARCHS = {
    "xception": dict(width=0.125, middle_blocks=1),
    "resnet50": dict(width=0.125),
    "resnet_trunc": dict(width=0.25, front="npr", single_logit=True),
    "mobilenet_v2": dict(width=0.25),
    "bit_resnet50": dict(width=0.125),
    "deepfd": dict(),
    "clip_vit_tiny": dict(single_logit=True),
    "resnet50_nodown": dict(width=0.125),  # AlignedForensics' res50nodown.
    "dinov2_vit_tiny": dict(single_logit=True, lora_rank=2, transfer="lora"),  # DDA's shape, tiny.
}
# Else 32 px. DINOv2 at its native grid: resampling the positional embedding to another grid is
# two small float32 matmuls by design (timm's, in float32), which the bf16 check would count.
SIZES = {"clip_vit_tiny": 64, "dinov2_vit_tiny": 126}


def _config(name, kw):
  c = defaults.get_config()
  c.model.name, c.model.dtype, c.model.dropout = name, "bfloat16", 0.0
  for k, v in kw.items():
    c.model[k] = v
  c.data.image_size = SIZES.get(name, 32)
  c.batch_size = 8
  return c


def _conv_and_dot_signatures(text):
  """The type signatures of the convolutions and matmuls, but the head's."""
  return [l.rsplit(":", 1)[-1] for l in text.splitlines()
          if re.search(r"stablehlo\.(convolution|dot_general)", l) and not head_dot(l)]


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_bf16_train_and_eval_export_for_cuda(name):
  c = _config(name, ARCHS[name])
  mesh = sharding.make_mesh(jax.devices()[:1])
  ts = training.TrainState.for_config(c, 2, 10, mesh)
  s = c.data.image_size
  data = sharding.data_sharded(mesh)
  batch = {"image": jax.ShapeDtypeStruct((8, s, s, 3), jnp.uint8, sharding=data),
           "label": jax.ShapeDtypeStruct((8,), jnp.int32, sharding=data)}
  fold = scoring.Folder(ts.model_def, ts.preprocess, c.model.dtype)
  with cpu_kernels.use("auto"):
    stage = ts.stage_at(ts.total_steps - 1)  # DeepFD: its classifier stage.
    step = jax.export.export(training.make_train_step(ts, stage), platforms=["cuda"])(jax.eval_shape(ts.init), batch)
    forward, folded = fold(nnx.state(models.from_config(c.model, 2)))  # Folding needs values.
    fwd = jax.export.export(forward, platforms=["cuda"])(folded, batch["image"])
  for what, exp in (("train", step), ("eval", fwd)):
    _check_cuda_bf16(what, exp)
    assert any(head_dot(l) for l in exp.mlir_module().splitlines()), what  # The head's logits: float32.
  assert "jax.buffer_donor" in step.mlir_module() or "tf.aliasing_output" in step.mlir_module()


def _check_cuda_bf16(what, exp):
  """An export for CUDA whose convolutions and matmuls (but a head's) are bf16, with no CPU kernel
  (custom_call) and no host callback or feed."""
  text = exp.mlir_module()
  assert exp.platforms == ("cuda",)
  sigs = _conv_and_dot_signatures(text)
  assert sigs, what
  fp32 = [sig for sig in sigs if "bf16" not in sig]
  assert not fp32, (what, fp32[:3])
  assert "custom_call" not in text, (what, re.findall(r"custom_call @\w+", text)[:5])
  for sync in ("callback", "outfeed", "infeed"):
    assert not re.search(rf"\b{sync}\b", text), (what, sync)


@pytest.mark.parametrize("latent", ["sample", "mode"])
def test_aligned_reconstruction_exports_for_cuda_in_bf16(latent):
  """The aligned-data step's jitted encode -> (draw) -> decode of a batch, as `python -m
  fakejax.aligned --dtype bfloat16` runs it on a GPU: the convolutions and the mid-block's
  attention matmuls in bf16 (GroupNorm and the softmax stay float32 by design), no CPU kernel."""
  rec = aligned.Reconstructor(vae.create("small", dtype=jnp.bfloat16), latent=latent)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(4))
  exp = jax.export.export(rec._run, platforms=["cuda"])(  # pylint: disable=protected-access
      jax.eval_shape(lambda: rec._state), jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.uint8), keys)  # pylint: disable=protected-access
  _check_cuda_bf16("reconstruction", exp)
  assert exp.out_avals[0].shape == (4, 32, 32, 3) and exp.out_avals[0].dtype == jnp.uint8


def test_dtype_auto_is_bf16_on_accelerators_and_float32_on_cpu():
  assert models.resolve_dtype("auto", "gpu") == "bfloat16" == models.resolve_dtype("auto", "tpu")
  assert models.resolve_dtype("auto", "cpu") == "float32"
  assert models.resolve_dtype("float32", "gpu") == "float32"
  assert defaults.get_config().model.dtype == "auto"
  with pytest.raises(ValueError, match="Unknown model.dtype 'fp16'"):
    models.resolve_dtype("fp16")
