"""CPU formulations of convolutions and pools: equal to XLA's ops with gradients; one switch."""


from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from fakejax.models import cpu_kernels
from tests.conftest import TINY_MODELS
from tests.conftest import tiny_model

_NHWC = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x, w, strides, padding, groups):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC,
                                  feature_group_count=groups)


def _assert_matches_xla_with_gradients(fn, x_shape, w_shape, stride, padding, groups=1):
  """`fn(x, w, strides, padding)` against XLA's convolution: outputs and both gradients."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x, w = jax.random.normal(k1, x_shape), jax.random.normal(k2, w_shape)
  ref, ref_vjp = jax.vjp(lambda x, w: _xla_conv(x, w, (stride, stride), padding, groups), x, w)
  got, got_vjp = jax.vjp(lambda x, w: fn(x, w, (stride, stride), padding), x, w)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  ct = jax.random.normal(k3, ref.shape)
  for g, r in zip(got_vjp(ct), ref_vjp(ct)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk_bytes", [None, 1, 1500], ids=["whole_images", "row_by_row", "row_blocks"])
@pytest.mark.parametrize("stride,padding", [(1, "SAME"), (2, "SAME"), (1, "VALID"), (2, ((1, 2), (0, 1)))])
def test_shifted_depthwise_matches_xla_with_gradients(stride, padding, chunk_bytes, monkeypatch):
  if chunk_bytes:  # The filter gradient walks blocks of output rows that fit this many bytes.
    monkeypatch.setattr(cpu_kernels, "FILTER_GRAD_CHUNK_BYTES", chunk_bytes)
  _assert_matches_xla_with_gradients(cpu_kernels.shifted_depthwise_conv, (2, 12, 9, 6), (3, 3, 1, 6),
                                     stride, padding, groups=6)


@pytest.mark.parametrize("stride,padding", [(1, "SAME"), (2, "SAME"), (2, "VALID"), (1, ((1, 0), (0, 2)))])
def test_matmul_pointwise_conv_matches_xla_with_gradients(stride, padding):
  _assert_matches_xla_with_gradients(cpu_kernels.matmul_pointwise_conv, (2, 9, 7, 5), (1, 1, 5, 6),
                                     stride, padding)


@pytest.mark.parametrize("formulation", ["cpu", "xla"])
@pytest.mark.parametrize("kernel,groups,stride", [(1, 1, 2), (3, 1, 1), (3, 5, 2), (3, 5, 1)])
def test_conv_switch_picks_the_formulation(formulation, kernel, groups, stride):
  """Under 'cpu' depthwise and 1x1 convolutions become slices and dots; under 'xla' XLA's op."""
  w_shape = (kernel, kernel, 5 // groups, 5)
  x, w = jax.random.normal(jax.random.key(0), (2, 9, 7, 5)), jax.random.normal(jax.random.key(1), w_shape)
  fn = lambda x, w: cpu_kernels.conv(x, w, (stride, stride), "SAME", dimension_numbers=_NHWC,
                                     feature_group_count=groups)
  with cpu_kernels.use(formulation):
    got = fn(x, w)  # Gradients: the formulations' own tests above.
    jaxpr = str(jax.make_jaxpr(fn)(x, w))
  np.testing.assert_allclose(got, _xla_conv(x, w, (stride, stride), "SAME", groups), rtol=1e-5, atol=1e-5)
  rewritten = formulation == "cpu" and (kernel == 1 or groups > 1)
  assert ("conv_general_dilated" in jaxpr) != rewritten, jaxpr


def _xla_max_pool(x, window=3, stride=2, padding="SAME"):
  return nnx.max_pool(x, (window, window), (stride, stride), padding=padding)


@pytest.mark.parametrize("size,padding", [(9, "SAME"), (8, "SAME"), (8, ((1, 1), (1, 1)))])
def test_max_pool_matches_xla_with_gradients_and_ties(size, padding):
  # Few distinct values, so most windows hold their max more than once: the gradient must go to
  # the same (first) input as XLA's select-and-scatter, or some error would be of order 1.
  x = jax.random.randint(jax.random.key(0), (2, size, size + 1, 3), 0, 4).astype(jnp.float32)
  with cpu_kernels.use("cpu"):
    y, got_vjp = jax.vjp(lambda x: cpu_kernels.max_pool(x, 3, 2, padding), x)
  want, ref_vjp = jax.vjp(lambda x: _xla_max_pool(x, 3, 2, padding), x)
  np.testing.assert_array_equal(y, want)
  ct = jax.random.normal(jax.random.key(1), y.shape)
  np.testing.assert_allclose(got_vjp(ct)[0], ref_vjp(ct)[0], rtol=0, atol=1e-6)


def test_the_switch_is_read_at_trace_time_and_keys_the_jit_cache():
  f = jax.jit(lambda x, w: cpu_kernels.conv(x, w, (1, 1), "SAME", dimension_numbers=_NHWC))
  x, w = jnp.ones((1, 4, 4, 3)), jnp.ones((1, 1, 3, 2))
  texts = {}
  for formulation in ("cpu", "xla", "cpu"):  # The same jitted function, traced again each time.
    with cpu_kernels.use(formulation):
      texts.setdefault(formulation, []).append(f.lower(x, w).as_text())
      assert cpu_kernels.kernels() == formulation
  assert "dot_general" in texts["cpu"][0] and "convolution" not in texts["cpu"][0]
  assert "convolution" in texts["xla"][0] and "dot_general" not in texts["xla"][0]
  assert texts["cpu"][0] == texts["cpu"][1]
  with cpu_kernels.use("auto"):
    assert cpu_kernels.kernels() == "cpu"  # These tests run on the CPU backend.
  with pytest.raises(ValueError, match="known: auto, cpu, xla"):
    with cpu_kernels.use("gpu"):
      pass


# Tiny models of each kind: every CPU formulation they use (depthwise stride 1 and 2, 1x1 stride 1
# and 2, max pool with SAME and explicit padding) against the graph a GPU runs.
@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_cpu_and_xla_formulations_give_the_same_model(name):
  """One built model, one jitted function, traced under each formulation: logits and gradients.

  Gradients for Xception only, which has every CPU formulation (depthwise with its own filter
  gradient, 1x1 at strides 1 and 2, the tap-index max pool): compiling the other models'
  gradients twice takes minutes on a 2-core machine, and each formulation's gradient is also
  tested against XLA's above. Eval mode: with batch statistics, BatchNorm over a 1x1 map of 4
  examples would amplify rounding differences into the percent range.
  """
  model = tiny_model(name)
  model.eval()
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  with_grads = name == "xception"

  @nnx.jit
  def logits_and_grads(model, x):
    if not with_grads:
      return model(x), None
    def loss(m):
      logits = m(x)
      return jnp.sum(logits**2), logits
    (_, logits), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    return logits, grads

  out = {}
  for formulation in ("cpu", "xla"):
    with cpu_kernels.use(formulation):
      logits, grads = logits_and_grads(model, x)
      out[formulation] = logits, [] if grads is None else jax.tree.leaves(nnx.to_pure_dict(grads))
  np.testing.assert_allclose(out["cpu"][0], out["xla"][0], rtol=1e-4, atol=1e-5)
  if with_grads:
    assert len(out["cpu"][1]) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    # A dropped or misrouted gradient (as a max pool's once was under jit) is of order 1 here.
    scale = max(float(np.abs(g).max()) for g in out["xla"][1])
    for a, b in zip(out["cpu"][1], out["xla"][1]):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale)


def test_auto_follows_the_platform_lowered_for_not_the_host():
  """Exported for CUDA from this CPU host, 'auto' gives XLA's ops (a grouped convolution, a 1x1
  convolution, the max pool's select_and_scatter gradient); lowered for the CPU, the CPU
  formulations."""
  def f(x, dw, pw):
    y = cpu_kernels.conv(x, dw, (1, 1), "SAME", dimension_numbers=_NHWC, feature_group_count=3)
    y = cpu_kernels.conv(y, pw, (1, 1), "SAME", dimension_numbers=_NHWC)
    return cpu_kernels.max_pool(y, 3, 2, "SAME").sum()

  args = (jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 1, 3)), jnp.ones((1, 1, 3, 4)))
  with cpu_kernels.use("auto"):
    texts = {p: jax.export.export(jax.jit(jax.grad(f, argnums=(0, 1, 2))), platforms=[p])(*args).mlir_module()
             for p in ("cuda", "cpu")}
  gpu, cpu = texts["cuda"], texts["cpu"]
  assert "feature_group_count = 3 :" in gpu and "select_and_scatter" in gpu
  assert "feature_group_count = 3 :" not in cpu and "select_and_scatter" not in cpu
  assert "custom_call" not in gpu  # No host callbacks in the GPU graph.
