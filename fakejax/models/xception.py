"""Xception (Chollet 2017), exactly the Keras applications architecture.

Entry flow, 8 middle blocks, exit flow; separable convolutions and BatchNorm
(epsilon 1e-3, momentum 0.99, as Keras). `width` and `middle_blocks` shrink it
for quick runs and tests; the defaults are the paper's model, whose backbone has
20,861,480 parameters counting BatchNorm statistics (Keras' count).
"""

from flax import nnx
import jax.numpy as jnp

from fakejax.models import layers

KERAS_MOMENTUM, KERAS_EPSILON = 0.99, 1e-3


class EntryBlock(nnx.Module):
  """[ReLU] Sep BN ReLU Sep BN MaxPool, plus a strided 1x1 conv shortcut."""

  def __init__(self, cin, c1, c2, relu_first, *, bn, dtype, depthwise, rngs):
    kw = dict(dtype=dtype, depthwise=depthwise, rngs=rngs)
    self.shortcut = layers.ConvBN(cin, c2, 1, 2, act=None, bn=bn, dtype=dtype, rngs=rngs)
    self.sep1 = layers.SeparableConv(cin, c1, **kw)
    self.bn1 = nnx.BatchNorm(c1, dtype=dtype, rngs=rngs, **bn)
    self.sep2 = layers.SeparableConv(c1, c2, **kw)
    self.bn2 = nnx.BatchNorm(c2, dtype=dtype, rngs=rngs, **bn)
    self.relu_first = relu_first

  def __call__(self, x):
    r = self.shortcut(x)
    x = nnx.relu(x) if self.relu_first else x
    x = nnx.relu(self.bn1(self.sep1(x)))
    x = self.bn2(self.sep2(x))
    return layers.max_pool(x) + r


class MiddleBlock(nnx.Module):
  """3 x (ReLU Sep BN) with an identity shortcut."""

  def __init__(self, c, *, bn, dtype, depthwise, rngs):
    self.seps = nnx.List([layers.SeparableConv(c, c, dtype=dtype, depthwise=depthwise, rngs=rngs)
                          for _ in range(3)])
    self.bns = nnx.List([nnx.BatchNorm(c, dtype=dtype, rngs=rngs, **bn) for _ in range(3)])

  def __call__(self, x):
    r = x
    for sep, bn in zip(self.seps, self.bns):
      x = bn(sep(nnx.relu(x)))
    return x + r


class Xception(nnx.Module):
  """Xception backbone + dropout + linear classifier."""

  def __init__(self, num_classes=2, dropout=0.5, width=1.0, middle_blocks=8, dtype=jnp.float32,
               depthwise="auto", bn_momentum=KERAS_MOMENTUM, *, rngs):
    c = lambda n: max(4, int(round(n * width)))
    bn = dict(momentum=bn_momentum, epsilon=KERAS_EPSILON)
    kw = dict(bn=bn, dtype=dtype, depthwise=depthwise, rngs=rngs)
    self.conv1 = layers.ConvBN(3, c(32), 3, 2, "VALID", bn=bn, dtype=dtype, rngs=rngs)
    self.conv2 = layers.ConvBN(c(32), c(64), 3, 1, "VALID", bn=bn, dtype=dtype, rngs=rngs)
    self.block1 = EntryBlock(c(64), c(128), c(128), False, **kw)
    self.block2 = EntryBlock(c(128), c(256), c(256), True, **kw)
    self.block3 = EntryBlock(c(256), c(728), c(728), True, **kw)
    self.middle = nnx.List([MiddleBlock(c(728), **kw) for _ in range(middle_blocks)])
    self.block13 = EntryBlock(c(728), c(728), c(1024), True, **kw)
    kw.pop("bn")
    self.sep14 = layers.SeparableConv(c(1024), c(1536), **kw)
    self.bn14 = nnx.BatchNorm(c(1536), dtype=dtype, rngs=rngs, **bn)
    self.sep15 = layers.SeparableConv(c(1536), c(2048), **kw)
    self.bn15 = nnx.BatchNorm(c(2048), dtype=dtype, rngs=rngs, **bn)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(c(2048), num_classes, dtype=dtype, rngs=rngs)
    self.num_features = c(2048)

  def __call__(self, x, *, rngs=None, return_features=False):
    feats = {}
    x = self.conv2(self.conv1(x))
    feats["stem"] = x
    x = self.block3(self.block2(self.block1(x)))
    feats["entry"] = x
    for blk in self.middle:
      x = blk(x)
    feats["middle"] = x
    x = self.block13(x)
    x = nnx.relu(self.bn14(self.sep14(x)))
    x = nnx.relu(self.bn15(self.sep15(x)))
    feats["features"] = x
    x = layers.global_avg_pool(x)
    feats["pooled"] = x
    logits = self.head(self.dropout(x, rngs=rngs)).astype(jnp.float32)
    return (logits, feats) if return_features else logits
