"""models.for_inference: the plain model's logits from BatchNorm folded into the convolutions."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fakejax import models
from fakejax.models import cpu_kernels
from tests.conftest import TINY_MODELS
from tests.conftest import tiny_model



def _trained_looking(name):
  """A tiny model whose BatchNorms have non-trivial statistics and affine parameters."""
  model = tiny_model(name)
  rng = np.random.default_rng(0)
  for _, m in nnx.iter_modules(model):
    if isinstance(m, nnx.BatchNorm):
      c = m.num_features
      m.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
      m.bias[...] = jnp.asarray(rng.normal(0, 0.1, c), jnp.float32)
      m.mean[...] = jnp.asarray(rng.normal(0, 0.1, c), jnp.float32)
      m.var[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
  return model


def _rel_err(got, ref):
  return float(np.max(np.abs(np.asarray(got) - np.asarray(ref))) / np.max(np.abs(np.asarray(ref))))


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_for_inference_gives_the_plain_models_logits(name):
  model = _trained_looking(name)
  x = jax.random.normal(jax.random.key(0), (4, 48, 48, 3))
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
  model.train()
  fast = models.for_inference(model)
  # The plain model, in eval mode, with XLA's own convolutions: the reference.
  plain = nnx.clone(model)
  plain.eval()
  with cpu_kernels.use("xla"):
    want = nnx.jit(lambda m, x: m(x))(plain, x)
  assert not any(isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_modules(fast))
  got = nnx.jit(lambda m, x: m(x))(fast, x)  # The CPU kernels (tested equal to XLA's apart).
  assert _rel_err(got, want) <= 1e-5, _rel_err(got, want)
  # The model it came from is untouched, still in train mode.
  after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
  jax.tree.map(np.testing.assert_array_equal, after, before)
  assert all(m.use_running_average is False for _, m in nnx.iter_modules(model)
             if isinstance(m, nnx.BatchNorm))
  # Taps see the same layers.
  assert models.layer_shapes(fast, 48) == models.layer_shapes(plain, 48)
