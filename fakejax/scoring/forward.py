"""The one forward builder: a model's weights -> the jitted function every command scores with."""

from flax import nnx
import jax
import jax.numpy as jnp

from fakejax import models


def make_forward(model_def, preprocess, dtype, outputs=None):
  """The jitted eval forward: (model state, uint8 images[, valid]) -> logits (or a dict with them).

  `outputs(model, x, valid)` (the merged model, preprocessed inputs) replaces the plain logits
  (e.g. Grad-CAM's maps, a probe's features). With `valid` ((B, 2) sizes before padding), the
  global pools average each input's valid cells only (the View's size buckets).
  """
  dtype = jnp.dtype(models.resolve_dtype(dtype))
  outputs = outputs or (lambda model, x, valid: model(x, valid=valid))

  def forward(state, x, valid=None):
    return outputs(nnx.merge(model_def, state), models.preprocess(x, preprocess, dtype), valid)

  return jax.jit(forward)


class Folder:
  """The inference model of a model's weights: BatchNorm folded (models.for_inference; the same
  logits, tested per model) and its jitted forward (make_forward). One forward serves every
  state of the same model: validation after each epoch compiles once.

  Args:
    model_def: the plain eval-mode graph definition.
    preprocess: the input normalisation (models.resolve_preprocess).
    dtype: compute dtype.
  """

  def __init__(self, model_def, preprocess, dtype):
    self.model_def, self.preprocess, self.dtype = model_def, preprocess, dtype
    self.forward = None

  def __call__(self, state):
    """(jitted forward(state, x[, valid]), the folded state) of the plain model's `state`."""
    fast_def, folded = nnx.split(models.for_inference(nnx.merge(self.model_def, state)))
    if self.forward is None:
      self.forward = make_forward(fast_def, self.preprocess, self.dtype)
    return self.forward, folded
