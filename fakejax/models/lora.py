"""Low-rank adapters (LoRA, Hu et al. 2021) on linear layers of a frozen backbone.

`LoRALinear` is an nnx.Linear (its `kernel` and `bias` where an nnx.Linear has them, so weight files
load unchanged) plus two low-rank factors `lora_a` (in, rank) and `lora_b` (rank, out):

  y = x @ kernel + bias + (alpha / rank) * (x @ lora_a) @ lora_b

as DDA's LoRALayer (roy-ch/Dual-Data-Alignment, Training/models/lora.py): A kaiming-uniform with
a = sqrt(5) (uniform in +-1/sqrt(in), also peft's default), B zeros (the adapted layer starts as the
base layer), no dropout. DDA stores A as (rank, in) and B as (out, rank): ours are their transposes.

The factors are `LoRAParam`s, an nnx.Param subclass: `nnx.Param` still selects them (a full
finetune trains them too), and `TRAINABLE` selects the adapters and the head alone, the backbone
frozen (DDA's get_trainable_params: LoRA + fc). Pass it as the optimizer's and the gradient's `wrt`.
"""

from flax import nnx
import jax
import jax.numpy as jnp


class LoRAParam(nnx.Param):
  """A low-rank adapter factor (lora_a, lora_b): what trains on a frozen backbone."""


# The parameters that train on a frozen backbone: the adapters and the classifier head.
TRAINABLE = nnx.Any(LoRAParam, nnx.All(nnx.Param, nnx.PathContains("head")))
LEAVES = ("lora_a", "lora_b")  # The adapters' parameter names (the last component of their paths).


def is_lora(path_name):
  """Whether a parameter path ('blocks/0/qkv/lora_a') names an adapter factor."""
  return path_name.rsplit("/", 1)[-1] in LEAVES


class LoRALinear(nnx.Linear):
  """nnx.Linear + (alpha / rank) * x @ lora_a @ lora_b (module docstring)."""

  def __init__(self, in_features, out_features, *, rank, alpha, rngs, **kwargs):
    if rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    super().__init__(in_features, out_features, rngs=rngs, **kwargs)
    self.rank, self.alpha = rank, alpha
    bound = in_features**-0.5  # kaiming_uniform_(a=sqrt(5)): gain sqrt(1/3) * sqrt(3 / fan_in).
    a = jax.random.uniform(rngs.params(), (in_features, rank), jnp.float32, -bound, bound)
    self.lora_a = LoRAParam(a)
    self.lora_b = LoRAParam(jnp.zeros((rank, out_features), jnp.float32))

  def delta(self, x):
    """The adapter's term (alpha / rank) * x @ lora_a @ lora_b, in the layer's compute dtype."""
    dtype = self.dtype or x.dtype
    a, b = self.lora_a[...].astype(dtype), self.lora_b[...].astype(dtype)
    return (x.astype(dtype) @ a @ b) * jnp.asarray(self.alpha / self.rank, dtype)

  def __call__(self, x):
    return super().__call__(x) + self.delta(x)


def linear(name, cin, cout, *, lora=None, **kwargs):
  """An nnx.Linear, or a LoRALinear when `lora` = (rank, alpha, targets) names `name` in targets."""
  if lora is not None and lora[0] and name in lora[2]:
    return LoRALinear(cin, cout, rank=lora[0], alpha=lora[1], **kwargs)
  return nnx.Linear(cin, cout, **kwargs)
