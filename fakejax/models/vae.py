"""Stable Diffusion's KL autoencoder (diffusers' `AutoencoderKL`) in NNX.

The autoencoder of latent diffusion (SD 1.x / 2.x, SDXL, and the small one fakejax trains for the
aligned photo family), rebuilt from diffusers 0.42's `models/autoencoders/autoencoder_kl.py`,
`vae.py` (Encoder, Decoder, DiagonalGaussianDistribution), `unets/unet_2d_blocks.py`
(DownEncoderBlock2D, UpDecoderBlock2D, UNetMidBlock2D), `resnet.py` (ResnetBlock2D),
`downsampling.py` / `upsampling.py` and `attention_processor.py` (the mid-block's one-head
attention):

- encoder: conv_in 3x3; per level `layers_per_block` ResNet blocks (GroupNorm, SiLU, conv 3x3,
  GroupNorm, SiLU, conv 3x3, a 1x1 shortcut when the width changes) and, except at the last level,
  a 3x3 stride-2 convolution after padding (0, 1) on both axes; the mid-block (ResNet, attention,
  ResNet); GroupNorm, SiLU, conv_out 3x3 to 2 x latent channels (mean, log-variance); quant_conv 1x1.
- decoder: post_quant_conv 1x1, conv_in, the mid-block, per level (widest first)
  `layers_per_block + 1` ResNet blocks and, except at the last level, nearest-neighbour x2 then a
  3x3 convolution; GroupNorm, SiLU, conv_out to RGB.
- the mid-block attention: GroupNorm, q/k/v linear over the H x W positions (one head of the full
  width), softmax in float32, the output projection, the residual.
- GroupNorm epsilon 1e-6 everywhere; the log-variance clamped to [-30, 20].

Images are NHWC in [-1, 1] (diffusers' NCHW, transposed); parameters are named after diffusers'
modules (`encoder/down_blocks/0/resnets/1/norm1`), so conversion (fakejax.convert.from_diffusers_vae)
is a renaming. Compute in `dtype`; GroupNorm and the attention softmax in float32.
"""

import jax
from flax import nnx
import jax.numpy as jnp

EPSILON = 1e-6
# diffusers' configs of the published autoencoders (their vae/config.json), and a small one.
CONFIGS = {
    # SD 1.x / 2.x (stabilityai/sd-vae-ft-mse, stable-diffusion-2-1/vae).
    "sd": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
               norm_num_groups=32, scaling_factor=0.18215),
    # SDXL's (stabilityai/sdxl-vae): the same network, another scaling factor.
    "sdxl": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                 norm_num_groups=32, scaling_factor=0.13025),
    # SD's layout at CPU size (the aligned photo family; tests): latents 4x smaller per side.
    "small": dict(block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4,
                  norm_num_groups=8, scaling_factor=1.0),
}


def _group_norm(channels, groups, rngs):
  return nnx.GroupNorm(channels, num_groups=groups, epsilon=EPSILON, dtype=jnp.float32, rngs=rngs)


def _norm_act(norm, x):
  """GroupNorm in float32, then SiLU, back in x's dtype."""
  return jax.nn.silu(norm(x.astype(jnp.float32))).astype(x.dtype)


def _conv(cin, cout, kernel, *, dtype, rngs, stride=1, padding="SAME"):
  return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=padding, dtype=dtype, rngs=rngs)


class ResnetBlock(nnx.Module):
  """diffusers' ResnetBlock2D without a time embedding (output_scale_factor 1, dropout 0)."""

  def __init__(self, cin, cout, *, groups, dtype, rngs):
    self.norm1 = _group_norm(cin, groups, rngs)
    self.conv1 = _conv(cin, cout, 3, dtype=dtype, rngs=rngs)
    self.norm2 = _group_norm(cout, groups, rngs)
    self.conv2 = _conv(cout, cout, 3, dtype=dtype, rngs=rngs)
    self.conv_shortcut = _conv(cin, cout, 1, dtype=dtype, rngs=rngs) if cin != cout else None

  def __call__(self, x):
    h = self.conv1(_norm_act(self.norm1, x))
    h = self.conv2(_norm_act(self.norm2, h))
    return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nnx.Module):
  """The mid-block's self-attention over positions: one head of the full width."""

  def __init__(self, c, *, groups, dtype, rngs):
    self.group_norm = _group_norm(c, groups, rngs)
    dense = lambda: nnx.Linear(c, c, dtype=dtype, rngs=rngs)
    self.to_q, self.to_k, self.to_v, self.to_out = dense(), dense(), dense(), dense()

  def __call__(self, x):
    n, h, w, c = x.shape
    t = self.group_norm(x.astype(jnp.float32)).astype(x.dtype).reshape(n, h * w, c)
    q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
    logits = jnp.einsum("nqc,nkc->nqk", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(c)
    a = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return x + self.to_out(jnp.einsum("nqk,nkc->nqc", a, v)).reshape(n, h, w, c)


class MidBlock(nnx.Module):
  def __init__(self, c, *, groups, attention, dtype, rngs):
    kw = dict(groups=groups, dtype=dtype, rngs=rngs)
    self.resnets = nnx.List([ResnetBlock(c, c, **kw), ResnetBlock(c, c, **kw)])
    self.attentions = nnx.List([Attention(c, **kw)] if attention else [])

  def __call__(self, x):
    x = self.resnets[0](x)
    for attn in self.attentions:
      x = attn(x)
    return self.resnets[1](x)


class Level(nnx.Module):
  """One resolution: ResNet blocks, then a down-sampling (encoder) or up-sampling (decoder) conv."""

  def __init__(self, cin, cout, n, *, resample, groups, dtype, rngs):
    kw = dict(groups=groups, dtype=dtype, rngs=rngs)
    self.resnets = nnx.List([ResnetBlock(cin if i == 0 else cout, cout, **kw) for i in range(n)])
    self.resample = resample
    # diffusers' Downsample2D(padding=0): pad (0, 1), 3x3 stride 2, VALID; Upsample2D: nearest x2, 3x3.
    self.conv = None if resample is None else _conv(
        cout, cout, 3, stride=2 if resample == "down" else 1, padding="VALID" if resample == "down" else "SAME",
        dtype=dtype, rngs=rngs)

  def __call__(self, x):
    for block in self.resnets:
      x = block(x)
    if self.resample == "down":
      x = self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))
    elif self.resample == "up":
      x = self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
    return x


class Encoder(nnx.Module):
  def __init__(self, widths, n, latent, *, groups, attention, dtype, rngs):
    kw = dict(groups=groups, dtype=dtype, rngs=rngs)
    self.conv_in = _conv(3, widths[0], 3, dtype=dtype, rngs=rngs)
    self.down_blocks = nnx.List([
        Level(widths[max(i - 1, 0)], w, n, resample=None if i == len(widths) - 1 else "down", **kw)
        for i, w in enumerate(widths)])
    self.mid_block = MidBlock(widths[-1], attention=attention, **kw)
    self.conv_norm_out = _group_norm(widths[-1], groups, rngs)
    self.conv_out = _conv(widths[-1], 2 * latent, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = self.conv_in(x)
    for level in self.down_blocks:
      x = level(x)
    return self.conv_out(_norm_act(self.conv_norm_out, self.mid_block(x)))


class Decoder(nnx.Module):
  def __init__(self, widths, n, latent, *, groups, attention, dtype, rngs):
    kw = dict(groups=groups, dtype=dtype, rngs=rngs)
    rev = tuple(reversed(widths))
    self.conv_in = _conv(latent, rev[0], 3, dtype=dtype, rngs=rngs)
    self.mid_block = MidBlock(rev[0], attention=attention, **kw)
    self.up_blocks = nnx.List([
        Level(rev[max(i - 1, 0)], w, n + 1, resample=None if i == len(rev) - 1 else "up", **kw)
        for i, w in enumerate(rev)])
    self.conv_norm_out = _group_norm(widths[0], groups, rngs)
    self.conv_out = _conv(widths[0], 3, 3, dtype=dtype, rngs=rngs)

  def __call__(self, z):
    x = self.mid_block(self.conv_in(z))
    for level in self.up_blocks:
      x = level(x)
    return self.conv_out(_norm_act(self.conv_norm_out, x))


class AutoencoderKL(nnx.Module):
  """diffusers' AutoencoderKL: `encode` -> the latent distribution, `decode` -> images.

  Args (diffusers' config names):
    block_out_channels: widths per level (a down-sampling between levels: latents are
      2^(levels-1) times smaller per side).
    layers_per_block: ResNet blocks per encoder level (decoder: one more).
    latent_channels: channels of the latent.
    norm_num_groups: GroupNorm groups.
    scaling_factor, shift_factor: what diffusion models multiply latents by (`latents`).
    use_quant_conv, use_post_quant_conv, mid_block_add_attention: as diffusers.
    dtype: compute dtype; parameters stay float32.
  """

  def __init__(self, *, block_out_channels, layers_per_block, latent_channels=4, norm_num_groups=32,
               scaling_factor=0.18215, shift_factor=None, use_quant_conv=True, use_post_quant_conv=True,
               mid_block_add_attention=True, dtype=jnp.float32, rngs):
    widths = tuple(block_out_channels)
    kw = dict(groups=norm_num_groups, attention=mid_block_add_attention, dtype=dtype, rngs=rngs)
    self.encoder = Encoder(widths, layers_per_block, latent_channels, **kw)
    self.decoder = Decoder(widths, layers_per_block, latent_channels, **kw)
    z2 = 2 * latent_channels
    self.quant_conv = _conv(z2, z2, 1, dtype=dtype, rngs=rngs) if use_quant_conv else None
    self.post_quant_conv = (_conv(latent_channels, latent_channels, 1, dtype=dtype, rngs=rngs)
                            if use_post_quant_conv else None)
    self.scaling_factor, self.shift_factor = float(scaling_factor), shift_factor
    self.factor = 2 ** (len(widths) - 1)  # Pixels per latent cell, per side.
    self.dtype = dtype

  def encode(self, x):
    """(mean, logvar), float32, of NHWC images in [-1, 1] (sides multiples of `factor`)."""
    h = self.encoder(x.astype(self.dtype))
    if self.quant_conv is not None:
      h = self.quant_conv(h)
    mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z):
    """Images (float32, NHWC, about [-1, 1]) of latents z (unscaled: the encoder's own)."""
    z = z.astype(self.dtype)
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x, *, key=None):
    """The reconstruction of x: decode the posterior's mode, or a draw of it with `key`."""
    mean, logvar = self.encode(x)
    return self.decode(mean if key is None else draw(mean, logvar, key))


def draw(mean, logvar, key):
  """A draw of the diagonal Gaussian posterior (diffusers' DiagonalGaussianDistribution.sample)."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)


def from_diffusers_config(config, *, dtype=jnp.float32, seed=0):
  """An AutoencoderKL (random weights) of a diffusers config.json dict.

  Raises:
    ValueError: for block types or options this module does not build.
  """
  down = set(config.get("down_block_types", ["DownEncoderBlock2D"]))
  up = set(config.get("up_block_types", ["UpDecoderBlock2D"]))
  if down != {"DownEncoderBlock2D"} or up != {"UpDecoderBlock2D"}:
    raise ValueError(f"Only DownEncoderBlock2D / UpDecoderBlock2D autoencoders are supported, got {down} / {up}")
  if config.get("act_fn", "silu") != "silu" or config.get("in_channels", 3) != 3 \
     or config.get("out_channels", 3) != 3:
    raise ValueError("Only RGB autoencoders with SiLU activations are supported")
  keys = ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups",
          "scaling_factor", "shift_factor", "use_quant_conv", "use_post_quant_conv",
          "mid_block_add_attention")
  kw = {k: config[k] for k in keys if config.get(k) is not None}
  return AutoencoderKL(**kw, dtype=dtype, rngs=nnx.Rngs(seed))


def create(name, *, dtype=jnp.float32, seed=0):
  """An AutoencoderKL of CONFIGS[name] with random weights."""
  if name not in CONFIGS:
    raise ValueError(f"Unknown autoencoder {name!r}; known: {', '.join(CONFIGS)}")
  return AutoencoderKL(**CONFIGS[name], dtype=dtype, rngs=nnx.Rngs(seed))


def to_uint8(x, rounding="floor"):
  """[-1, 1] images -> uint8 pixels as the aligned-data code does: ((x + 1) / 2 * 255), clipped,
  then truncated ('floor': DDA's vae_rec.py, `.astype(np.uint8)`) or rounded ('round': diffusers'
  VaeImageProcessor)."""
  y = jnp.clip((x + 1.0) / 2.0 * 255.0, 0.0, 255.0)
  return (jnp.floor(y) if rounding == "floor" else jnp.round(y)).astype(jnp.uint8)


def from_uint8(pixels, dtype=jnp.float32):
  """uint8 pixels -> [-1, 1] (DDA: x / 255, then 2x - 1)."""
  return (2.0 * (pixels.astype(jnp.float32) / 255.0) - 1.0).astype(dtype)
