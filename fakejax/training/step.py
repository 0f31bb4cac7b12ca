"""The update step: one jitted, donating function per stage."""

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from fakejax import models


def _micro_batches(x, k):
  """(B, ...) -> (k, B/k, ...): micro-batch m takes rows m, m+k, ..., so every device holds
  an equal share of each micro-batch (rows are laid out device by device)."""
  return x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)


def make_train_step(ts, stage=0):
  """The jitted, donating update step of a stage: (state, batch[, seed]) -> (state, metrics).

  The loss is the strategy's for the stage (ts.strategy.loss). `seed` (default: the run's, ts.seed)
  seeds the dropout masks; passed as an argument it is traced, so runs that differ only in their
  seed reuse one compiled program.

  With optim.accumulate_steps = k > 1 (ts.accumulate_steps) the batch is split into k
  micro-batches whose gradients are averaged before one update (the same update as the whole
  batch when nothing depends on the batch composition; BatchNorm statistics do): activations of
  a micro-batch at a time, for high-resolution inputs.
  """
  dtype = jnp.dtype(ts.dtype)
  opt_name = ts.optimizer_name(stage)
  accumulate = ts.accumulate_steps
  wrt = ts.strategy.wrt(stage)

  def train_step(state, batch, seed=ts.seed):
    modules = nnx.merge(ts.train_defs[stage], state)
    model, opt = modules["model"], modules[opt_name]
    # Dropout randomness is a function of (seed, step): a resumed run draws the same masks.
    dropout_key = jax.random.fold_in(jax.random.key(seed), opt.step[...])

    def loss_fn(model, x, labels, key):
      return ts.strategy.loss(stage, model, models.preprocess(x, ts.preprocess, dtype), labels, key)

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=True)
    if accumulate == 1:
      (loss, aux), grads = grad_fn(model, batch["image"], batch["label"], dropout_key)
    else:
      xs = (_micro_batches(batch["image"], accumulate), _micro_batches(batch["label"], accumulate),
            jax.random.split(dropout_key, accumulate))

      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
      def micro(carry, x):
        model, total = carry
        (loss, aux), g = grad_fn(model, *x)
        return (model, jax.tree.map(jnp.add, total, g)), (loss, aux)

      zeros = jax.tree.map(jnp.zeros_like, nnx.state(model, wrt))
      (_, grads), (losses, auxs) = micro((model, zeros), xs)
      grads = jax.tree.map(lambda g: g / accumulate, grads)
      loss, aux = losses.mean(), jax.tree.map(jnp.mean, auxs)
    lr = ts.lr_fns[stage](opt.step[...])
    opt.update(model, grads)
    out = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr, **aux}
    return nnx.state(modules), out

  return jax.jit(train_step, donate_argnums=0, out_shardings=(ts.replicated, ts.replicated))
