"""MobileNetV2 (Sandler et al. 2018), exactly the Keras applications architecture.

Inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 linear projection) with
ReLU6; BatchNorm epsilon 1e-3, momentum 0.999 (Keras). Stride-2 depthwise layers
use SAME padding, which pads exactly as Keras' `correct_pad` + VALID does. With
width 1.0 the backbone has 2,257,984 parameters counting BatchNorm statistics,
Keras' `MobileNetV2(include_top=False).count_params()`.
"""

from flax import nnx
import jax.numpy as jnp

from fakejax.models import inits
from fakejax.models import layers

KERAS_MOMENTUM, KERAS_EPSILON = 0.999, 1e-3
# (expansion, output channels, repeats, first stride) of each stage.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v, divisor=8):
  """Keras' _make_divisible: round to a multiple of 8, never more than 10% down."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < 0.9 * v else new_v


class InvertedResidual(nnx.Module):
  """[1x1 expand BN ReLU6] 3x3 depthwise BN ReLU6, 1x1 project BN, identity add when shapes allow."""

  def __init__(self, cin, cout, stride, expansion, *, bn, dtype, rngs, kernel_init):
    kw = dict(bn=bn, dtype=dtype, rngs=rngs, kernel_init=kernel_init)
    hidden = cin * expansion
    self.expand = layers.ConvBN(cin, hidden, 1, act=layers.relu6, **kw) if expansion != 1 else None
    self.depthwise = layers.ConvBN(hidden, hidden, 3, stride, act=layers.relu6, groups=hidden, **kw)
    self.project = layers.ConvBN(hidden, cout, 1, act=None, **kw)
    self.residual = stride == 1 and cin == cout

  def __call__(self, x):
    y = x if self.expand is None else self.expand(x)
    y = self.project(self.depthwise(y))
    return x + y if self.residual else y


class MobileNetV2(nnx.Module):
  """MobileNetV2 backbone + dropout + linear classifier.

  `init`: 'reference' (Keras' initialisers) or 'flax' (see fakejax.models.inits); `remat`: each
  block under nnx.remat (layers.call_block).
  """

  CAM_LAYER = "last"

  def __init__(self, *, num_classes=2, dropout=0.2, width=1.0, dtype=jnp.float32,
               bn_momentum=KERAS_MOMENTUM, init="reference", remat=False, rngs):
    bn = dict(momentum=bn_momentum, epsilon=KERAS_EPSILON)
    kw = dict(bn=bn, dtype=dtype, rngs=rngs, kernel_init=inits.conv(init, "keras"))
    cin = make_divisible(32 * width)
    self.stem = layers.ConvBN(3, cin, 3, 2, act=layers.relu6, **kw)
    blocks = []
    for expansion, c, n, stride in STAGES:
      cout = make_divisible(int(c * width))
      for i in range(n):
        blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion, **kw))
        cin = cout
    self.blocks = nnx.List(blocks)
    last = make_divisible(1280 * width) if width > 1.0 else 1280
    self.last = layers.ConvBN(cin, last, 1, act=layers.relu6, **kw)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(last, num_classes, dtype=jnp.float32, rngs=rngs, **inits.dense(init, "keras", last))
    self.num_features = last
    self.remat = remat

  def layer_names(self):
    """The names `taps` sees, in forward order."""
    return ("stem", *(f"block{i}" for i in range(len(self.blocks))), "last")

  def __call__(self, x, *, rngs=None, taps=None, valid=None):
    """Logits (float32) of NHWC images: the forward of every model (models/__init__.py)."""
    tap = layers.tapper(taps)
    region = layers.region(valid, x.shape[1:3])
    x = tap("stem", self.stem(x))
    for i, blk in enumerate(self.blocks):
      x = tap(f"block{i}", layers.call_block(blk, x, self.remat))
    x = tap("last", self.last(x))
    x = layers.global_avg_pool(x, region)
    return self.head(self.dropout(x, rngs=rngs)).astype(jnp.float32)
