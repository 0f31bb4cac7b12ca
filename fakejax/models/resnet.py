"""ResNet-50/101, torchvision's v1.5 layout (stride on the 3x3 conv of a bottleneck), and the
truncated ResNet-50 of NPR and SAFE.

Backbone parameter counts (torchvision `parameters()`, BatchNorm statistics are
buffers there and not counted): 23,508,032 (50) and 42,500,160 (101).

`resnet_trunc` is NPR's and SAFE's network (chuangchuangtan/NPR-DeepfakeDetection and
Ouxiang-Li/SAFE, networks/resnet.py and models/resnet.py): a 3x3 stride-2 stem (no bias), BN,
ReLU, max-pool 3/2, then ResNet-50's layer1 and layer2 only (512 features), global average pool
and the classifier: 1,437,248 backbone parameters (1,437,761 with NPR's 1-logit head, 1,438,274
with SAFE's 2 logits).
`resnet50_nodown` is AlignedForensics' `res50nodown` (AniSundar18/AlignedForensics,
training_code/networks/resnet_mod.py with stride0=1): ResNet-50 whose stem convolution and
max-pool run at stride 1, so the features are 8x, not 32x, smaller than the input; the same
parameters as ResNet-50, ImageNet weights load unchanged.
BatchNorm epsilon 1e-5, momentum 0.1 in torch terms (0.9 here).
"""

from flax import nnx
import jax.numpy as jnp

from fakejax.models import inits
from fakejax.models import layers

TORCH_MOMENTUM, TORCH_EPSILON = 0.9, 1e-5
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, cin, planes, stride, *, bn, dtype, rngs, kernel_init):
    kw = dict(bn=bn, dtype=dtype, rngs=rngs, kernel_init=kernel_init)
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
  """ResNet backbone + dropout + linear classifier.

  `init`: 'reference' (torchvision's initialisers) or 'flax' (see fakejax.models.inits);
  `remat`: each bottleneck under nnx.remat (layers.call_block).
  """

  CAM_LAYER = "layer4"

  def __init__(self, depth=50, *, num_classes=2, dropout=0.0, width=1.0, dtype=jnp.float32,
               bn_momentum=TORCH_MOMENTUM, init="reference", remat=False, stages=4, stem_kernel=7,
               stem_stride=2, single_logit=False, rngs):
    """`stages` < 4 keeps the first stages only; `stem_kernel` 3 is NPR/SAFE's 3x3 stem;
    `stem_stride` 1 runs the stem convolution and max-pool at stride 1 (AlignedForensics);
    `single_logit`: a 1-output head z (NPR's BCE head) returned as the logits [0, z], whose
    softmax is exactly [1 - sigmoid(z), sigmoid(z)] and whose cross-entropy is BCE on z."""
    if depth not in DEPTHS:
      raise ValueError(f"Unknown ResNet depth {depth}; known: {sorted(DEPTHS)}")
    if single_logit and num_classes != 2:
      raise ValueError(f"single_logit is a binary head, got {num_classes} classes")
    c = lambda n: max(4, int(round(n * width)))
    bn = dict(momentum=bn_momentum, epsilon=TORCH_EPSILON)
    kw = dict(bn=bn, dtype=dtype, rngs=rngs, kernel_init=inits.conv(init, "torchvision"))
    pad = stem_kernel // 2
    self.stem = layers.ConvBN(3, c(64), stem_kernel, stem_stride, ((pad, pad), (pad, pad)), **kw)
    self.stem_stride = stem_stride
    stages_, cin = [], c(64)
    for i, n in enumerate(DEPTHS[depth][:stages]):
      blocks = []
      for b in range(n):
        blocks.append(Bottleneck(cin, c(64 * 2**i), 2 if (b == 0 and i > 0) else 1, **kw))
        cin = c(64 * 2**i) * Bottleneck.expansion
      stages_.append(nnx.List(blocks))
    self.stages = nnx.List(stages_)
    self.dropout = nnx.Dropout(dropout)
    self.single_logit = single_logit
    self.head = nnx.Linear(cin, 1 if single_logit else num_classes, dtype=jnp.float32, rngs=rngs,
                           **inits.dense(init, "torchvision", cin))
    self.num_features = cin
    self.remat = remat
    self.CAM_LAYER = f"layer{len(self.stages)}"

  def layer_names(self):
    """The names `taps` sees, in forward order (torchvision's module names).

    Each block (layer1.0, ...) and then its stage (layer1, the same activation as its last block).
    """
    names = ["stem", "maxpool"]
    for i, stage in enumerate(self.stages):
      names += [f"layer{i + 1}.{j}" for j in range(len(stage))] + [f"layer{i + 1}"]
    return tuple(names)

  def __call__(self, x, *, rngs=None, taps=None, valid=None):
    """Logits (float32) of NHWC images: the forward of every model (models/__init__.py)."""
    tap = layers.tapper(taps)
    region = layers.region(valid, x.shape[1:3])
    x = tap("stem", self.stem(x))
    x = tap("maxpool", layers.max_pool(x, stride=self.stem_stride, padding=((1, 1), (1, 1))))
    for i, stage in enumerate(self.stages):
      for j, blk in enumerate(stage):
        x = tap(f"layer{i + 1}.{j}", layers.call_block(blk, x, self.remat))
      x = tap(f"layer{i + 1}", x)
    x = layers.global_avg_pool(x, region)
    logits = self.head(self.dropout(x, rngs=rngs)).astype(jnp.float32)
    return jnp.concatenate([jnp.zeros_like(logits), logits], -1) if self.single_logit else logits
