"""The photo benchmark's generator networks (fakejax.photo), in Flax NNX, and their training.

Each family is an encoder-decoder or a refiner trained here, seeded, on crops of the train band:

  tconv          encoder -> transposed convolutions (2x2, stride 2); trained as a GAN: L1
                 reconstruction alone for the first half of the steps, then L1 plus a
                 non-saturating adversarial loss from a patch discriminator (SRGAN's
                 pixel-loss pre-training: from scratch the adversarial loss collapsed it, half
                 its fakes flat gray, its reconstruction L1 0.18 against 0.07 now).
  nn_conv        encoder -> nearest-neighbour x2 + 3x3 convolution, L1 autoencoder.
  bilinear_conv  encoder -> bilinear x2 + 3x3 convolution, L1 autoencoder.
  pixel_shuffle  encoder -> 3x3 convolution to 4x channels + depth-to-space, L1 autoencoder.
  sr             x2 box down-scale -> bicubic up-scale -> residual CNN (no latent up-sampling).
  kl_vae         the aligned family's, not a test family: Stable Diffusion's KL autoencoder at
                 CPU size (models.vae 'small': GroupNorm, SiLU, nearest + conv up-sampling, a
                 mid-block attention, latents 4x smaller per side with 4 channels), trained as
                 SD's was less its perceptual and adversarial terms: L1 on a posterior draw plus
                 KL at weight 1e-6, on half-side sub-crops (a convolutional network: it applies
                 to the whole crop, at a quarter of the training cost). Its fakes are drawn from the posterior and truncated to 8 bits
                 as DDA's vae_rec.py does (fakejax.aligned).

The encoders reduce a crop by 8 in each direction to 16 channels (12x fewer numbers than the
pixels), so a decoder has to invent detail with its own up-sampling.
"""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

LATENT = 16
BATCH = 32
LR = 1e-3
ADV_WEIGHT = 0.05
KL_WEIGHT = 1e-6  # SD's autoencoder (ldm's kl-f8 config: kl_weight 1e-6).


def _conv(cin, cout, k, s, rngs):
  return nnx.Conv(cin, cout, (k, k), (s, s), padding="SAME", rngs=rngs)


class _Up(nnx.Module):
  """One x2 up-sampling stage of a family."""

  def __init__(self, family, cin, cout, rngs):
    self.family = family
    if family == "tconv":  # A 2x2 stride-2 transposed convolution, as an einsum (XLA's CPU
      # lowering of a dilated convolution made the GAN's step 4x slower); bias as nnx.Conv's.
      self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (cin, 2, 2, cout)))
      self.bias = nnx.Param(jnp.zeros((cout,)))
    elif family == "pixel_shuffle":
      self.op = _conv(cin, 4 * cout, 3, 1, rngs)
    else:
      self.op = _conv(cin, cout, 3, 1, rngs)

  def __call__(self, x):
    n, h, w, c = x.shape
    if self.family == "tconv":
      y = jnp.einsum("nhwc,cabo->nhawbo", x, self.kernel[...])
      return jax.nn.relu(y.reshape(n, 2 * h, 2 * w, -1) + self.bias[...])
    if self.family == "nn_conv":
      x = jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)
    elif self.family == "bilinear_conv":
      x = bilinear2x(bilinear2x(x, 1), 2)
    x = self.op(x)
    if self.family == "pixel_shuffle":
      c = x.shape[-1] // 4
      x = x.reshape(n, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c)
    return jax.nn.relu(x)


def bilinear2x(x, axis):
  """x2 bilinear up-sampling along `axis` with half-pixel centres and clamped edges (PyTorch's
  align_corners=False): out[2i] = 3/4 x[i] + 1/4 x[i-1], out[2i+1] = 3/4 x[i] + 1/4 x[i+1]."""
  n = x.shape[axis]
  prev = jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis), jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
  nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), jax.lax.slice_in_dim(x, n - 1, n, axis=axis)], axis)
  y = jnp.stack([0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt], axis + 1)
  shape = list(x.shape)
  shape[axis] = 2 * n
  return y.reshape(shape)


class AutoEncoder(nnx.Module):
  def __init__(self, family, rngs):
    self.enc = nnx.List([_conv(3, 16, 3, 1, rngs), _conv(16, 48, 4, 2, rngs), _conv(48, 64, 4, 2, rngs)])
    self.to_latent = _conv(64, LATENT, 4, 2, rngs)
    self.from_latent = _conv(LATENT, 64, 3, 1, rngs)
    self.ups = nnx.List([_Up(family, 64, 64, rngs), _Up(family, 64, 32, rngs), _Up(family, 32, 16, rngs)])
    self.out = _conv(16, 3, 3, 1, rngs)

  def __call__(self, x):
    for c in self.enc:
      x = jax.nn.relu(c(x))
    x = jax.nn.relu(self.from_latent(self.to_latent(x)))
    for u in self.ups:
      x = u(x)
    return jax.nn.sigmoid(self.out(x))


def degrade(x):
  """The sr family's input (numpy, outside the network): x2 box down-scale, then PIL's bicubic
  up-scale back to the side."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  n, h, w, c = x.shape
  low = x.reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4))
  up = [np.stack([np.asarray(Image.fromarray(ch).resize((w, h), Image.BICUBIC)) for ch in np.moveaxis(im, -1, 0)], -1)
        for im in low.astype(np.float32)]
  return np.clip(np.stack(up), 0.0, 1.0)


class Refiner(nnx.Module):
  """sr: a residual CNN on the bicubic up-scale of a down-scaled real."""

  def __init__(self, rngs):
    self.convs = nnx.List([_conv(3, 24, 3, 1, rngs)] + [_conv(24, 24, 3, 1, rngs) for _ in range(3)])
    self.out = _conv(24, 3, 3, 1, rngs)

  def __call__(self, up):
    h = up
    for c in self.convs:
      h = jax.nn.relu(c(h))
    return jnp.clip(up + self.out(h), 0.0, 1.0)


class Critic(nnx.Module):
  """A patch discriminator (the tconv family's adversary)."""

  def __init__(self, rngs):
    self.convs = nnx.List([_conv(3, 32, 4, 2, rngs), _conv(32, 64, 4, 2, rngs)])
    self.out = _conv(64, 1, 3, 1, rngs)

  def __call__(self, x):
    for c in self.convs:
      x = jax.nn.leaky_relu(c(2.0 * x - 1.0), 0.2)
    return self.out(x)


def _l1(model, x, target):
  return jnp.abs(model(x) - target).mean()


@nnx.jit
def _ae_step(model, opt, x, target):
  loss, grads = nnx.value_and_grad(_l1)(model, x, target)
  opt.update(model, grads)
  return loss


@nnx.jit
def _gan_step(model, critic, opt, opt_c, x):
  def g_loss(m):
    y = m(x)
    return jnp.abs(y - x).mean() + ADV_WEIGHT * jax.nn.softplus(-critic(y)).mean(), y

  (loss, y), grads = nnx.value_and_grad(g_loss, has_aux=True)(model)
  opt.update(model, grads)
  y = jax.lax.stop_gradient(y)

  def c_loss(c):
    return jax.nn.softplus(-c(x)).mean() + jax.nn.softplus(c(y)).mean()

  opt_c.update(critic, nnx.grad(c_loss)(critic))
  return loss


@nnx.jit
def _apply(model, x):
  return model(x)


def _vae_loss(model, x, key):
  """L1 of the reconstruction of a posterior draw (in [0, 1] units) + KL_WEIGHT * KL per image."""
  from fakejax.models import vae  # pylint: disable=g-import-not-at-top
  mean, logvar = model.encode(2.0 * x - 1.0)
  l1 = jnp.abs(model.decode(vae.draw(mean, logvar, key)) - (2.0 * x - 1.0)).mean() / 2.0
  kl = 0.5 * jnp.sum(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3)).mean()
  return l1 + KL_WEIGHT * kl


@nnx.jit
def _vae_step(model, opt, x, key):
  loss, grads = nnx.value_and_grad(_vae_loss)(model, x, key)
  opt.update(model, grads)
  return loss


@nnx.jit
def _vae_draw(model, x, key):
  """Reconstructions of a posterior draw, truncated to 8 bits (vae.to_uint8), in [0, 1]."""
  from fakejax.models import vae  # pylint: disable=g-import-not-at-top
  return vae.to_uint8(model(2.0 * x - 1.0, key=key), "floor").astype(jnp.float32) / 255.0


def _train_vae(crops, rng, steps, seed):
  """The kl_vae family's generator: trains models.vae 'small', returns x -> a drawn reconstruction."""
  from fakejax.models import vae  # pylint: disable=g-import-not-at-top
  model = vae.create("small", seed=seed)
  opt = nnx.Optimizer(model, optax.adam(LR), wrt=nnx.Param)
  key = jax.random.key(seed)
  for step in range(steps):  # On half-side sub-crops: a quarter of the work, the same network.
    x = crops.draw(rng, "train", BATCH)[0]
    h = x.shape[1] // 2
    y, z = rng.integers(0, h + 1, 2)
    _vae_step(model, opt, jnp.asarray(x[:, y:y + h, z:z + h]), jax.random.fold_in(key, step))
  calls = [0]

  def draw(x):
    calls[0] += 1  # Each call its own draw, the same on every run.
    return np.asarray(_vae_draw(model, jnp.asarray(np.asarray(x, np.float32)),
                                jax.random.fold_in(jax.random.key(seed + 1), calls[0])))
  return draw


def train(family, crops, rng, steps, seed):
  """A trained generator of `family`: a function (N x S x S x 3 float32 in [0, 1]) -> fakes."""
  if family == "kl_vae":
    return _train_vae(crops, rng, steps, seed)
  rngs = nnx.Rngs(seed)
  model = Refiner(rngs) if family == "sr" else AutoEncoder(family, rngs)
  opt = nnx.Optimizer(model, optax.adam(LR), wrt=nnx.Param)
  if family == "tconv":
    critic = Critic(rngs)
    opt_c = nnx.Optimizer(critic, optax.adam(LR, b1=0.5), wrt=nnx.Param)
  prep = degrade if family == "sr" else (lambda x: x)
  for step in range(steps):
    x = crops.draw(rng, "train", BATCH)[0]
    if family == "tconv" and step >= steps // 2:  # After the L1 pre-training.
      _gan_step(model, critic, opt, opt_c, jnp.asarray(x))
    else:
      _ae_step(model, opt, jnp.asarray(prep(x)), jnp.asarray(x))
  return lambda x: np.asarray(_apply(model, jnp.asarray(prep(np.asarray(x, np.float32)))))
