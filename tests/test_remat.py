"""Rematerialised blocks (`remat=True`): every block under remat, with the same gradients."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fakejax import checkpoint
from fakejax import models
from fakejax.models import cpu_kernels
from fakejax.models import layers

# Tiny models; how many blocks each rematerialises; one of its (smaller) blocks and the layer
# feeding it.
_TINY = {
    "xception": (dict(width=0.0625, middle_blocks=1), 5, lambda m: m.middle[0], "block3"),
    "resnet50": (dict(width=0.0625), 16, lambda m: m.stages[0][1], "layer1.0"),
    "mobilenet_v2": (dict(width=0.25), 17, lambda m: m.blocks[2], "block1"),
    "deepfd": (dict(width=0.0625), 6, lambda m: m.d1.blocks[1], "d1.block0"),
    "bit_resnet50": (dict(width=0.125), 16, lambda m: m.block1[1], "block1.0"),
}


def _abstract(name, **kw):
  return nnx.eval_shape(lambda: models.create(name, 3, dropout=0.0, **kw))


def _random(module, seed=0):
  """`module` (abstract) with random parameters and statistics, set without compiling initialisers."""
  rng = np.random.default_rng(seed)

  def fill(path, x):
    leaf = checkpoint.path_name(path).rsplit("/", 1)[-1]
    if leaf in ("scale", "var"):
      return rng.uniform(0.5, 1.5, x.shape).astype(x.dtype)
    if leaf in ("bias", "mean"):
      return rng.normal(0, 0.1, x.shape).astype(x.dtype)
    return (rng.normal(0, 1, x.shape) / np.sqrt(np.prod(x.shape[:-1]))).astype(x.dtype)

  graphdef, state = nnx.split(module)
  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


@pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types")  # float64 into float32 stats.
@pytest.mark.parametrize("name", sorted(_TINY))
def test_remat_every_block_with_the_same_gradients(name):
  # float64: the programs with and without remat fuse differently, so float32 sums may round
  # differently, and BiT's weight standardisation followed by GroupNorm amplifies that to ~1e-4
  # in the gradients. In float64 they agree (exactly, in fact). XLA's own kernels: they compile
  # faster than the CPU formulations, and remat does not depend on them.
  kw, blocks, block_of, before = _TINY[name]
  with jax.enable_x64(True), cpu_kernels.use("xla"):
    shapes = {}
    record = lambda n, a: shapes.update({n: a.shape}) or a
    models_ = [_abstract(name, dtype="float64", remat=remat, **kw) for remat in (False, True)]
    programs = [str(jax.make_jaxpr(lambda m, x: m(x, taps=record))(
        m, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float64))) for m in models_]
    assert [p.count("remat2[") for p in programs] == [0, blocks]

    x = jnp.asarray(np.random.default_rng(0).normal(size=shapes[before]))
    grads, stats = [], []
    for remat in (False, True):
      block = _random(block_of(models_[0]))  # The same parameters both times.
      block.train()  # BatchNorm normalises with, and updates, batch statistics inside remat.
      loss = lambda b, x: jnp.sum(jnp.sin(layers.call_block(b, x, remat)))
      g_block, g_x = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(block, x)
      grads.append(jax.tree.leaves(nnx.to_pure_dict(g_block)) + [g_x])
      stats.append(jax.tree.leaves(nnx.state(block, nnx.BatchStat)))
  scale = max(float(np.max(np.abs(g))) for g in grads[0])
  assert scale > 0
  for a, b in zip(*grads):  # Some gradients are 0 up to rounding (a bias before a BatchNorm).
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9 * scale)
  for a, b in zip(*stats):
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9)
