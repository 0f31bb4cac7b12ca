r"""Trains a fake-image detector, data-parallel over every device of every process.

  python -m fakejax.train --config configs/xception.py[:variant] [--workdir runs/NAME] \
      [--config.data.dir=PREPARED_DATASET] [--config.key=value ...]

Rerunning the same command resumes from the last checkpoint in the workdir (a changed config
is refused, naming the keys); a finished run reports and exits. Exit status: 0 finished,
75 (EX_TEMPFAIL) stopped by SIGTERM with a checkpoint written (requeue it), 1 error.

Several hosts: start one process per host (or per GPU) with jax.distributed's environment
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; SLURM and Open MPI are detected)
or --coordinator_address/--num_processes/--process_id; see docs/multihost.md.
"""

import json
import os
import sys
import time
import types

from absl import flags
from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax
import tqdm

from fakejax import checkpoint
from fakejax import cli
from fakejax import convert
from fakejax import datasets
from fakejax import evaluator
from fakejax import input_pipeline
from fakejax import loop
from fakejax import models
from fakejax import probe
from fakejax import report
from fakejax import sharding

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped with a checkpoint written; rerun to resume.
TrainingError = loop.TrainingError
# Config keys that may change between a run and its resumption (they do not change results).
OPERATIONAL_KEYS = ("data.workers", "data.cache_dir", "log_every_steps", "keep_checkpoints",
                    "checkpoint_every_steps", "checkpoint_every_minutes", "eval_batch_size",
                    "eval_threads", "data.read_threads", "data.prefetch", "profile_steps")

# ---------------------------------------------------------------------------
# Model and optimizer.
# ---------------------------------------------------------------------------
def create_learning_rate_fn(optim, total_steps, steps_per_epoch=1):
  """constant / cosine / exponential / step decay from lr to end_lr, after a linear warmup.

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
  elif optim.schedule in ("exponential", "step"):
    every = in_steps(optim.decay_every_epochs, optim.decay_every)
    every = (every or max(steps // 10, 1)) if optim.schedule == "step" else 1
    begin = in_steps(optim.decay_begin_epochs, 0)
    rate = optim.decay_rate or (optim.end_lr / optim.lr) ** (1 / max((steps - begin) // every, 1))
    main = optax.exponential_decay(optim.lr, every, rate, transition_begin=begin,
                                   staircase=optim.schedule == "step", end_value=optim.end_lr)
  else:
    raise cli.UserError(f"Unknown schedule {optim.schedule!r}; known: constant, cosine, exponential, step")
  if not warmup:
    return main
  warm = optax.linear_schedule(0.0, optim.lr, warmup)
  return optax.join_schedules([warm, main], [warmup])


def create_optimizer(optim, lr_fn):
  if optim.name == "adam":
    return optax.adam(lr_fn)
  if optim.name == "adamw":  # Decay on kernels only (ndim >= 2), not biases or BatchNorm: SAFE's and timm's groups.
    return optax.adamw(lr_fn, weight_decay=optim.weight_decay,
                       mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params))
  if optim.name == "sgd":
    return optax.sgd(lr_fn, momentum=optim.momentum or None)
  raise cli.UserError(f"Unknown optimizer {optim.name!r}; known: adam, adamw, sgd")


TRANSFER_MODES = ("finetune", "linear_probe", "freeze_bn")


def _is_head(path):
  return getattr(path[0], "key", None) == "head"


def create_transfer_optimizer(optim, lr_fn, backbone_lr):
  """The optimizer, with the backbone's learning rate scaled by `backbone_lr` (head: unscaled)."""
  if backbone_lr == 1.0:
    return create_optimizer(optim, lr_fn)
  labels = lambda params: jax.tree_util.tree_map_with_path(
      lambda p, _: "head" if _is_head(p) else "backbone", params)
  return optax.multi_transform(
      {"head": create_optimizer(optim, lr_fn),
       "backbone": create_optimizer(optim, lambda step: lr_fn(step) * backbone_lr)}, labels)


def freeze_batch_norm(model):
  """Every BatchNorm normalises with, and keeps, its running statistics (the rest unchanged)."""
  for _, m in nnx.iter_modules(model):
    if isinstance(m, nnx.BatchNorm):
      m.eval()


def classification_loss(logits, labels, label_smoothing=0.0):
  """Mean cross-entropy; with `label_smoothing` a, against (1 - a) one-hot + a / classes
  (PyTorch's CrossEntropyLoss(label_smoothing=a), timm's LabelSmoothingCrossEntropy)."""
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  target = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, target).mean()


def contrastive_loss(embeddings, labels, margin):
  """DeepFD's pairwise contrastive loss over every pair of the (global) batch.

  For a pair, p = 1 when both labels agree, E = ||e_i - e_j||_2 and the loss is
  0.5 * (p * E^2 + (1 - p) * max(0, margin - E)^2). Same-label and different-label
  pairs are averaged separately and the two means weighted equally, so both kinds
  count the same in every step whatever the batch's class mix.

  Returns:
    (loss, mean distance of same-label pairs, mean distance of different-label pairs).
  """
  diff = embeddings[:, None, :] - embeddings[None, :, :]
  dist = jnp.sqrt(jnp.sum(diff**2, -1) + 1e-12)
  n = labels.shape[0]
  off_diag = ~jnp.eye(n, dtype=bool)
  same = (labels[:, None] == labels[None, :]) & off_diag
  other = labels[:, None] != labels[None, :]
  mean = lambda v, m: jnp.sum(jnp.where(m, v, 0.0)) / jnp.maximum(jnp.sum(m), 1)
  loss = 0.5 * (mean(dist**2, same) + mean(jnp.maximum(margin - dist, 0.0) ** 2, other))
  return loss, mean(dist, same), mean(dist, other)


class TrainState:
  """The graph definitions of a (model, optimizers) collection, per training stage and for eval.

  The arrays live in a separate nnx.State pytree, replicated over the mesh, so
  the jitted steps are pure functions of it and it can be donated. Most models
  train in one stage (stage 0). A model with `stages` (DeepFD) trains its first
  parameter group with the contrastive loss (stage 1), then its second with
  cross-entropy (stage 2), each with its own optimizer.
  """

  def __init__(self, config, num_classes, total_steps, mesh, steps_per_epoch=1):
    self.config = config
    self.replicated = sharding.replicated(mesh)
    self.preprocess = models.resolve_preprocess(config.model.name, config.model.preprocess,
                                                 front=config.model.front)
    staged = models.get(config.model.name) is models.deepfd.DeepFD
    fd, transfer = config.deepfd, config.model.transfer
    if transfer not in TRANSFER_MODES:
      raise cli.UserError(f"Unknown model.transfer {transfer!r}; known: {', '.join(TRANSFER_MODES)}")
    if staged and transfer != "finetune":
      raise cli.UserError("model.transfer applies to single-stage models; DeepFD freezes D1 with "
                          "deepfd.freeze_d1")
    if staged:
      first, second = models.deepfd.DeepFD.stages
      self.stage_steps = {1: fd.stage1_steps, 2: fd.stage2_steps}
      self.wrt = {1: nnx.All(nnx.Param, nnx.PathContains(first)),
                  2: nnx.All(nnx.Param, nnx.PathContains(second)) if fd.freeze_d1 else nnx.Param}
    else:
      self.stage_steps = {0: total_steps}
      self.wrt = {0: nnx.All(nnx.Param, nnx.PathContains("head")) if transfer == "linear_probe"
                  else nnx.Param}
    self.lr_fns = {k: create_learning_rate_fn(config.optim, n, steps_per_epoch) for k, n in self.stage_steps.items()}

    def init(seed):
      model = models.from_config(config.model, num_classes, seed=jax.random.key(seed))
      return {"model": model, **{self.optimizer_name(k): nnx.Optimizer(
          model, create_transfer_optimizer(config.optim, self.lr_fns[k], config.model.backbone_lr),
          wrt=self.wrt[k]) for k in self.stage_steps}}

    modules = nnx.eval_shape(lambda: init(config.seed))
    self.train_defs = {}
    for k in self.stage_steps:
      modules["model"].train()
      if k == 2 and fd.freeze_d1:
        modules["model"].d1.eval()  # Frozen: D1's BatchNorm statistics must not move either.
      if transfer in ("linear_probe", "freeze_bn"):
        freeze_batch_norm(modules["model"])
      self.train_defs[k], abstract = nnx.split(modules)
    modules["model"].eval()
    self.model_def, _ = nnx.split(modules["model"])
    self.abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), abstract)
    # Created directly on every device with its final sharding, never on one and copied. The
    # seed is an argument, not a constant: runs that differ only in their seed share one program.
    init_state = jax.jit(lambda seed: nnx.state(init(seed)), out_shardings=self.replicated)
    self.init = lambda: init_state(config.seed)

  @property
  def total_steps(self):
    return sum(self.stage_steps.values())

  @staticmethod
  def optimizer_name(stage):
    return "optimizer" if stage in (0, 1) else f"optimizer_stage{stage}"

  def stage_at(self, step):
    """The stage that trains step `step` (0-based)."""
    for k, n in self.stage_steps.items():
      if step < n:
        return k
      step -= n
    return k


# ---------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------
def _micro_batches(x, k):
  """(B, ...) -> (k, B/k, ...): micro-batch m takes rows m, m+k, ..., so every device holds
  an equal share of each micro-batch (rows are laid out device by device)."""
  return x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)


def make_train_step(ts, stage=0):
  """The jitted, donating update step of a stage: (state, batch[, seed]) -> (state, metrics).

  `seed` (default: the config's) seeds the dropout masks; passed as an argument it is traced,
  so runs that differ only in their seed reuse one compiled program.

  With optim.accumulate_steps = k > 1 the batch is split into k micro-batches whose
  gradients are averaged before one update (the same update as the whole batch when nothing
  depends on the batch composition; BatchNorm statistics do): activations of a micro-batch
  at a time, for high-resolution inputs.
  """
  cfg = ts.config
  dtype = jnp.dtype(models.resolve_dtype(cfg.model.dtype))
  opt_name = ts.optimizer_name(stage)
  accumulate = max(cfg.optim.accumulate_steps, 1)

  def train_step(state, batch, seed=cfg.seed):
    modules = nnx.merge(ts.train_defs[stage], state)
    model, opt = modules["model"], modules[opt_name]
    # Dropout randomness is a function of (seed, step): a resumed run draws the same masks.
    # Passed as an argument (the loop does), the seed is traced: one program for every seed.
    dropout_key = jax.random.fold_in(jax.random.key(seed), opt.step[...])

    def loss_fn(model, x, labels, key):
      x = models.preprocess(x, ts.preprocess, dtype)
      if stage == 1:
        loss, d_same, d_other = contrastive_loss(model.embed(x), labels, cfg.deepfd.margin)
        return loss, {"dist_same": d_same, "dist_other": d_other}
      logits = model(x, rngs=key)
      loss = classification_loss(logits, labels, cfg.label_smoothing)
      return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, ts.wrt[stage]), has_aux=True)
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

      zeros = jax.tree.map(jnp.zeros_like, nnx.state(model, ts.wrt[stage]))
      (_, grads), (losses, auxs) = micro((model, zeros), xs)
      grads = jax.tree.map(lambda g: g / accumulate, grads)
      loss, aux = losses.mean(), jax.tree.map(jnp.mean, auxs)
    lr = ts.lr_fns[stage](opt.step[...])
    opt.update(model, grads)
    out = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr, **aux}
    return nnx.state(modules), out

  return jax.jit(train_step, donate_argnums=0, out_shardings=(ts.replicated, ts.replicated))


def evaluate_split(fold, model_state, mesh, dataset, config, split, indices, desc=None):
  """Metrics of the model on some records of a split (the evaluator's 'full' view), scored by
  the inference model (evaluator.Folder: BatchNorm folded) like evaluate/predict/serve."""
  key = input_pipeline.label_key(config.data)
  forward, state = fold(model_state)
  ev = evaluator.Evaluator(lambda x, valid=None: forward(state, x, valid), mesh,
                           config.eval_batch_size or config.batch_size, config.data.image_size,
                           threads=config.eval_threads)
  view = evaluator.View("full", crop=config.data.image_size, resize=config.data.eval_resize,
                        too_small=config.data.too_small)
  sizes, load = evaluator.dataset_reader(dataset, split, indices)
  bar = tqdm.tqdm(total=len(indices), desc=desc, unit="img", leave=False,
                  disable=desc is None or not sharding.is_main())
  results = ev.run(sizes, load, view, threshold=config.threshold,
                   progress=lambda n: bar.update(n - bar.n))
  bar.close()
  labels = dataset.index(split)[key][indices]
  class_names = dataset.class_names if config.data.task == "attribution" else ("real", "fake")
  return evaluator.set_metrics(results, labels, class_names, view, config.threshold)


# ---------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------
def _flat_config(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat_config(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = list(v) if isinstance(v, tuple) else v
  return out


def check_same_run(workdir, config_json):
  """Refuses to resume a run whose saved config differs (other than OPERATIONAL_KEYS)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = _flat_config(json.load(f))
  new = _flat_config(json.loads(config_json))
  diff = [f"{k}: {saved.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
          for k in sorted(set(saved) | set(new))
          if k not in OPERATIONAL_KEYS and saved.get(k) != new.get(k)]
  if diff:
    raise TrainingError(f"{workdir} holds a run with another config; resuming it would mix two runs. "
                        f"Use another --workdir, or the saved values. Differences: {'; '.join(diff)}")


def _atomic_write(path, text):
  """Writes the whole file or, if killed, leaves the old one: never a torn file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _atomic_json(path, obj):
  _atomic_write(path, json.dumps(obj, indent=2))


# ---------------------------------------------------------------------------
# The phases of a run: open data -> state -> restore or init -> loop -> finalize.
# ---------------------------------------------------------------------------
class Data(types.SimpleNamespace):
  """What the run reads: dataset, classes, validation records, steps per epoch, the train iterator."""


def open_data(config):
  """The dataset and its validation records, checked before any step."""
  if sharding.is_main():  # The synthetic benchmark is generated once, by process 0, while the others wait.
    dataset = datasets.open_dataset(config.data)
  sharding.barrier("dataset")
  if not sharding.is_main():
    dataset = datasets.open_dataset(config.data)
  d = config.data
  num_classes = input_pipeline.num_classes(dataset, d)
  class_names = dataset.class_names if d.task == "attribution" else ("real", "fake")
  # Checked before the first step: a dataset without validation fails now, not after an epoch.
  val_split, val_pool = input_pipeline.validation_source(dataset, d)
  val_idx = dataset.select(val_split, tuple(d.train_sources), tuple(d.train_categories),
                           tuple(d.exclude_categories))
  if val_pool is not None:
    val_idx = np.intersect1d(val_idx, val_pool)
  if d.patches_per_image and config.batch_size % d.patches_per_image:
    raise cli.UserError(f"batch_size {config.batch_size} must be a multiple of patches_per_image "
                        f"{d.patches_per_image}")
  images_per_step = config.batch_size // max(d.patches_per_image, 1)
  steps_per_epoch = max(len(input_pipeline.train_indices(dataset, d)) // images_per_step, 1)
  run_info = {  # What evaluate/predict need to load the run (run.json).
      "num_classes": num_classes, "class_names": list(class_names),
      "dataset": os.path.abspath(dataset.path), "task": d.task,
      "validation": {"split": val_split, "val_fraction": d.val_fraction if val_pool is not None else 0.0,
                     "n": int(len(val_idx))}}
  train_iter = input_pipeline.make_train_iter(dataset, d, config.aug, images_per_step, d.seed)
  return Data(dataset=dataset, num_classes=num_classes, class_names=class_names, val_split=val_split,
              val_idx=val_idx, images_per_step=images_per_step, steps_per_epoch=steps_per_epoch,
              train_iter=train_iter, run_info=run_info)


def restore_or_init(config, ts, ckpt, train_iter):
  """(state, meta): the last checkpoint (repairing a missing best-model save), or a new state."""
  restored = ckpt.restore_latest(ts.abstract, train_iter)
  if restored:
    state, meta = restored
    logging.info("Resumed from step %d", meta["step"])
    if meta.get("best_step") == meta["step"] and meta["step"] not in ckpt.best_steps():
      # A crash came between this step's checkpoint and its best-model save: save it now.
      ckpt.save_best(meta["step"], state["model"], {"step": meta["step"], "val": meta.get("best_val")})
    return state, meta
  state = ts.init()
  if config.model.init_from:
    weights, _ = convert.load_pretrained(config.model.init_from, config.model.name)
    convert.init_model_state(state["model"], weights, f"init_from {config.model.init_from}")
    state = jax.device_put(state, ts.replicated)
    logging.info("Initialised from %s", config.model.init_from)
  return state, {"step": 0}


def validation_fn(fold, mesh, data, config):
  """model state -> validation metrics, through the forward evaluate/predict/serve score with."""
  return lambda model_state: evaluate_split(fold, model_state, mesh, data.dataset, config, data.val_split,
                                            data.val_idx)


class _TrainLog:
  """Device metrics of the steps since the last log, fetched together; NaN is an error."""

  def __init__(self, log, bar, images_per_step, step):
    self.log, self.bar, self.images_per_step = log, bar, images_per_step
    self.pending, self.t_last, self.s_last = [], time.perf_counter(), step
    self.data_s = 0.0  # Time waiting for the input pipeline since the last log.

  def add(self, step, metrics, data_s):
    self.pending.append((step, metrics))
    self.data_s += data_s

  def flush(self, saved_step):
    if not self.pending:
      return
    rows = [{"step": s, **{k: float(v) for k, v in m.items()}} for s, m in jax.device_get(self.pending)]
    self.pending.clear()
    for r in rows:
      if not np.isfinite(r["loss"]):
        raise TrainingError(f"Loss is {r['loss']} at step {r['step']}: training stopped, no "
                            f"checkpoint written after step {saved_step}. Lower optim.lr or "
                            "check the data.")
    now = time.perf_counter()
    dt, n = now - self.t_last, rows[-1]["step"] - self.s_last
    self.t_last, self.s_last = now, rows[-1]["step"]
    speed = {"step_time": dt / max(n, 1), "data_wait_time": self.data_s / max(n, 1),
             "img_per_s": n * self.images_per_step / max(dt, 1e-9)}
    self.data_s = 0.0
    rows[-1].update(speed)
    self.log.log(rows, "train")
    self.bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", step_s=f"{speed['step_time']:.3f}",
                         img_s=f"{speed['img_per_s']:.0f}")


def train_loop(config, ts, data, state, meta, ckpt, log, schedule, best, evaluate_fn, preempt, mesh):
  """Steps from meta['step'] to the end, an early stop or a stop request.

  Returns:
    (state, step, stop reason or None).
  """
  main = sharding.is_main()
  step = meta["step"]
  train_steps = {k: make_train_step(ts, k) for k in ts.stage_steps}  # Each compiles on first use.
  final_stage = max(ts.stage_steps)  # The stage whose model is evaluated and kept as best.
  bar = tqdm.tqdm(total=ts.total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                  disable=not main)
  train_log = _TrainLog(log, bar, data.images_per_step, step)
  stop_reason = meta.get("stopped")
  saved_step = step

  def save():
    nonlocal saved_step
    train_log.flush(saved_step)  # Raises on NaN: a NaN state is never saved.
    meta.update(step=step, checkpoint_interval_steps=schedule.minutes_interval, **best.meta())
    ckpt.save(step, state, data.train_iter, dict(meta))
    if best.best_step == step:  # After the checkpoint that records it (see restore_or_init).
      ckpt.save_best(step, state["model"], {"step": step, "val": best.best_val})
    saved_step = step

  profile = loop.parse_steps(config.profile_steps)
  with jax.set_mesh(mesh):
    while step < ts.total_steps and not stop_reason:
      if profile and step == profile[0]:  # A decision on the step: every process traces the same steps.
        loop.start_trace(os.path.join(ckpt.workdir, "profile"))
      t0 = time.perf_counter()
      host = next(data.train_iter)
      batch = sharding.to_global(mesh, {"image": host["image"], "label": host["label"]})
      data_s = time.perf_counter() - t0
      stage = ts.stage_at(step)
      state, m = train_steps[stage](state, batch, config.seed)
      step += 1
      if profile and step == profile[1]:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
      train_log.add(step, m, data_s)
      bar.update()
      schedule.calibrate(step, time.perf_counter())
      if schedule.log(step):
        train_log.flush(saved_step)
      if schedule.eval(step):
        train_log.flush(saved_step)
        val = evaluate_fn(state["model"])
        val = {"step": step, "epoch": step / data.steps_per_epoch,
               **{k: v for k, v in val.items() if not isinstance(v, list)}}
        log.log([val], "val")
        if stage == final_stage:  # An earlier stage (DeepFD's D1) has no classifier worth keeping yet.
          best.update(step, val)
        if main:
          bar.write(f"step {step} epoch {val['epoch']:.1f}: val {best.metric}={val[best.metric]:.4f} "
                    + (f"(best {best.best:.4f} at step {best.best_step})" if best.best is not None
                       else f"(stage {stage})"))
        log.plot()
        if config.early_stop_patience and best.bad_evals >= config.early_stop_patience:
          stop_reason = meta["stopped"] = f"early stop: no improvement in {best.bad_evals} evaluations"
        save()
      elif schedule.checkpoint(step):
        save()
      if preempt.reached(step):
        if saved_step != step:
          save()
        stop_reason = "SIGTERM: checkpoint written"
        break
  bar.close()
  train_log.flush(saved_step)
  return state, step, stop_reason


def probe_loop(config, ts, data, state, ckpt, log, best, mesh):
  """The head trained on the frozen backbone's cached features (fakejax.probe); the whole model
  saved as the best checkpoint. Returns (state, step, stop reason)."""
  if config.model.transfer != "linear_probe":
    raise cli.UserError("model.cached_features trains the head alone: set model.transfer='linear_probe'")
  model = nnx.merge(ts.model_def, state["model"])
  if not hasattr(model, "features"):
    raise cli.UserError(f"model.cached_features needs a model with features(); {config.model.name} has "
                        "none (the CLIP ViTs have)")
  if not config.model.init_from and config.model.name != "clip_vit_tiny":  # Only the smoke model.
    raise cli.UserError(f"model.cached_features probes a pretrained backbone: set model.init_from "
                        f"(e.g. clip:open_clip_model.safetensors for {config.model.name})")
  forward = probe.feature_forward(ts.model_def, ts.preprocess, config.model.dtype)
  key, d = input_pipeline.label_key(config.data), config.data
  train_idx = input_pipeline.train_indices(data.dataset, d)
  feats = {s: probe.cached_features(config, forward, state["model"], mesh, data.dataset, s, idx, ts.preprocess)
           for s, idx in (("train", train_idx), (data.val_split, data.val_idx))}
  labels = {s: data.dataset.index(s)[key][idx] for s, idx in (("train", train_idx), (data.val_split, data.val_idx))}
  step, reason = probe.train_head(
      model.head, feats["train"], labels["train"], feats[data.val_split], labels[data.val_split], config,
      data.class_names, lambda logits, y: classification_loss(logits, y, config.label_smoothing), best,
      log=lambda s, row: log.log([{"step": s, **row}], "val"))
  state["model"] = nnx.state(model)
  ckpt.save_best(best.best_step, state["model"], {"step": best.best_step, "val": best.best_val, **best.meta()})
  return state, step, reason


def finalize(config, ts, data, workdir, mesh, log, step, stop_reason, best, fold):
  """The held-out test of the best model, finished.json; returns the run's result."""
  main = sharding.is_main()
  best_state, best_meta = checkpoint.restore_model(workdir, ts.abstract["model"], "best")
  test = {}
  if "test" in data.dataset.splits:
    d = config.data
    test_idx = data.dataset.select("test", tuple(d.train_sources), tuple(d.train_categories),
                                   tuple(d.exclude_categories))
    test = evaluate_split(fold, best_state, mesh, data.dataset, config, "test", test_idx, desc="test")
    test = {k: v for k, v in test.items() if not isinstance(v, list)}
    log.log([{"step": best_meta["step"], **test}], "test")
    if main:
      print(f"held-out test ({','.join(d.train_sources) or 'all'}): "
            + " ".join(f"{k}={test[k]:.4f}" for k in ("top1", "accuracy", "real_acc", "fake_acc",
                                                       "ap", "auc") if k in test), flush=True)
  if main:
    _atomic_json(os.path.join(workdir, "finished.json"),
                 {"step": step, "reason": stop_reason or "completed", "best_step": best.best_step,
                  "test": test})
  return {"step": step, "best": best.best, "test": test}


def train_and_evaluate(config, workdir, devices=None, *, evaluate_fn=None, preemption=None):
  """Trains (resuming if `workdir` has a checkpoint), evaluates, returns the final metrics.

  Args:
    config: a ConfigDict (see fakejax.defaults).
    workdir: output folder.
    devices: devices of the data mesh (default: all).
    evaluate_fn: model state -> validation metrics (default: validation_fn, the evaluator).
    preemption: the stop request (default: sharding.Preemption(), SIGTERM); any object with
      `reached(step)` and `close()`.

  Returns:
    dict with 'step', 'best' (validation) and 'test' (held-out) metrics; with 'preempted':
    True when SIGTERM stopped it (a checkpoint was written).
  """
  models.get(config.model.name)  # An unknown name fails here, before any work.
  # --- Pretrained weights: their origin decides the input preprocessing ('auto') --------
  weights_info = (convert.pretrained_info(config.model.init_from, config.model.name)
                  if config.model.init_from else None)
  if weights_info and config.model.preprocess not in ("auto", weights_info["preprocess"]):
    logging.warning("model.preprocess=%s but the %s weights of init_from expect %s",
                    config.model.preprocess, weights_info["origin"], weights_info["preprocess"])
  config.model.preprocess = models.resolve_preprocess(
      config.model.name, config.model.preprocess, weights_info and weights_info["preprocess"])
  config.model.dtype = models.resolve_dtype(config.model.dtype)  # Recorded: a resume keeps it.
  config_json = config.to_json_best_effort(indent=2)
  check_same_run(workdir, config_json)

  # --- Mesh -------------------------------------------------------------------
  mesh = sharding.make_mesh(devices)
  sharding.check_batch(config.batch_size, mesh, "batch_size")
  if config.eval_batch_size:
    sharding.check_batch(config.eval_batch_size, mesh, "eval_batch_size")
  if config.optim.accumulate_steps > 1 and config.batch_size % (config.optim.accumulate_steps * mesh.size):
    raise cli.UserError(f"batch_size {config.batch_size} must split into optim.accumulate_steps "
                        f"{config.optim.accumulate_steps} micro-batches of a multiple of {mesh.size} devices")

  # --- Open data (best_metric checked against what the task reports, before step 1) ----------
  data = open_data(config)
  task_metrics = loop.task_metrics(data.class_names)
  loop.BestTracker(config.best_metric, task_metrics)
  loop.parse_steps(config.profile_steps)
  if sharding.is_main():  # Only now: a run refused above leaves no folder behind.
    os.makedirs(workdir, exist_ok=True)
    _atomic_write(os.path.join(workdir, "config.json"), config_json)
    _atomic_json(os.path.join(workdir, "run.json"), data.run_info)

  # --- State, restored or new -----------------------------------------------------------
  ts = TrainState(config, data.num_classes,
                  config.total_steps or config.num_epochs * data.steps_per_epoch, mesh, data.steps_per_epoch)
  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  state, meta = restore_or_init(config, ts, ckpt, data.train_iter)
  step = meta["step"]
  finished_path = os.path.join(workdir, "finished.json")
  if (meta.get("stopped") or step >= ts.total_steps or config.model.cached_features) and os.path.exists(finished_path):
    with open(finished_path) as f:
      done = json.load(f)
    if sharding.is_main():
      print(f"{workdir}: this run finished at step {step} ({done['reason']}); nothing to do. "
            f"Held-out test: {json.dumps(done.get('test', {}))}", flush=True)
    ckpt.close()
    return {"step": step, "best": meta.get("best"), "test": done.get("test"), "finished": True}
  best = loop.BestTracker(config.best_metric, task_metrics, meta)
  schedule = loop.Schedule(ts.total_steps, config.log_every_steps,
                           config.eval_every_steps or data.steps_per_epoch, config.checkpoint_every_steps,
                           config.checkpoint_every_minutes, meta.get("checkpoint_interval_steps"))

  # --- Loop -----------------------------------------------------------------------------
  log = report.RunLog(workdir, enabled=sharding.is_main(), resume_step=step)
  fold = evaluator.Folder(ts.model_def, ts.preprocess, config.model.dtype)  # One forward: val and test.
  preempt = preemption or sharding.Preemption()
  try:
    if config.model.cached_features:  # A linear probe on cached features (probe.py).
      state, step, stop_reason = probe_loop(config, ts, data, state, ckpt, log, best, mesh)
    else:
      state, step, stop_reason = train_loop(
          config, ts, data, state, meta, ckpt, log, schedule, best,
          evaluate_fn or validation_fn(fold, mesh, data, config), preempt, mesh)
  finally:
    preempt.close()
    ckpt.close()  # Waits for the saves in flight: an exception above still leaves them whole.
  if stop_reason and sharding.is_main():
    logging.info(stop_reason)
    print(stop_reason, flush=True)
  if stop_reason == "SIGTERM: checkpoint written":
    log.close()
    return {"step": step, "preempted": True}

  # --- Finalize -------------------------------------------------------------------------
  try:
    return finalize(config, ts, data, workdir, mesh, log, step, stop_reason, best, fold)
  finally:
    log.close()


def default_workdir(config_arg):
  """runs/<config name>[_<variant>]: each variant of a config file gets its own run."""
  path, _, variant = config_arg.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("runs", f"{name}_{variant}" if variant else name)


def _config_arg(argv):
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return config_flags.get_config_filename(flags.FLAGS["config"])


def main(argv):
  del argv
  f = flags.FLAGS
  sharding.initialize(f.coordinator_address, f.num_processes, f.process_id)
  workdir = f.workdir or default_workdir(_config_arg(sys.argv))
  out = train_and_evaluate(f.config, workdir)
  if out.get("preempted"):
    sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
  # Defined here, not at import, so evaluate/predict can import this module with their own flags.
  config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output folder (default: runs/<config name>[_<variant>]).")
  cli.define_distributed_flags()
  flags.mark_flag_as_required("config")
  cli.run(main)
