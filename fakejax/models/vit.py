"""CLIP's image encoder (a Vision Transformer), and UnivFD: a linear head on its embedding.

The visual tower of OpenAI's CLIP as UniversalFakeDetect loads it (models/clip/model.py there,
the same module as open_clip's `VisionTransformer` with QuickGELU): a patch embedding (a
convolution without bias, kernel = stride = patch), a class token, a learned positional
embedding, LayerNorm before the blocks (`ln_pre`), pre-norm residual blocks (multi-head
self-attention with a fused q/k/v projection, then an MLP of 4x width with QuickGELU
x * sigmoid(1.702 x)), LayerNorm of the class token after them (`ln_post`) and a linear
projection without bias to the embedding (768 for ViT-L/14). LayerNorm epsilon 1e-5.

UnivFD (Ojha et al. 2023) puts one linear layer on that embedding (`fc`, 768 -> 1: a single
logit, returned as the logits [0, z] like NPR's head) and trains only it, on a frozen encoder.

Layer names for `taps` / Grad-CAM: `patch_embed`, then `blocks.0` ... `blocks.{depth-1}`; each
is the patch tokens as an (N, h, w, width) map (the class token goes on beside it). Grad-CAM
uses the input of the last block (`blocks.{depth-2}`): the last block's own patch tokens reach
the output through nothing (only the class token is pooled), so their gradients are zero.

Compute in `dtype` (bfloat16 on GPUs); LayerNorm and the attention softmax run in float32.
"""

import jax
from flax import nnx
import jax.numpy as jnp

from fakejax.models import layers

# name -> (width, depth, heads, patch, image size, embedding): CLIP's ViTs (open_clip's configs).
# clip_vit_tiny is no CLIP: a ViT of the same layout at 64 px for tests and CPU smoke runs.
ARCHS = {"clip_vit_l14": (1024, 24, 16, 14, 224, 768), "clip_vit_b16": (768, 12, 12, 16, 224, 512),
         "clip_vit_tiny": (64, 2, 4, 8, 64, 32)}
LN_EPSILON = 1e-5


def self_attention(x, qkv, proj, heads):
  """Multi-head self-attention of (N, T, C) tokens through a fused q/k/v projection `qkv` and the
  output projection `proj` (CLIP's and DINOv2's blocks); the softmax in float32."""
  n, t, c = x.shape
  q, k, v = jnp.split(qkv(x).reshape(n, t, 3 * heads, c // heads), 3, axis=2)
  logits = jnp.einsum("nqhd,nkhd->nhqk", q, k).astype(jnp.float32) * (c // heads) ** -0.5
  weights = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
  return proj(jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, t, c))


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


class _LayerNorm(nnx.LayerNorm):
  """LayerNorm in float32 whatever the compute dtype (as CLIP's own LayerNorm), back in x's."""

  def __call__(self, x):
    return super().__call__(x.astype(jnp.float32)).astype(x.dtype)


def _dense(cin, cout, *, dtype, rngs, use_bias=True, std=0.02):
  return nnx.Linear(cin, cout, use_bias=use_bias, dtype=dtype, rngs=rngs,
                    kernel_init=nnx.initializers.normal(std))


class Block(nnx.Module):
  """x + attn(ln_1(x)), then + mlp(ln_2(x)) (open_clip's ResidualAttentionBlock)."""

  def __init__(self, width, heads, *, dtype, rngs):
    if width % heads:
      raise ValueError(f"width {width} is not a multiple of {heads} heads")
    self.heads = heads
    ln = dict(epsilon=LN_EPSILON, rngs=rngs)
    self.ln_1 = _LayerNorm(width, **ln)
    self.in_proj = _dense(width, 3 * width, dtype=dtype, rngs=rngs)
    self.out_proj = _dense(width, width, dtype=dtype, rngs=rngs)
    self.ln_2 = _LayerNorm(width, **ln)
    self.c_fc = _dense(width, 4 * width, dtype=dtype, rngs=rngs)
    self.c_proj = _dense(4 * width, width, dtype=dtype, rngs=rngs)

  def attention(self, x):
    return self_attention(x, self.in_proj, self.out_proj, self.heads)

  def __call__(self, x):
    x = x + self.attention(self.ln_1(x))
    return x + self.c_proj(quick_gelu(self.c_fc(self.ln_2(x))))


class ClipViT(nnx.Module):
  """CLIP's visual tower + dropout + a linear head on the embedding (UnivFD's `fc`).

  `width` scales the transformer width (1.0: the published architecture); `single_logit`: a
  1-output head z returned as the logits [0, z] (UnivFD's BCE head).
  """

  def __init__(self, arch="clip_vit_l14", *, num_classes=2, dropout=0.0, width=1.0, dtype=jnp.float32,
               init="reference", remat=False, single_logit=False, rngs, depth=None, heads=None,
               image_size=None, patch=None, embed_dim=None, hidden=None):
    """`depth`, `heads`, `image_size`, `patch`, `embed_dim`, `hidden` override ARCHS[arch]
    (small encoders for tests)."""
    del init  # One initialisation (std 0.02 normal, CLIP's scale for the embeddings).
    if single_logit and num_classes != 2:
      raise ValueError(f"single_logit is a binary head, got {num_classes} classes")
    w, d, h, p, s, e = ARCHS[arch]
    w = hidden or max(h, int(round(w * width / h)) * h)
    self.depth, self.heads = depth or d, heads or h
    self.patch, self.image_size, self.num_features = patch or p, image_size or s, embed_dim or e
    if self.image_size % self.patch:
      raise ValueError(f"image size {self.image_size} is not a multiple of the patch {self.patch}")
    self.grid = self.image_size // self.patch
    self.dtype, self.remat, self.single_logit = dtype, remat, single_logit
    normal = lambda *shape: nnx.Param(w**-0.5 * jax.random.normal(rngs.params(), shape))
    self.patch_embed = nnx.Conv(3, w, (self.patch, self.patch), strides=self.patch, padding="VALID",
                                use_bias=False, dtype=dtype, rngs=rngs,
                                kernel_init=nnx.initializers.normal(0.02))
    self.class_embedding = normal(w)
    self.positional_embedding = normal(self.grid**2 + 1, w)
    self.ln_pre = _LayerNorm(w, epsilon=LN_EPSILON, rngs=rngs)
    self.blocks = nnx.List([Block(w, self.heads, dtype=dtype, rngs=rngs) for _ in range(self.depth)])
    self.ln_post = _LayerNorm(w, epsilon=LN_EPSILON, rngs=rngs)
    self.proj = normal(w, self.num_features)
    self.dropout = nnx.Dropout(dropout)
    self.head = _dense(self.num_features, 1 if single_logit else num_classes, dtype=jnp.float32, rngs=rngs)
    self.CAM_LAYER = f"blocks.{max(self.depth - 2, 0)}"

  def layer_names(self):
    return ("patch_embed",) + tuple(f"blocks.{i}" for i in range(self.depth))

  def features(self, x, taps=None):
    """The CLIP image embedding (N, embed) of preprocessed NHWC images (UnivFD's features)."""
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"This ViT takes {self.image_size}x{self.image_size} inputs (its positional "
                       f"embedding is fixed), got {x.shape[1]}x{x.shape[2]}: crop or resize first")
    tap = layers.tapper(taps)
    n = x.shape[0]
    grid = tap("patch_embed", self.patch_embed(x.astype(self.dtype)))
    cls = jnp.broadcast_to(self.class_embedding[...].astype(self.dtype), (n, 1, grid.shape[-1]))
    x = jnp.concatenate([cls, grid.reshape(n, self.grid**2, -1)], 1)
    x = self.ln_pre(x + self.positional_embedding[...].astype(self.dtype))
    for i, blk in enumerate(self.blocks):
      x = layers.call_block(blk, x, self.remat)
      grid = tap(f"blocks.{i}", x[:, 1:].reshape(n, self.grid, self.grid, -1))
      x = jnp.concatenate([x[:, :1], grid.reshape(n, self.grid**2, -1)], 1)
    return self.ln_post(x[:, 0]) @ self.proj[...].astype(self.dtype)

  def __call__(self, x, *, rngs=None, taps=None, valid=None):
    """Logits (float32) of preprocessed NHWC images; see features(). `valid` is taken for the
    interface's sake: the class token has no global pool to mask."""
    del valid
    logits = self.head(self.dropout(self.features(x, taps), rngs=rngs)).astype(jnp.float32)
    return jnp.concatenate([jnp.zeros_like(logits), logits], -1) if self.single_logit else logits
