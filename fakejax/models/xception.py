"""Xception (Chollet 2017), exactly the Keras applications architecture.

Entry flow, 8 middle blocks, exit flow; separable convolutions and BatchNorm
(epsilon 1e-3, momentum 0.99, as Keras). `width` and `middle_blocks` shrink it
for quick runs and tests; the defaults are the paper's model, whose backbone has
20,861,480 parameters counting BatchNorm statistics (Keras' count).

Layer names (`taps`, Grad-CAM) are the PyTorch ones (Cadene's pretrainedmodels /
timm legacy_xception), which the attribution study used. Shapes at 299 px:

| name           | our attributes          | Keras layers                     | shape at 299   |
|----------------|-------------------------|----------------------------------|----------------|
| conv1          | conv1                   | block1_conv1, _bn, _act          | 149x149x32     |
| conv2          | conv2                   | block1_conv2, _bn, _act          | 147x147x64     |
| block1..block3 | block1..block3          | block2..block4 (entry flow)      | 74x74x128 .. 19x19x728 |
| block4..block11| middle[0]..middle[7]    | block5..block12 (middle flow)    | 19x19x728      |
| block12        | block13                 | block13 (exit flow, 728->1024)   | 10x10x1024     |
| conv3          | sep14, bn14, ReLU       | block14_sepconv1, _bn, _act      | 10x10x1536     |
| conv4          | sep15, bn15, ReLU       | block14_sepconv2, _bn, _act      | 10x10x2048     |

With fewer middle blocks there are fewer middle names (block4..block{3+middle_blocks});
the exit block keeps the name block12.
"""

from flax import nnx
import jax.numpy as jnp

from fakejax.models import inits
from fakejax.models import layers

KERAS_MOMENTUM, KERAS_EPSILON = 0.99, 1e-3
MAX_MIDDLE_BLOCKS = 8  # The middle blocks are named block4..block11; block12 is the exit block.


class EntryBlock(nnx.Module):
  """[ReLU] Sep BN ReLU Sep BN MaxPool, plus a strided 1x1 conv shortcut."""

  # (convolution, the BatchNorm applied directly to its output): models.fold folds these.
  FOLDS = (("sep1.pointwise", "bn1"), ("sep2.pointwise", "bn2"))

  def __init__(self, cin, c1, c2, relu_first, *, bn, dtype, rngs, kernel_init):
    kw = dict(dtype=dtype, rngs=rngs)
    self.shortcut = layers.ConvBN(cin, c2, 1, 2, act=None, bn=bn, kernel_init=kernel_init, **kw)
    self.sep1 = layers.SeparableConv(cin, c1, kernel_init=kernel_init, **kw)
    self.bn1 = layers.batch_norm(c1, **kw, **bn)
    self.sep2 = layers.SeparableConv(c1, c2, kernel_init=kernel_init, **kw)
    self.bn2 = layers.batch_norm(c2, **kw, **bn)
    self.relu_first = relu_first

  def __call__(self, x):
    r = self.shortcut(x)
    x = nnx.relu(x) if self.relu_first else x
    x = nnx.relu(self.bn1(self.sep1(x)))
    x = self.bn2(self.sep2(x))
    return layers.max_pool(x) + r


class MiddleBlock(nnx.Module):
  """3 x (ReLU Sep BN) with an identity shortcut."""

  FOLDS = tuple((f"seps.{i}.pointwise", f"bns.{i}") for i in range(3))

  def __init__(self, c, *, bn, dtype, rngs, kernel_init):
    self.seps = nnx.List([layers.SeparableConv(c, c, dtype=dtype, rngs=rngs, kernel_init=kernel_init)
                          for _ in range(3)])
    self.bns = nnx.List([layers.batch_norm(c, dtype=dtype, rngs=rngs, **bn) for _ in range(3)])

  def __call__(self, x):
    r = x
    for sep, bn in zip(self.seps, self.bns):
      x = bn(sep(nnx.relu(x)))
    return x + r


class Xception(nnx.Module):
  """Xception backbone + dropout + linear classifier.

  `init`: 'reference' (Keras' initialisers) or 'flax' (see fakejax.models.inits); `remat`: each
  block under nnx.remat (layers.call_block).
  """

  CAM_LAYER = "block12"  # The last 10x10 map at 299 px before the exit convolutions.
  FOLDS = (("sep14.pointwise", "bn14"), ("sep15.pointwise", "bn15"))

  def __init__(self, *, num_classes=2, dropout=0.5, width=1.0, middle_blocks=8, dtype=jnp.float32,
               bn_momentum=KERAS_MOMENTUM, init="reference", remat=False, rngs):
    if not 0 <= middle_blocks <= MAX_MIDDLE_BLOCKS:
      raise ValueError(f"middle_blocks must be 0..{MAX_MIDDLE_BLOCKS} (the published model's "
                       f"8 at most), got {middle_blocks}")
    c = lambda n: max(4, int(round(n * width)))
    bn = dict(momentum=bn_momentum, epsilon=KERAS_EPSILON)
    ki = inits.conv(init, "keras")
    kw = dict(bn=bn, dtype=dtype, rngs=rngs, kernel_init=ki)
    self.conv1 = layers.ConvBN(3, c(32), 3, 2, "VALID", **kw)
    self.conv2 = layers.ConvBN(c(32), c(64), 3, 1, "VALID", **kw)
    self.block1 = EntryBlock(c(64), c(128), c(128), False, **kw)
    self.block2 = EntryBlock(c(128), c(256), c(256), True, **kw)
    self.block3 = EntryBlock(c(256), c(728), c(728), True, **kw)
    self.middle = nnx.List([MiddleBlock(c(728), **kw) for _ in range(middle_blocks)])
    self.block13 = EntryBlock(c(728), c(728), c(1024), True, **kw)
    self.sep14 = layers.SeparableConv(c(1024), c(1536), dtype=dtype, rngs=rngs, kernel_init=ki)
    self.bn14 = layers.batch_norm(c(1536), dtype=dtype, rngs=rngs, **bn)
    self.sep15 = layers.SeparableConv(c(1536), c(2048), dtype=dtype, rngs=rngs, kernel_init=ki)
    self.bn15 = layers.batch_norm(c(2048), dtype=dtype, rngs=rngs, **bn)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(c(2048), num_classes, dtype=jnp.float32, rngs=rngs,
                           **inits.dense(init, "keras", c(2048)))
    self.num_features = c(2048)
    self.remat = remat

  def layer_names(self):
    """The names `taps` sees, in forward order (table in the module docstring)."""
    return ("conv1", "conv2", "block1", "block2", "block3",
            *(f"block{4 + i}" for i in range(len(self.middle))), "block12", "conv3", "conv4")

  def __call__(self, x, *, rngs=None, taps=None, valid=None):
    """Logits (float32) of NHWC images: the forward of every model (models/__init__.py)."""
    tap = layers.tapper(taps)
    region = layers.region(valid, x.shape[1:3])
    x = tap("conv1", self.conv1(x))
    x = tap("conv2", self.conv2(x))
    block = lambda b, x: layers.call_block(b, x, self.remat)
    x = tap("block1", block(self.block1, x))
    x = tap("block2", block(self.block2, x))
    x = tap("block3", block(self.block3, x))
    for i, blk in enumerate(self.middle):
      x = tap(f"block{4 + i}", block(blk, x))
    x = tap("block12", block(self.block13, x))
    x = tap("conv3", nnx.relu(self.bn14(self.sep14(x))))
    x = tap("conv4", nnx.relu(self.bn15(self.sep15(x))))
    x = layers.global_avg_pool(x, region)
    return self.head(self.dropout(x, rngs=rngs)).astype(jnp.float32)
