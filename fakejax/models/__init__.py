"""Model registry: every architecture by name, plus the input normalisation.

Every model's forward is `model(x, *, rngs=None, taps=None, valid=None)` -> float32 logits:
  x: (N, H, W, 3) preprocessed images (models.preprocess).
  rngs: dropout key (train mode).
  taps: optional `taps(name, activation) -> activation`, called after each layer of
    model.layer_names() in that order; the forward continues with what it returns.
  valid: optional (N, 2) sizes of the images before padding: the global pool averages their
    own cells only (layers.region).
"""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from fakejax import cli

from fakejax.models import bit
from fakejax.models import deepfd
from fakejax.models import dinov2
from fakejax.models import fold
from fakejax.models import fronts
from fakejax.models import mobilenet
from fakejax.models import resnet
from fakejax.models import spectral
from fakejax.models import vit
from fakejax.models import xception

MODELS = {
    "xception": xception.Xception,
    "deepfd": deepfd.DeepFD,
    "mobilenet_v2": mobilenet.MobileNetV2,
    "resnet50": functools.partial(resnet.ResNet, 50),
    "resnet101": functools.partial(resnet.ResNet, 101),
    # AlignedForensics' res50nodown: stem conv and max-pool at stride 1 (resnet.py's docstring).
    "resnet50_nodown": functools.partial(resnet.ResNet, 50, stem_stride=1),
    "bit_resnet50": functools.partial(bit.BiT, 50),
    # NPR's and SAFE's truncated ResNet-50 (stem 3x3/2, layer1-2): resnet.py's docstring.
    "resnet_trunc": functools.partial(resnet.ResNet, 50, stages=2, stem_kernel=3),
    # CLIP's image encoders (UnivFD: ViT-L/14 and a linear head): vit.py.
    **{name: functools.partial(vit.ClipViT, name) for name in vit.ARCHS},
    # DINOv2 ViTs, with registers as '_reg4' (DDA: ViT-L/14 + LoRA; B-Free): dinov2.py.
    **{name: functools.partial(dinov2.DinoV2, name) for name in dinov2.ARCHS},
    # Logistic regression on the residual's log-spectrum (configs/spectral.py): spectral.py.
    "spectral": spectral.Spectral,
}
# Architectures without BatchNorm (no bn_momentum).
NO_BATCH_NORM = ("bit_resnet50", "spectral") + tuple(vit.ARCHS) + tuple(dinov2.ARCHS)

# The model inference runs (eval mode, BatchNorm folded, forward-only kernels): fold.py.
for_inference = fold.for_inference

# How uint8 pixels become model inputs, by weight origin.
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
_IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255
_CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073]) * 255  # OpenAI CLIP's, UnivFD's.
_CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711]) * 255
PREPROCESS = ("minus_one_one", "imagenet", "unit", "clip")
# 'auto' without pretrained weights: the convention of the architecture's usual weights.
NATIVE_PREPROCESS = {"xception": "minus_one_one", "mobilenet_v2": "minus_one_one",
                     "resnet50": "imagenet", "resnet101": "imagenet", "resnet50_nodown": "imagenet",
                     "deepfd": "unit", "spectral": "unit",
                     "bit_resnet50": "minus_one_one", "resnet_trunc": "imagenet",
                     **{name: "clip" for name in vit.ARCHS}, **{name: "imagenet" for name in dinov2.ARCHS}}


DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(dtype, backend=None):
  """The compute dtype: `dtype`, or for 'auto' bfloat16 on GPUs and TPUs (mixed precision:
  parameters, optimizer state, loss and BatchNorm statistics stay float32) and float32 on CPUs
  (no bf16 units there), by `backend` (default: jax's default backend)."""
  if dtype != "auto":
    try:
      jnp.dtype(dtype)  # Any numpy dtype (the tests use float64); 'auto', float32, bfloat16 in configs.
    except TypeError:
      raise cli.UserError(f"Unknown model.dtype {dtype!r}; known: {', '.join(DTYPES)}") from None
    return dtype
  return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"


def create(name, num_classes, *, seed=0, dtype="float32", **kwargs):
  """Builds a registered model.

  Args:
    name: a key of MODELS.
    num_classes: logits of the head (2 for binary real/fake).
    seed: parameter initialisation seed.
    dtype: compute dtype ('float32', 'bfloat16' or 'auto': resolve_dtype); parameters stay float32,
      and the classifier head computes in float32 (logits, the loss and the scores keep float32's
      precision: bf16 logits would tie thousands of scores and blunt AP).
    **kwargs: architecture options (dropout, width, ...).

  Returns:
    the nnx.Module.
  """
  return get(name)(num_classes=num_classes, dtype=jnp.dtype(resolve_dtype(dtype)), rngs=nnx.Rngs(seed),
                   **kwargs)


def get(name):
  """The model class (or constructor) registered as `name`.

  Raises:
    cli.UserError: naming the known models.
  """
  if name not in MODELS:
    raise cli.UserError(f"Unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
  return MODELS[name]


def resolve_preprocess(name, mode, weights_mode=None, front="none"):
  """The concrete input: `mode`, or for 'auto' the weights' own, else the architecture's; then
  '+front' when the model has an input front-end (fronts.FRONTS), e.g. 'imagenet+npr'."""
  if mode == "auto":
    mode = weights_mode or NATIVE_PREPROCESS.get(name, "minus_one_one")
  if mode not in PREPROCESS:
    raise ValueError(f"Unknown preprocess {mode!r}; known: auto, {', '.join(PREPROCESS)}")
  front = fronts.check(front)
  return mode if front == "none" else f"{mode}+{front}"


def preprocess(images, mode, dtype=jnp.float32):
  """uint8 NHWC pixels -> model input: normalised ('minus_one_one', 'imagenet' or 'unit'), then
  through the front-end named after a '+' (fronts.apply), e.g. 'imagenet+npr'."""
  mode, _, front = mode.partition("+")
  return fronts.apply(front or "none", _normalise(images, mode, dtype))


def _normalise(images, mode, dtype):
  x = images.astype(jnp.float32)
  if mode == "minus_one_one":
    x = x / 127.5 - 1.0
  elif mode == "imagenet":
    x = (x - _IMAGENET_MEAN) / _IMAGENET_STD
  elif mode == "unit":
    x = x / 255.0
  elif mode == "clip":
    x = (x - _CLIP_MEAN) / _CLIP_STD
  else:
    raise ValueError(f"Unknown preprocess {mode!r}; known: {', '.join(PREPROCESS)}")
  return x.astype(dtype)


def backbone_param_count(model, with_batch_stats):
  """Parameters of everything but the head (optionally counting BatchNorm statistics)."""
  filt = nnx.Any(nnx.Param, nnx.BatchStat) if with_batch_stats else nnx.Param
  state = nnx.state(model, filt)
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  return count(state) - count(nnx.state(model.head, filt))


def layer_names(model):
  """The layer names a model's `taps` sees, in forward order (its layer_names() or LAYERS)."""
  return tuple(model.layer_names() if hasattr(model, "layer_names") else model.LAYERS)


def layer_shapes(model, image_size, batch=1):
  """[(name, activation shape)] of every layer `taps` sees, in forward order; computes nothing.

  Args:
    model: a registered model (concrete or from nnx.eval_shape); it is not modified.
    image_size: input side in pixels.
    batch: leading dimension of the shapes.

  Returns:
    a list of (name, shape tuple), in the order the forward pass calls `taps`.
  """
  graphdef, state = nnx.split(model)
  shapes = []

  def forward(state, x):
    m = nnx.merge(graphdef, state)
    m.eval()  # No dropout key needed, BatchNorm statistics untouched.
    return m(x, taps=lambda name, a: shapes.append((name, tuple(a.shape))) or a)

  jax.eval_shape(forward, state, jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32))
  return shapes


def from_config(model_cfg, num_classes, seed=0):
  """The model a config's `model` block describes (architecture options by name)."""
  kw = dict(dropout=model_cfg.dropout, width=model_cfg.width, remat=model_cfg.remat)
  if model_cfg.single_logit:
    kw["single_logit"] = True
  if model_cfg.name == "xception":
    kw["middle_blocks"] = model_cfg.middle_blocks
  if model_cfg.name == "spectral":
    kw["spectrum_size"] = model_cfg.get("spectrum_size", 64)
  if model_cfg.name != "deepfd":  # DeepFD has no reference framework to copy initialisers from.
    kw["init"] = model_cfg.init
  if model_cfg.bn_momentum and model_cfg.name not in NO_BATCH_NORM:
    kw["bn_momentum"] = model_cfg.bn_momentum
  # DINOv2's LoRA and positional-embedding keys (configs saved before them have the defaults').
  dino = {k: model_cfg.get(k, d) for k, d in (("lora_rank", 0), ("lora_alpha", 1.0),
                                               ("lora_targets", dinov2.LORA_TARGETS), ("pos_interp", "timm"))}
  if model_cfg.name in dinov2.ARCHS:
    kw.update(dino, lora_targets=tuple(dino["lora_targets"]))
    if model_cfg.get("pos_embed_size", 0):  # B-Free's 36 x 36 grid (504 px) instead of the 37 x 37 (518).
      kw["image_size"] = model_cfg.pos_embed_size
  elif dino["lora_rank"]:
    raise cli.UserError(f"model.lora_rank applies to DINOv2 models ({', '.join(dinov2.ARCHS)}), "
                        f"not {model_cfg.name}")
  return create(model_cfg.name, num_classes, seed=seed, dtype=model_cfg.dtype, **kw)
