"""How a model trains, plugged into the one loop: its stages, what each trains, with which loss.

  Standard     one stage, cross-entropy; model.transfer picks what trains ('finetune': all,
               'linear_probe': the head on frozen BatchNorm statistics, 'freeze_bn': all but
               the statistics, 'lora': the LoRA adapters and the head, the backbone frozen).
  Staged       DeepFD: stage 1 trains D1 with the pairwise contrastive loss, stage 2 D2 (and D1
               unless deepfd.freeze_d1) with cross-entropy; each stage its own optimizer.
  CachedProbe  the head alone on the frozen backbone's features, computed once and cached
               (UnivFD; training.probe): no step loop at all.

`for_config` picks one and reads the config keys it needs once; the loop (training.loop.run_steps),
TrainState and the step ask it, and none of them branches on the model.
"""

from flax import nnx
import jax.numpy as jnp

from fakejax import cli
from fakejax import models
from fakejax.models import lora
from fakejax.training import loop
from fakejax.training import losses
from fakejax.training import optim as optim_lib
from fakejax.training import probe


def freeze_batch_norm(model):
  """Every BatchNorm normalises with, and keeps, its running statistics (the rest unchanged)."""
  for _, m in nnx.iter_modules(model):
    if isinstance(m, nnx.BatchNorm):
      m.eval()


class Standard:
  """One stage (0) of `total_steps`, cross-entropy, model.transfer's parameters.

  Args:
    total_steps: the run's length.
    transfer: model.transfer, what trains (optim.TRANSFER_MODES).
    label_smoothing: the cross-entropy's.
    lora_rank: model.lora_rank (transfer 'lora' needs adapters).
  """

  def __init__(self, total_steps, transfer="finetune", label_smoothing=0.0, lora_rank=0):
    self.transfer, self.label_smoothing = transfer, label_smoothing
    if self.transfer not in optim_lib.TRANSFER_MODES:
      raise cli.UserError(f"Unknown model.transfer {self.transfer!r}; known: "
                          f"{', '.join(optim_lib.TRANSFER_MODES)}")
    if self.transfer == "lora" and not lora_rank:
      raise cli.UserError("model.transfer='lora' trains the LoRA adapters and the head: set model.lora_rank "
                          "> 0 (DINOv2 models), or model.transfer='linear_probe' for the head alone")
    self.stages = {0: total_steps}

  @property
  def final_stage(self):
    """The stage whose model is validated for the best checkpoint (an earlier one has no classifier yet)."""
    return max(self.stages)

  def wrt(self, stage):
    """The parameters stage `stage` trains: the gradient's and the optimizer's filter (the rest is
    left bit for bit as it was)."""
    del stage
    if self.transfer == "lora":
      return lora.TRAINABLE  # The adapters (LoRAParam) and the head.
    return nnx.All(nnx.Param, nnx.PathContains("head")) if self.transfer == "linear_probe" else nnx.Param

  def set_train_modes(self, model, stage):
    """Puts the model in the train/eval modes of `stage` (BatchNorm statistics that stay frozen)."""
    del stage
    model.train()
    if self.transfer in ("linear_probe", "freeze_bn", "lora"):
      freeze_batch_norm(model)

  def loss(self, stage, model, x, labels, key):
    """(mean loss, metrics) of preprocessed inputs `x` at `stage`; `key` seeds the dropout."""
    del stage
    logits = model(x, rngs=key)
    loss = losses.classification_loss(logits, labels, self.label_smoothing)
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

  def train(self, ctx):
    """Trains from ctx.meta['step']; returns (state, step, stop reason or None)."""
    return loop.run_steps(ctx, self)


class Staged(Standard):
  """DeepFD's two stages (configs/deepfd.py; deepfd.stage1_steps, stage2_steps replace the run's
  length): the contrastive D1, then D2 on D1's features.

  Args:
    stage1_steps, stage2_steps: each stage's length (deepfd.*).
    freeze_d1: stage 2 trains D2 alone (deepfd.freeze_d1).
    margin: the contrastive loss's (deepfd.margin).
    **kw: Standard's transfer (only 'finetune'), label_smoothing and lora_rank.
  """

  def __init__(self, stage1_steps, stage2_steps, *, freeze_d1, margin, **kw):
    super().__init__(stage1_steps + stage2_steps, **kw)
    if self.transfer != "finetune":
      raise cli.UserError("model.transfer applies to single-stage models; DeepFD freezes D1 with "
                          "deepfd.freeze_d1")
    self.first, self.second = models.deepfd.DeepFD.stages
    self.stages = {1: stage1_steps, 2: stage2_steps}
    self.freeze_d1, self.margin = freeze_d1, margin

  def wrt(self, stage):
    if stage == 1:
      return nnx.All(nnx.Param, nnx.PathContains(self.first))
    return nnx.All(nnx.Param, nnx.PathContains(self.second)) if self.freeze_d1 else nnx.Param

  def set_train_modes(self, model, stage):
    model.train()
    if stage == 2 and self.freeze_d1:
      model.d1.eval()  # Frozen: D1's BatchNorm statistics must not move either.

  def loss(self, stage, model, x, labels, key):
    if stage == 1:
      loss, d_same, d_other = losses.contrastive_loss(model.embed(x), labels, self.margin)
      return loss, {"dist_same": d_same, "dist_other": d_other}
    return super().loss(stage, model, x, labels, key)


class CachedProbe(Standard):
  """model.cached_features: the head trained on cached backbone features (training.probe)."""

  def __init__(self, total_steps, **kw):
    super().__init__(total_steps, **kw)
    if self.transfer != "linear_probe":
      raise cli.UserError("model.cached_features trains the head alone: set model.transfer='linear_probe'")

  def train(self, ctx):
    return probe.train(ctx)


def for_config(config, total_steps):
  """The strategy a config trains with, given the keys it reads (the one reader of them)."""
  m = config.model
  kw = dict(transfer=m.transfer, label_smoothing=config.label_smoothing, lora_rank=m.get("lora_rank", 0))
  if m.cached_features:
    return CachedProbe(total_steps, **kw)
  if models.get(m.name) is models.deepfd.DeepFD:
    fd = config.deepfd
    return Staged(fd.stage1_steps, fd.stage2_steps, freeze_d1=fd.freeze_d1, margin=fd.margin, **kw)
  return Standard(total_steps, **kw)
