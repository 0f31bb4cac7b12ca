"""ResNet-50/101, torchvision's v1.5 layout (stride on the 3x3 conv of a bottleneck).

Backbone parameter counts (torchvision `parameters()`, BatchNorm statistics are
buffers there and not counted): 23,508,032 (50) and 42,500,160 (101).
BatchNorm epsilon 1e-5, momentum 0.1 in torch terms (0.9 here).
"""

from flax import nnx
import jax.numpy as jnp

from fakejax.models import layers

TORCH_MOMENTUM, TORCH_EPSILON = 0.9, 1e-5
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, cin, planes, stride, *, bn, dtype, rngs):
    kw = dict(bn=bn, dtype=dtype, rngs=rngs)
    cout = planes * self.expansion
    self.conv1 = layers.ConvBN(cin, planes, 1, **kw)
    self.conv2 = layers.ConvBN(planes, planes, 3, stride, ((1, 1), (1, 1)), **kw)
    self.conv3 = layers.ConvBN(planes, cout, 1, act=None, **kw)
    self.downsample = (layers.ConvBN(cin, cout, 1, stride, act=None, **kw)
                       if stride != 1 or cin != cout else None)

  def __call__(self, x):
    r = x if self.downsample is None else self.downsample(x)
    return nnx.relu(self.conv3(self.conv2(self.conv1(x))) + r)


class ResNet(nnx.Module):
  """ResNet backbone + dropout + linear classifier."""

  def __init__(self, depth=50, num_classes=2, dropout=0.0, width=1.0, dtype=jnp.float32,
               bn_momentum=TORCH_MOMENTUM, *, rngs):
    if depth not in DEPTHS:
      raise ValueError(f"Unknown ResNet depth {depth}; known: {sorted(DEPTHS)}")
    c = lambda n: max(4, int(round(n * width)))
    bn = dict(momentum=bn_momentum, epsilon=TORCH_EPSILON)
    self.stem = layers.ConvBN(3, c(64), 7, 2, ((3, 3), (3, 3)), bn=bn, dtype=dtype, rngs=rngs)
    stages, cin = [], c(64)
    for i, n in enumerate(DEPTHS[depth]):
      blocks = []
      for b in range(n):
        blocks.append(Bottleneck(cin, c(64 * 2**i), 2 if (b == 0 and i > 0) else 1,
                                 bn=bn, dtype=dtype, rngs=rngs))
        cin = c(64 * 2**i) * Bottleneck.expansion
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(cin, num_classes, dtype=dtype, rngs=rngs)
    self.num_features = cin

  def __call__(self, x, *, rngs=None, return_features=False):
    feats = {}
    x = self.stem(x)
    x = layers.max_pool(x, padding=((1, 1), (1, 1)))
    feats["stem"] = x
    for i, stage in enumerate(self.stages):
      for blk in stage:
        x = blk(x)
      feats[f"layer{i + 1}"] = x
    feats["features"] = x
    x = layers.global_avg_pool(x)
    feats["pooled"] = x
    logits = self.head(self.dropout(x, rngs=rngs)).astype(jnp.float32)
    return (logits, feats) if return_features else logits
