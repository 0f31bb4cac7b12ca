"""BiT ResNet-V2 (Kolesnikov et al. 2020, "Big Transfer"), as the released BiT-M/BiT-S weights.

Pre-activation bottleneck units (GroupNorm ReLU conv1x1, GroupNorm ReLU conv3x3, GroupNorm
ReLU conv1x1, plus the input or a projection of its pre-activation), GroupNorm with 32 groups
(epsilon 1e-5) and weight-standardised convolutions (epsilon 1e-10 on the variance), a final
GroupNorm + ReLU before global average pooling. Inputs in [-1, 1].

The details follow the code that produced and loads the released weights (google-research/
big_transfer `bit_tf2/models.py`, `bit_jax/models.py`, `bit_pytorch/models.py`): the stride sits
on the 3x3 convolution; convolutions pad by "fixed" amounts ((k-1)//2 before and after, not
TF's input-size-dependent SAME), so the root is a 7x7 stride-2 conv padded 3 on every side;
the root max pool (3x3 stride 2) pads 1 on every side with *zeros*, not -inf. That is timm's
`stem_type='fixed'`; big_vision's `bit_paper.py` pads its pool with -inf, which differs where
a border window's root outputs are all negative.

Width 1 (BiT-M-R50x1): 23,500,352 backbone parameters (timm `resnetv2_50x1_bit`, num_classes=0).
`width` scales every channel count, rounded to a multiple of the 32 GroupNorm groups.
"""

import functools

from flax import nnx
import jax.numpy as jnp

from fakejax.models import cpu_kernels
from fakejax.models import inits
from fakejax.models import layers

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
GROUPS, GN_EPSILON, WS_EPSILON = 32, 1e-5, 1e-10


def standardize(w, eps=WS_EPSILON):
  """Weight standardisation: zero mean, unit variance over each output channel's (kh, kw, cin)."""
  w = w - jnp.mean(w, axis=(0, 1, 2), keepdims=True)
  return w / jnp.sqrt(jnp.mean(jnp.square(w), axis=(0, 1, 2), keepdims=True) + eps)


class StdConv(nnx.Module):
  """Weight-standardised convolution without bias, padded `padding` on every side (HWIO kernel)."""

  def __init__(self, cin, cout, kernel, stride=1, padding=0, *, dtype, rngs):
    # Lecun normal, as big_vision's and flax's: its scale is irrelevant (standardised away).
    self.kernel = nnx.Param(inits.FLAX_KERNEL(rngs.params(), (kernel, kernel, cin, cout)))
    self.stride, self.padding, self.dtype = stride, ((padding, padding), (padding, padding)), dtype

  def __call__(self, x):
    # Standardise in float32 at least: bfloat16 would compute the mean and variance from rounded taps.
    w = standardize(self.kernel[...].astype(jnp.promote_types(self.dtype, jnp.float32)))
    w = w.astype(self.dtype)
    return cpu_kernels.conv(x.astype(self.dtype), w, (self.stride, self.stride), self.padding,
                            dimension_numbers=("NHWC", "HWIO", "NHWC"))


def group_norm(c, *, dtype, rngs):
  # Variance as E[(x - mean)^2], as BiT: the one-pass E[x^2] - mean^2 changes pretrained outputs.
  return nnx.GroupNorm(c, num_groups=GROUPS, epsilon=GN_EPSILON, use_fast_variance=False,
                       dtype=dtype, promote_dtype=layers.keep_dtypes, rngs=rngs)


class Unit(nnx.Module):
  """Pre-activation bottleneck; the shortcut projects the pre-activated input when shapes change."""

  def __init__(self, cin, mid, cout, stride, *, dtype, rngs):
    conv = functools.partial(StdConv, dtype=dtype, rngs=rngs)
    gn = functools.partial(group_norm, dtype=dtype, rngs=rngs)
    self.gn1, self.conv1 = gn(cin), conv(cin, mid, 1)
    self.gn2, self.conv2 = gn(mid), conv(mid, mid, 3, stride, 1)
    self.gn3, self.conv3 = gn(mid), conv(mid, cout, 1)
    self.proj = conv(cin, cout, 1, stride) if stride != 1 or cin != cout else None

  def __call__(self, x):
    y = nnx.relu(self.gn1(x))
    r = x if self.proj is None else self.proj(y)
    y = self.conv1(y)
    y = self.conv2(nnx.relu(self.gn2(y)))
    y = self.conv3(nnx.relu(self.gn3(y)))
    return y + r


class BiT(nnx.Module):
  """BiT ResNet-V2 backbone + dropout + linear classifier.

  Args:
    depth: 50, 101 or 152.
    num_classes: logits of the head.
    dropout: dropout rate before the head (BiT has none).
    width: channel multiplier (1.0: R50x1; 3.0: R50x3).
    dtype: compute dtype; parameters stay float32.
    init: 'reference' (big_vision: zero-initialised head) or 'flax' (nnx.Linear's default head).
    remat: recompute each unit's activations in the backward pass instead of storing them.
    rngs: parameter initialisation keys.
  """

  CAM_LAYER = "block4"
  STAGES = ("block1", "block2", "block3", "block4")  # Attribute names, as the released weights'.

  def __init__(self, depth=50, *, num_classes=2, dropout=0.0, width=1.0, dtype=jnp.float32,
               init="reference", remat=False, rngs):
    if depth not in DEPTHS:
      raise ValueError(f"Unknown BiT depth {depth}; known: {sorted(DEPTHS)}")
    c = lambda n: max(GROUPS, int(round(n * width / GROUPS)) * GROUPS)
    self.root = StdConv(3, c(64), 7, 2, 3, dtype=dtype, rngs=rngs)
    cin = c(64)
    for i, (stage, n) in enumerate(zip(self.STAGES, DEPTHS[depth])):
      mid, cout = c(64 * 2**i), c(256 * 2**i)
      units = []
      for u in range(n):
        units.append(Unit(cin, mid, cout, 2 if (u == 0 and i > 0) else 1, dtype=dtype, rngs=rngs))
        cin = cout
      setattr(self, stage, nnx.List(units))
    self.norm = group_norm(cin, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(cin, num_classes, dtype=jnp.float32, rngs=rngs, **inits.dense(init, "big_vision", cin))
    self.num_features = cin
    self.remat = remat

  def layer_names(self):
    """The names `taps` sees, in forward order.

    The root block (conv and pool), each unit (block1.0, ...) and then its stage (block1, the same
    activation as its last unit). Stage outputs are pre-activation: the pre-head GroupNorm and
    ReLU follow block4.
    """
    names = ["root"]
    for stage in self.STAGES:
      names += [f"{stage}.{j}" for j in range(len(getattr(self, stage)))] + [stage]
    return tuple(names)

  def __call__(self, x, *, rngs=None, taps=None, valid=None):
    """Logits (float32) of NHWC images in [-1, 1]: the forward of every model (models/__init__.py)."""
    tap = layers.tapper(taps)
    region = layers.region(valid, x.shape[1:3])
    x = self.root(x)
    # Zero padding, then an unpadded pool: the released weights' root (see the module docstring).
    x = layers.max_pool(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), padding=((0, 0), (0, 0)))
    x = tap("root", x)
    for stage in self.STAGES:
      for j, unit in enumerate(getattr(self, stage)):
        x = tap(f"{stage}.{j}", layers.call_block(unit, x, self.remat))
      x = tap(stage, x)
    x = layers.global_avg_pool(nnx.relu(self.norm(x)), region)
    return self.head(self.dropout(x, rngs=rngs)).astype(jnp.float32)
