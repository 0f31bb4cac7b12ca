"""The model that inference runs: the trained model rewritten to give the same logits with less work.

`for_inference(model)` is the one place evaluation, prediction and serving get it from:

- eval mode (running BatchNorm statistics, no dropout);
- every BatchNorm that an architecture declares in a module's FOLDS (pairs of a convolution and
  the BatchNorm applied directly to its output) folded into that convolution: its kernel scaled
  per output channel and a bias added, the BatchNorm replaced by the identity. An exact rewrite
  up to float rounding: the normalisation's multiply and its four per-channel vectors go.

How convolutions and pools then run is still chosen when the forward is traced, by the kernel
switch (cpu_kernels). docs/performance.md has what was measured, including the rewrites tried and
not kept (Winograd 3x3 convolutions).
"""

import functools

from flax import nnx
import jax
from jax import lax


class Identity(nnx.Module):
  """What replaces a folded BatchNorm."""

  def __call__(self, x):
    return x


def _get(module, path):
  for part in path.split("."):
    module = module[int(part)] if part.isdigit() else getattr(module, part)
  return module


def _set(module, path, value):
  parent, _, last = path.rpartition(".")
  owner = _get(module, parent) if parent else module
  if last.isdigit():
    owner[int(last)] = value
  else:
    setattr(owner, last, value)


def folded(kernel, conv_bias, bn, epsilon):
  """(kernel, bias) of the convolution whose output equals BatchNorm(eval) of conv(kernel)'s.

  BatchNorm in eval mode is (y - mean) * rsqrt(var + eps) * scale + bias per channel; the factor
  goes into the kernel's output channels (its last axis, depthwise kernels included) and the rest
  into the bias. `bn` is (scale, bias, mean, var); `conv_bias`, the scale and the bias may be None
  (absent).
  """
  bn_scale, bn_bias, mean, var = bn
  factor = lax.rsqrt(var + epsilon)
  if bn_scale is not None:
    factor = factor * bn_scale
  shift = -mean * factor
  if bn_bias is not None:
    shift = shift + bn_bias
  if conv_bias is not None:
    shift = shift + conv_bias * factor
  return kernel * factor, shift.astype(kernel.dtype)


@functools.partial(jax.jit, static_argnums=1)
def _fold_all(arrays, epsilons):
  # One compiled program for every pair: folding op by op eagerly compiles each op per shape.
  return [folded(a[0], a[1], a[2:], eps) for a, eps in zip(arrays, epsilons)]


def for_inference(model):
  """A copy of `model` for inference: eval mode, BatchNorm folded into the convolutions.

  Contract: for the same input it returns the logits of `model` in eval mode (relative error
  <= 1e-5 in float32, tested per architecture), through the same call (`x, *, rngs=None,
  taps=None`), with the same layer names and shapes for `taps`. `model` itself is left as it was.
  The copy is derived state: its parameter paths differ (conv biases, no BatchNorm), so it is
  not for training, checkpointing or weight conversion; build it again after the weights change.

  Args:
    model: a registered model with concrete weights (any mode).

  Returns:
    a new nnx.Module.
  """
  model = nnx.clone(model)
  model.eval()
  value = lambda v: None if v is None else v[...]
  pairs = [(module, _get(module, conv_path), bn_path, _get(module, bn_path))
           for _, module in nnx.iter_modules(model)
           for conv_path, bn_path in getattr(module, "FOLDS", ())]
  new = _fold_all([(conv.kernel[...], value(conv.bias), value(bn.scale), value(bn.bias), bn.mean[...],
                    bn.var[...]) for _, conv, _, bn in pairs], tuple(bn.epsilon for *_, bn in pairs))
  for (module, conv, bn_path, _), (kernel, bias) in zip(pairs, new):
    conv.kernel[...] = kernel
    conv.bias = nnx.Param(bias)
    conv.use_bias = True
    _set(module, bn_path, Identity())
  return model
