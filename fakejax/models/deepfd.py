"""DeepFD (Hsu, Lee and Zhuang 2018): contrastive feature network D1 + classifier D2.

D1 (the paper's Table I): conv 7x7 stride 4, 96 channels; 2 residual blocks at
96, 2 at 128, 2 at 256 channels; a fully connected 128-d embedding. D2 sits on
D1's 256-channel residual stage: conv 3x3 with 2 channels (one per class for
attribution), global average pooling, a fully connected layer to the classes.

Stage 1 trains D1 with the pairwise contrastive loss on `embed`; stage 2 trains
D2 with cross-entropy on `__call__` (D1 frozen by default). See fakejax.train.
"""

from flax import nnx
import jax.numpy as jnp

from fakejax.models import layers

class ResidualBlock(nnx.Module):
  """conv3x3-BN-ReLU-conv3x3-BN plus a (projected) shortcut, ReLU."""

  def __init__(self, cin, cout, stride, *, bn, dtype, rngs):
    kw = dict(bn=bn, dtype=dtype, rngs=rngs)
    self.conv1 = layers.ConvBN(cin, cout, 3, stride, **kw)
    self.conv2 = layers.ConvBN(cout, cout, 3, 1, act=None, **kw)
    self.shortcut = (layers.ConvBN(cin, cout, 1, stride, act=None, **kw)
                     if stride != 1 or cin != cout else None)

  def __call__(self, x):
    r = x if self.shortcut is None else self.shortcut(x)
    return nnx.relu(self.conv2(self.conv1(x)) + r)


class D1(nnx.Module):
  """The contrastive feature network."""

  def __init__(self, width=1.0, embed_dim=128, remat=False, *, bn, dtype, rngs):
    c = lambda n: max(4, int(round(n * width)))
    self.stem = layers.ConvBN(3, c(96), 7, 4, bn=bn, dtype=dtype, rngs=rngs)
    blocks, cin = [], c(96)
    for cout, stride in ((c(96), 1), (c(96), 1), (c(128), 2), (c(128), 1), (c(256), 2), (c(256), 1)):
      blocks.append(ResidualBlock(cin, cout, stride, bn=bn, dtype=dtype, rngs=rngs))
      cin = cout
    self.blocks = nnx.List(blocks)
    self.embed = nnx.Linear(cin, embed_dim, dtype=dtype, rngs=rngs)
    self.num_features = cin
    self.remat = remat

  def __call__(self, x, taps=None, valid_region=None):
    """(256-channel feature map, 128-d embedding); `taps` as DeepFD's, names without 'd1.'."""
    tap = layers.tapper(taps)
    x = tap("stem", self.stem(x))
    for i, b in enumerate(self.blocks):
      x = tap(f"block{i}", layers.call_block(b, x, self.remat))
    return x, self.embed(layers.global_avg_pool(x, valid_region)).astype(jnp.float32)


class D2(nnx.Module):
  """The classifier on D1's feature map."""

  def __init__(self, cin, num_classes, dropout, *, dtype, rngs):
    self.conv = nnx.Conv(cin, max(2, num_classes), (3, 3), dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(max(2, num_classes), num_classes, dtype=jnp.float32, rngs=rngs)

  def __call__(self, features, rngs=None, taps=None, valid_region=None):
    x = layers.global_avg_pool(layers.tapper(taps)("conv", self.conv(features)), valid_region)
    return self.head(self.dropout(x, rngs=rngs)).astype(jnp.float32)


class DeepFD(nnx.Module):
  """D1 + D2. `embed` is stage 1's output, `__call__` (logits) stage 2's and inference's.

  `remat`: each of D1's residual blocks under nnx.remat (layers.call_block).
  """

  stages = ("d1", "d2")  # Parameter groups trained by stage 1 and stage 2.
  CAM_LAYER = "d1.block5"  # D1's last stage, the map D2 classifies.

  def __init__(self, *, num_classes=2, dropout=0.0, width=1.0, embed_dim=128, dtype=jnp.float32,
               bn_momentum=0.9, remat=False, rngs):
    self.d1 = D1(width, embed_dim, remat, bn=dict(momentum=bn_momentum, epsilon=1e-5), dtype=dtype,
                 rngs=rngs)
    self.d2 = D2(self.d1.num_features, num_classes, dropout, dtype=dtype, rngs=rngs)
    self.num_features = self.d1.num_features

  def embed(self, x):
    return self.d1(x)[1]

  def layer_names(self):
    """The names `taps` sees, in forward order: D1's stages, then D2's class-evidence map."""
    return ("d1.stem", *(f"d1.block{i}" for i in range(len(self.d1.blocks))), "d2.conv")

  def __call__(self, x, *, rngs=None, taps=None, valid=None):
    """Logits (float32) of NHWC images: the forward of every model (models/__init__.py)."""
    prefixed = lambda prefix: None if taps is None else lambda name, a: taps(f"{prefix}.{name}", a)
    region = layers.region(valid, x.shape[1:3])
    features, _ = self.d1(x, taps=prefixed("d1"), valid_region=region)
    return self.d2(features, rngs=rngs, taps=prefixed("d2"), valid_region=region)
