"""Model registry: every architecture by name, plus the input normalisation."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from fakejax.models import deepfd
from fakejax.models import mobilenet
from fakejax.models import resnet
from fakejax.models import xception

MODELS = {
    "xception": xception.Xception,
    "deepfd": deepfd.DeepFD,
    "mobilenet_v2": mobilenet.MobileNetV2,
    "resnet50": functools.partial(resnet.ResNet, 50),
    "resnet101": functools.partial(resnet.ResNet, 101),
}

# How uint8 pixels become model inputs, by weight origin.
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
_IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255
PREPROCESS = ("minus_one_one", "imagenet", "unit")
# 'auto' without pretrained weights: the convention of the architecture's usual weights.
NATIVE_PREPROCESS = {"xception": "minus_one_one", "mobilenet_v2": "minus_one_one",
                     "resnet50": "imagenet", "resnet101": "imagenet", "deepfd": "unit"}


def create(name, num_classes, *, seed=0, dtype="float32", **kwargs):
  """Builds a registered model.

  Args:
    name: a key of MODELS.
    num_classes: logits of the head (2 for binary real/fake).
    seed: parameter initialisation seed.
    dtype: compute dtype ('float32' or 'bfloat16'); parameters stay float32.
    **kwargs: architecture options (dropout, width, ...).

  Returns:
    the nnx.Module.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
  return MODELS[name](num_classes=num_classes, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(seed), **kwargs)


def resolve_preprocess(name, mode, weights_mode=None):
  """The concrete preprocessing: `mode`, or for 'auto' the weights' own, else the architecture's."""
  if mode == "auto":
    return weights_mode or NATIVE_PREPROCESS.get(name, "minus_one_one")
  if mode not in PREPROCESS:
    raise ValueError(f"Unknown preprocess {mode!r}; known: auto, {', '.join(PREPROCESS)}")
  return mode


def preprocess(images, mode, dtype=jnp.float32):
  """uint8 NHWC pixels -> normalised float input ('minus_one_one', 'imagenet' or 'unit')."""
  x = images.astype(jnp.float32)
  if mode == "minus_one_one":
    x = x / 127.5 - 1.0
  elif mode == "imagenet":
    x = (x - _IMAGENET_MEAN) / _IMAGENET_STD
  elif mode == "unit":
    x = x / 255.0
  else:
    raise ValueError(f"Unknown preprocess {mode!r}; known: {', '.join(PREPROCESS)}")
  return x.astype(dtype)


def backbone_param_count(model, with_batch_stats):
  """Parameters of everything but the head (optionally counting BatchNorm statistics)."""
  filt = nnx.Any(nnx.Param, nnx.BatchStat) if with_batch_stats else nnx.Param
  state = nnx.state(model, filt)
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  return count(state) - count(nnx.state(model.head))
