"""DINOv2 (Oquab et al. 2023) Vision Transformers, with and without registers, and a linear head.

timm's `VisionTransformer` as it builds DINOv2 (timm/models/vision_transformer.py, e.g.
`vit_large_patch14_dinov2`, `vit_large_patch14_reg4_dinov2`): a patch embedding (a convolution with
bias, kernel = stride = 14), a class token, register tokens after it (Darcet et al. 2024, `_reg4`
models: 4), a learned positional embedding of the patches (37x37, for 518 px), pre-norm residual
blocks x + ls1 * attn(norm1(x)), then x + ls2 * mlp(norm2(x)) (LayerScale, fused q/k/v with bias, MLP
of 4x width with exact-erf GELU), LayerNorm epsilon 1e-6, and the class token after the final norm
as the features (timm's `forward_head` with global_pool='token'; DINOv2's `x_norm_clstoken`).

Archs (ARCHS): dinov2_vit_s14 (384 wide, 12 blocks, 6 heads), dinov2_vit_b14 (768, 12, 12),
dinov2_vit_l14 (1024, 24, 16), each also as `..._reg4`; dinov2_vit_tiny (64, 2, 4, grid 9 at 126
px) and dinov2_vit_tiny_reg4 are no DINOv2 but the same layout for tests and CPU smoke runs.

Used by DDA (roy-ch/Dual-Data-Alignment: DINOv2 ViT-L/14 from the facebookresearch hub, LoRA rank 8
alpha 1 on every block's attn.qkv, attn.proj, mlp.fc1 and mlp.fc2, a linear head (1 logit, BCE) on
x_norm_clstoken, 336 px crops, OpenAI CLIP's mean and std) and B-Free (DINOv2 with registers on
504 px crops). LoRA: models.lora; `lora_rank` > 0 puts it on the layers `lora_targets` names (by
default DDA's four); lora.TRAINABLE selects the adapters and the head (the backbone frozen).

Any input size works (a multiple of 14; like timm's strided convolution, the last partial row and
column of patches is dropped otherwise): the positional embedding is resampled from its grid to
the input's at trace time, by `pos_interp`:
  'timm': timm's resample_abs_pos_embed (dynamic_img_size=True, or img_size set at creation):
    F.interpolate(size=grid, mode='bicubic', antialias=True): PIL's bicubic (a = -0.5) whose
    support widens by the scale when downsampling. The facebookresearch hub's models with
    registers interpolate the same way.
  'hub': the facebookresearch hub's models without registers (interpolate_offset=0.1,
    interpolate_antialias=False), which DDA trains and scores with: F.interpolate with
    scale_factor=(grid + 0.1) / 37, mode='bicubic' (a = -0.75, no antialiasing), so DDA's released
    weights need 'hub'. The two are different resamplings (both matched to torch within 2e-5 in
    tests/test_dinov2.py): on a random N(0, 1) embedding they differ by up to 2 at 336 px, on a
    trained (smooth) one by less; at 518 px (37x37) neither resamples.
Hugging Face's Dinov2 interpolates as one or the other depending on its version.

Departures from timm: the class token holds its positional embedding already (fakejax.convert adds
timm's pos_embed[:, 0] to cls_token, as timm does for the register models): the same sums. No
dropout, drop path or attention masks inside the backbone; `dropout` acts on the features before
the head, as models.vit. The linear layers and the attention compute in `dtype`; the residual
stream, LayerNorm, the softmax and the head in float32, as under torch.autocast (where timm's
bfloat16 outputs meet the float32 positional embedding and LayerScale): a bfloat16 residual stream
had ~3.7x autocast's error on the tokens of a 2-block model, this 1.4-1.7x.

Layer names for `taps` / Grad-CAM: `patch_embed`, `blocks.0` ... `blocks.{depth-1}`, each the patch
tokens as an (N, h, w, width) map (the class and register tokens go on beside it); Grad-CAM uses
`blocks.{depth-2}` (models.vit's docstring says why).
"""

import jax
from flax import nnx
import jax.numpy as jnp
import numpy as np

from fakejax.models import layers
from fakejax.models import lora as lora_lib
from fakejax.models import vit

# name -> (width, depth, heads, registers, patch, image size: the positional embedding's grid x patch).
ARCHS = {"dinov2_vit_s14": (384, 12, 6, 0, 14, 518), "dinov2_vit_b14": (768, 12, 12, 0, 14, 518),
         "dinov2_vit_l14": (1024, 24, 16, 0, 14, 518), "dinov2_vit_s14_reg4": (384, 12, 6, 4, 14, 518),
         "dinov2_vit_b14_reg4": (768, 12, 12, 4, 14, 518), "dinov2_vit_l14_reg4": (1024, 24, 16, 4, 14, 518),
         "dinov2_vit_tiny": (64, 2, 4, 0, 14, 126), "dinov2_vit_tiny_reg4": (64, 2, 4, 4, 14, 126)}
LN_EPSILON = 1e-6
LAYER_SCALE_INIT = 1e-5  # timm's init_values for DINOv2.
LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")  # DDA's: attn.qkv, attn.proj, mlp.fc1, mlp.fc2.
POS_INTERP = ("timm", "hub")
HUB_OFFSET = 0.1  # facebookresearch/dinov2's interpolate_offset (models without registers).


def _cubic(x, a):
  """The cubic convolution kernel (Keys): a = -0.5 (PIL, torch's antialiased), -0.75 (torch's)."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = (((x - 5) * x + 8) * x - 4) * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _antialiased_bicubic(n_in, n_out):
  """torch's F.interpolate(size=n_out, mode='bicubic', antialias=True) as an (n_out, n_in) matrix
  (aten's _compute_indices_min_size_weights_aa; positions in float32 as there)."""
  scale = np.float32(n_in) / np.float32(n_out)
  support, inv = (2 * scale, 1 / scale) if scale >= 1 else (np.float32(2), np.float32(1))
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    center = np.float32(float(scale) * (i + 0.5))
    j = np.arange(max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in))
    w = _cubic(((j - center).astype(np.float32) + 0.5) * float(inv), -0.5)
    m[i, j] = w / w.sum()
  return m


def _offset_bicubic(n_in, n_out, offset):
  """torch's F.interpolate(scale_factor=(n_out + offset) / n_in, mode='bicubic') (no antialiasing,
  border indices clamped) as an (n_out, n_in) matrix (aten's HelperInterpCubic; the source index
  in float32 as there: in float64 the outputs move by ~1e-5)."""
  inv_scale = np.float32(1.0 / ((n_out + offset) / n_in))
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    real = inv_scale * np.float32(i + 0.5) - np.float32(0.5)
    idx = min(int(np.floor(real)), n_in - 1)
    t = float(min(max(real - np.float32(idx), np.float32(0)), np.float32(1)))
    for k, w in zip(range(idx - 1, idx + 3), _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)):
      m[i, min(max(k, 0), n_in - 1)] += w
  return m


def resample_matrix(n_in, n_out, mode="timm"):
  """The (n_out, n_in) float64 matrix that resamples one axis of the positional embedding."""
  if mode == "timm":
    return _antialiased_bicubic(n_in, n_out)
  if mode == "hub":
    return _offset_bicubic(n_in, n_out, HUB_OFFSET)
  raise ValueError(f"Unknown pos_interp {mode!r}; known: {', '.join(POS_INTERP)}")


def resample_pos_embed(pos, grid, new_grid, mode="timm"):
  """A (grid_h * grid_w, C) positional embedding resampled to `new_grid` (h, w), in float32."""
  if tuple(new_grid) == tuple(grid):
    return pos
  mh, mw = (jnp.asarray(resample_matrix(a, b, mode), jnp.float32) for a, b in zip(grid, new_grid))
  out = jnp.einsum("ih,jw,hwc->ijc", mh, mw, pos.astype(jnp.float32).reshape(*grid, -1),
                   precision=jax.lax.Precision.HIGHEST)
  return out.reshape(new_grid[0] * new_grid[1], -1)


class Block(nnx.Module):
  """x + ls1 * attn(norm1(x)), then x + ls2 * mlp(norm2(x)) (timm's Block with LayerScale).

  `lora`: None, or (rank, alpha, targets): LoRA on the linear layers named in targets.
  """

  def __init__(self, width, heads, *, dtype, rngs, lora=None):
    if width % heads:
      raise ValueError(f"width {width} is not a multiple of {heads} heads")
    self.heads = heads
    dense = lambda name, cin, cout: lora_lib.linear(name, cin, cout, lora=lora, dtype=dtype, rngs=rngs,
                                                    kernel_init=nnx.initializers.normal(0.02))
    self.norm1 = vit._LayerNorm(width, epsilon=LN_EPSILON, rngs=rngs)  # pylint: disable=protected-access
    self.qkv, self.proj = dense("qkv", width, 3 * width), dense("proj", width, width)
    self.ls1 = nnx.Param(jnp.full((width,), LAYER_SCALE_INIT, jnp.float32))
    self.norm2 = vit._LayerNorm(width, epsilon=LN_EPSILON, rngs=rngs)  # pylint: disable=protected-access
    self.fc1, self.fc2 = dense("fc1", width, 4 * width), dense("fc2", 4 * width, width)
    self.ls2 = nnx.Param(jnp.full((width,), LAYER_SCALE_INIT, jnp.float32))

  def attention(self, x):
    return vit.self_attention(x, self.qkv, self.proj, self.heads)

  def __call__(self, x):
    """x: the float32 residual stream; the layers compute in their dtype."""
    x = x + self.attention(self.norm1(x).astype(self.qkv.dtype)) * self.ls1[...]
    mlp = self.fc2(jax.nn.gelu(self.fc1(self.norm2(x).astype(self.fc1.dtype)), approximate=False))
    return x + mlp * self.ls2[...]


class DinoV2(nnx.Module):
  """A DINOv2 ViT + dropout + a linear head on the final-norm class token (DDA's `fc`).

  Args:
    arch: a key of ARCHS.
    num_classes: logits of the head.
    dropout: on the features, before the head.
    width: scales the transformer width (1.0: the published architecture).
    dtype: compute dtype (parameters stay float32).
    init: taken for the registry's sake: one initialisation (timm's scales: normal 0.02 kernels,
      LayerScale 1e-5, class and register tokens normal 1e-6).
    remat: rematerialise each block in the backward pass.
    single_logit: a 1-output head z returned as the logits [0, z] (DDA's BCE head).
    rngs: parameter initialisation.
    lora_rank: LoRA's rank on the `lora_targets` layers of every block (0: no LoRA).
    lora_alpha: LoRA's alpha (the adapters' scale is alpha / rank).
    lora_targets: which of 'qkv', 'proj', 'fc1', 'fc2' get LoRA (default: DDA's, all four).
    pos_interp: 'timm' or 'hub': how the positional embedding is resampled (module docstring).
    **overrides: depth, heads, hidden (the width), registers, patch, image_size: override ARCHS[arch]
      (small encoders for tests).
  """

  def __init__(self, arch="dinov2_vit_l14", *, num_classes=2, dropout=0.0, width=1.0, dtype=jnp.float32,
               init="reference", remat=False, single_logit=False, rngs, lora_rank=0, lora_alpha=1.0,
               lora_targets=LORA_TARGETS, pos_interp="timm", **overrides):
    del init
    if single_logit and num_classes != 2:
      raise ValueError(f"single_logit is a binary head, got {num_classes} classes")
    if pos_interp not in POS_INTERP or not set(lora_targets) <= set(LORA_TARGETS):
      raise ValueError(f"pos_interp {pos_interp!r} (known: {', '.join(POS_INTERP)}) or lora_targets "
                       f"{lora_targets} (known: {', '.join(LORA_TARGETS)})")
    w = self._configure(arch, width, overrides)
    self.dtype, self.remat, self.single_logit, self.pos_interp = dtype, remat, single_logit, pos_interp
    self.lora = (lora_rank, lora_alpha, tuple(lora_targets)) if lora_rank else None
    tiny = lambda *shape: nnx.Param(1e-6 * jax.random.normal(rngs.params(), shape))
    self.patch_embed = nnx.Conv(3, w, (self.patch, self.patch), strides=self.patch, padding="VALID",
                                dtype=dtype, rngs=rngs, kernel_init=nnx.initializers.normal(0.02))
    self.cls_token = tiny(w)
    if self.registers:
      self.reg_token = tiny(self.registers, w)
    self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (self.grid**2, w)))
    self.blocks = nnx.List([Block(w, self.heads, dtype=dtype, rngs=rngs, lora=self.lora)
                            for _ in range(self.depth)])
    self.norm = vit._LayerNorm(w, epsilon=LN_EPSILON, rngs=rngs)  # pylint: disable=protected-access
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(w, 1 if single_logit else num_classes, dtype=jnp.float32, rngs=rngs,
                           kernel_init=nnx.initializers.normal(0.02))
    self.CAM_LAYER = f"blocks.{max(self.depth - 2, 0)}"

  def _configure(self, arch, width, overrides):
    """Sets depth, heads, registers, patch, image_size, grid, num_features; returns the width."""
    unknown = set(overrides) - {"depth", "heads", "hidden", "registers", "patch", "image_size"}
    if unknown:
      raise TypeError(f"Unknown DinoV2 options: {', '.join(sorted(unknown))}")
    w, d, h, r, p, s = ARCHS[arch]
    self.heads = overrides.get("heads") or h
    w = overrides.get("hidden") or max(self.heads, int(round(w * width / self.heads)) * self.heads)
    self.depth, self.patch = overrides.get("depth") or d, overrides.get("patch") or p
    self.registers = overrides.get("registers", r)
    self.image_size = overrides.get("image_size") or s
    if self.image_size % self.patch:
      raise ValueError(f"image size {self.image_size} is not a multiple of the patch {self.patch}")
    self.grid, self.num_features = self.image_size // self.patch, w
    return w

  def layer_names(self):
    return ("patch_embed",) + tuple(f"blocks.{i}" for i in range(self.depth))

  def tokens(self, x, taps=None):
    """All tokens after the final norm, float32 (N, 1 + registers + h * w, width): class, registers,
    patches (timm's forward_features), of preprocessed NHWC images of any size."""
    tap = layers.tapper(taps)
    grid = tap("patch_embed", self.patch_embed(x.astype(self.dtype)))
    n, gh, gw, c = grid.shape
    pos = resample_pos_embed(self.pos_embed[...], (self.grid, self.grid), (gh, gw), self.pos_interp)
    prefix = [self.cls_token[...].reshape(1, 1, c)]
    if self.registers:
      prefix.append(self.reg_token[...][None])
    prefix = jnp.broadcast_to(jnp.concatenate(prefix, 1), (n, 1 + self.registers, c))
    x = jnp.concatenate([prefix, grid.reshape(n, gh * gw, c).astype(jnp.float32) + pos], 1)
    for i, blk in enumerate(self.blocks):
      x = layers.call_block(blk, x, self.remat)
      grid = tap(f"blocks.{i}", x[:, 1 + self.registers:].reshape(n, gh, gw, c))
      x = jnp.concatenate([x[:, :1 + self.registers], grid.reshape(n, gh * gw, c)], 1)
    return self.norm(x)

  def features(self, x, taps=None):
    """The class token after the final norm (N, width): DINOv2's x_norm_clstoken, DDA's features."""
    return self.tokens(x, taps)[:, 0]

  def __call__(self, x, *, rngs=None, taps=None, valid=None):
    """Logits (float32) of preprocessed NHWC images; see features(). `valid` is taken for the
    interface's sake: the class token has no global pool to mask."""
    del valid
    logits = self.head(self.dropout(self.features(x, taps), rngs=rngs)).astype(jnp.float32)
    return jnp.concatenate([jnp.zeros_like(logits), logits], -1) if self.single_logit else logits
