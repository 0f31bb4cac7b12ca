"""Optimizers and learning-rate schedules, from a config's `optim` block."""

import jax
import jax.numpy as jnp
import optax

from fakejax import cli
from fakejax.models import lora


def create_learning_rate_fn(optim, total_steps, steps_per_epoch=1):
  """constant / cosine / exponential / step decay from lr to end_lr, after a linear warmup.

  'cosine_annealing' is torch's CosineAnnealingLR with T_max = decay_every and eta_min = end_lr,
  stepped once per step and never stopped: end_lr + (lr - end_lr) (1 + cos(pi t / T_max)) / 2 at
  every step t, so that past T_max it rises again (a period of 2 T_max; DDA runs T_max=1000 for
  ~15k steps).

  Keys in epochs (warmup_epochs, decay_every_epochs, decay_begin_epochs), when set, count
  `steps_per_epoch` steps each. 'step' with decay_rate multiplies the lr by it every decay_every
  steps from decay_begin on (NPR: x0.9 at the start of epochs 11, 21, 31 and 41), never below
  end_lr; without decay_rate, it reaches end_lr at the end.
  """
  in_steps = lambda epochs, steps: round(epochs * steps_per_epoch) if epochs else steps
  warmup = in_steps(optim.warmup_epochs, optim.warmup_steps)
  steps = max(total_steps - warmup, 1)
  if optim.schedule == "constant":
    main = optax.constant_schedule(optim.lr)
  elif optim.schedule == "cosine":
    main = optax.cosine_decay_schedule(optim.lr, steps, alpha=optim.end_lr / optim.lr)
  elif optim.schedule == "cosine_annealing":
    main = _cosine_annealing(optim.lr, optim.end_lr, in_steps(optim.decay_every_epochs, optim.decay_every))
  elif optim.schedule in ("exponential", "step"):
    every = in_steps(optim.decay_every_epochs, optim.decay_every)
    every = (every or max(steps // 10, 1)) if optim.schedule == "step" else 1
    begin = in_steps(optim.decay_begin_epochs, 0)
    rate = optim.decay_rate or (optim.end_lr / optim.lr) ** (1 / max((steps - begin) // every, 1))
    main = optax.exponential_decay(optim.lr, every, rate, transition_begin=begin,
                                   staircase=optim.schedule == "step", end_value=optim.end_lr)
  else:
    raise cli.UserError(f"Unknown schedule {optim.schedule!r}; known: constant, cosine, cosine_annealing, "
                        "exponential, step")
  if not warmup:
    return main
  warm = optax.linear_schedule(0.0, optim.lr, warmup)
  return optax.join_schedules([warm, main], [warmup])


def _cosine_annealing(lr, end_lr, t_max):
  """torch's CosineAnnealingLR(T_max=t_max, eta_min=end_lr) in closed form, at every step."""
  if t_max < 1:
    raise cli.UserError("schedule 'cosine_annealing' needs optim.decay_every (torch's T_max) >= 1")
  return lambda step: end_lr + (lr - end_lr) * 0.5 * (1 + jnp.cos(jnp.pi * step / t_max))


def create_optimizer(optim, lr_fn):
  """optim.name's optimizer ('adam', 'adamw', 'sgd') with the schedule `lr_fn`.

  AdamW decays the parameters of two or more dimensions (kernels, LoRA factors) by
  optim.weight_decay, not biases or norms; DDA trains with weight_decay 0.
  """
  if optim.name == "adam":
    return optax.adam(lr_fn)
  if optim.name == "adamw":  # Decay on kernels only (ndim >= 2), not biases or BatchNorm: SAFE's and timm's groups.
    return optax.adamw(lr_fn, weight_decay=optim.weight_decay,
                       mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params))
  if optim.name == "sgd":
    return optax.sgd(lr_fn, momentum=optim.momentum or None)
  raise cli.UserError(f"Unknown optimizer {optim.name!r}; known: adam, adamw, sgd")


def create_adjustable_optimizer(optim, lr):
  """optim.name's optimizer at learning rate `lr`, which the caller may change between updates
  (opt_state.hyperparams['learning_rate']): the cached-feature probe's plateau rule."""
  return optax.inject_hyperparams(lambda learning_rate: create_optimizer(optim, learning_rate))(learning_rate=lr)


TRANSFER_MODES = ("finetune", "linear_probe", "freeze_bn", "lora")


def _unscaled(path):
  """Whether a parameter trains at the full rate under backbone_lr: the head's, a LoRA adapter's."""
  keys = [getattr(k, "key", None) for k in path]
  return keys[0] == "head" or any(k in lora.LEAVES for k in keys)


def create_transfer_optimizer(optim, lr_fn, backbone_lr):
  """The optimizer, with the backbone's learning rate scaled by `backbone_lr` (the head and the LoRA
  adapters, models.lora: unscaled)."""
  if backbone_lr == 1.0:
    return create_optimizer(optim, lr_fn)
  labels = lambda params: jax.tree_util.tree_map_with_path(
      lambda p, _: "head" if _unscaled(p) else "backbone", params)
  return optax.multi_transform(
      {"head": create_optimizer(optim, lr_fn),
       "backbone": create_optimizer(optim, lambda step: lr_fn(step) * backbone_lr)}, labels)
