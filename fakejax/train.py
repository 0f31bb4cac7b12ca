r"""Trains a fake-image detector, data-parallel over every device.

  python -m fakejax.train --config configs/xception.py [--workdir runs/NAME] \
      [--config.data.dir=PREPARED_DATASET] [--config.key=value ...]

Rerunning the same command resumes from the last checkpoint in the workdir.
"""

import json
import os
import signal
import time

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
from fakejax import input_pipeline
from fakejax import metrics as metrics_lib
from fakejax import models
from fakejax import report
from fakejax import sharding

class TrainingError(cli.UserError):
  """Training cannot go on (NaN loss, ...); the message says why."""


# ---------------------------------------------------------------------------
# Model and optimizer.
# ---------------------------------------------------------------------------
def create_model(config, num_classes):
  kw = dict(dropout=config.model.dropout, width=config.model.width)
  if config.model.name == "xception":
    kw["middle_blocks"] = config.model.middle_blocks
  if config.model.bn_momentum:
    kw["bn_momentum"] = config.model.bn_momentum
  return models.create(config.model.name, num_classes, seed=config.seed, dtype=config.model.dtype,
                       **kw)


def create_learning_rate_fn(optim, total_steps):
  """constant / cosine / exponential / step decay from lr to end_lr, after a linear warmup."""
  steps = max(total_steps - optim.warmup_steps, 1)
  if optim.schedule == "constant":
    main = optax.constant_schedule(optim.lr)
  elif optim.schedule == "cosine":
    main = optax.cosine_decay_schedule(optim.lr, steps, alpha=optim.end_lr / optim.lr)
  elif optim.schedule in ("exponential", "step"):
    every = (optim.decay_every or max(steps // 10, 1)) if optim.schedule == "step" else 1
    n_decays = max(steps // every, 1)
    main = optax.exponential_decay(optim.lr, every, (optim.end_lr / optim.lr) ** (1 / n_decays),
                                   staircase=optim.schedule == "step", end_value=optim.end_lr)
  else:
    raise ValueError(f"Unknown schedule {optim.schedule!r}; known: constant, cosine, exponential, step")
  if not optim.warmup_steps:
    return main
  warm = optax.linear_schedule(0.0, optim.lr, optim.warmup_steps)
  return optax.join_schedules([warm, main], [optim.warmup_steps])


def create_optimizer(optim, lr_fn):
  if optim.name == "adam":
    return optax.adam(lr_fn)
  if optim.name == "adamw":
    return optax.adamw(lr_fn, weight_decay=optim.weight_decay)
  if optim.name == "sgd":
    return optax.sgd(lr_fn, momentum=optim.momentum or None)
  raise ValueError(f"Unknown optimizer {optim.name!r}; known: adam, adamw, sgd")


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

  def __init__(self, config, num_classes, total_steps, mesh):
    self.config = config
    self.replicated = sharding.replicated(mesh)
    self.preprocess = models.resolve_preprocess(config.model.name, config.model.preprocess)
    staged = models.MODELS[config.model.name] is models.deepfd.DeepFD
    fd, transfer = config.deepfd, config.model.transfer
    if transfer not in TRANSFER_MODES:
      raise ValueError(f"Unknown model.transfer {transfer!r}; known: {', '.join(TRANSFER_MODES)}")
    if staged and transfer != "finetune":
      raise ValueError("model.transfer applies to single-stage models; DeepFD freezes D1 with "
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
    self.lr_fns = {k: create_learning_rate_fn(config.optim, n) for k, n in self.stage_steps.items()}

    def init():
      model = create_model(config, num_classes)
      return {"model": model, **{self.optimizer_name(k): nnx.Optimizer(
          model, create_transfer_optimizer(config.optim, self.lr_fns[k], config.model.backbone_lr),
          wrt=self.wrt[k]) for k in self.stage_steps}}

    modules = nnx.eval_shape(init)
    self.train_defs = {}
    for k in self.stage_steps:
      modules["model"].train()
      if k == 2 and fd.freeze_d1:
        modules["model"].d1.eval()  # Frozen: D1's BatchNorm statistics must not move either.
      if transfer in ("linear_probe", "freeze_bn"):
        freeze_batch_norm(modules["model"])
      self.train_defs[k], abstract = nnx.split(modules)
    modules["model"].eval()
    self.eval_def, _ = nnx.split(modules)
    self.abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), abstract)
    # Created directly on every device with its final sharding, never on one and copied.
    self.init = jax.jit(lambda: nnx.state(init()), out_shardings=self.replicated)

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

  def eval_model(self, state):
    return nnx.merge(self.eval_def, state)["model"]


# ---------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------
def make_train_step(ts, stage=0):
  """The jitted, donating update step of a stage: (state, batch) -> (state, metrics)."""
  cfg = ts.config
  base_key = jax.random.key(cfg.seed)
  dtype = jnp.dtype(cfg.model.dtype)
  opt_name = ts.optimizer_name(stage)

  def train_step(state, batch):
    modules = nnx.merge(ts.train_defs[stage], state)
    model, opt = modules["model"], modules[opt_name]
    # Dropout randomness is a function of (seed, step): a resumed run draws the same masks.
    dropout_key = jax.random.fold_in(base_key, opt.step[...])
    x = models.preprocess(batch["image"], ts.preprocess, dtype)
    labels = batch["label"]

    def loss_fn(model):
      if stage == 1:
        loss, d_same, d_other = contrastive_loss(model.embed(x), labels, cfg.deepfd.margin)
        return loss, {"dist_same": d_same, "dist_other": d_other}
      logits = model(x, rngs=dropout_key)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, ts.wrt[stage]), has_aux=True)
    (loss, aux), grads = grad_fn(model)
    lr = ts.lr_fns[stage](opt.step[...])
    opt.update(model, grads)
    out = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr, **aux}
    return nnx.state(modules), out

  return jax.jit(train_step, donate_argnums=0, out_shardings=(ts.replicated, ts.replicated))


def make_eval_step(ts):
  """The jitted forward in eval mode: (state, images) -> float32 logits."""
  cfg = ts.config
  dtype = jnp.dtype(cfg.model.dtype)

  def eval_step(state, images):
    model = ts.eval_model(state)
    return model(models.preprocess(images, ts.preprocess, dtype))

  return jax.jit(eval_step)


def predict_logits(eval_step, state, batches, mesh, desc=None):
  """Runs eval_step over eval batches; returns (labels, logits, indices) of the unmasked examples."""
  out = {"label": [], "logits": [], "index": []}
  for batch in tqdm.tqdm(batches, desc=desc, unit="batch", leave=False, disable=desc is None):
    batch = sharding.to_global(mesh, batch)
    host = sharding.to_host({"logits": eval_step(state, batch["image"]), "label": batch["label"],
                             "mask": batch["mask"], "index": batch["index"]})
    for k in out:
      out[k].append(host[k][host["mask"]])
  return tuple(np.concatenate(out[k]) for k in ("label", "logits", "index"))


def evaluate_split(eval_step, state, mesh, dataset, config, split, sources=(), categories=(),
                   exclude_categories=(), desc=None):
  """Metrics of the model on one subset of a split (every example once)."""
  idx = dataset.select(split, sources, categories, exclude_categories)
  src = input_pipeline.Subset(dataset.source(split), idx)
  batches = input_pipeline.make_eval_iter(src, config.data, config.eval_batch_size or config.batch_size)
  labels, logits, _ = predict_logits(eval_step, state, batches, mesh, desc)
  assert len(labels) == len(idx), (len(labels), len(idx))
  return metrics_lib.summarize(config.data.task, labels, logits, dataset.class_names,
                               config.threshold)


# ---------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------
class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    try:
      signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # Not the main thread (e.g. called from a test thread).
      pass

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True


def _truncate_jsonl(path, max_step):
  """Drops lines logged after the checkpoint we resume from (a killed run logged them)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip() and json.loads(l).get("step", 0) <= max_step]
  with open(path, "w") as f:
    f.writelines(lines)


def train_and_evaluate(config, workdir, devices=None):
  """Trains (resuming if `workdir` has a checkpoint), evaluates, returns the final metrics.

  Args:
    config: a ConfigDict (see fakejax.defaults).
    workdir: output folder.
    devices: devices of the data mesh (default: all).

  Returns:
    dict with 'step', 'best' (validation) and 'test' (held-out) metrics.
  """
  os.makedirs(workdir, exist_ok=True)
  # --- Pretrained weights: their origin decides the input preprocessing ('auto') --------
  weights_info = (convert.pretrained_info(config.model.init_from, config.model.name)
                  if config.model.init_from else None)
  if weights_info and config.model.preprocess not in ("auto", weights_info["preprocess"]):
    logging.warning("model.preprocess=%s but the %s weights of init_from expect %s",
                    config.model.preprocess, weights_info["origin"], weights_info["preprocess"])
  config.model.preprocess = models.resolve_preprocess(
      config.model.name, config.model.preprocess, weights_info and weights_info["preprocess"])
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))

  # --- Mesh -------------------------------------------------------------------
  mesh = sharding.make_mesh(devices)
  sharding.check_batch(config.batch_size, mesh, "batch_size")
  if config.eval_batch_size:
    sharding.check_batch(config.eval_batch_size, mesh, "eval_batch_size")

  # --- Input ------------------------------------------------------------------
  dataset = datasets.open_dataset(config.data)
  num_classes = input_pipeline.num_classes(dataset, config.data)
  class_names = dataset.class_names if config.data.task == "attribution" else ("real", "fake")
  with open(os.path.join(workdir, "run.json"), "w") as f:  # What evaluate/predict need to load it.
    json.dump({"num_classes": num_classes, "class_names": list(class_names),
               "dataset": os.path.abspath(dataset.path), "task": config.data.task}, f, indent=2)
  n_train = len(input_pipeline.train_indices(dataset, config.data))
  images_per_step = config.batch_size // max(config.data.patches_per_image, 1)
  if config.data.patches_per_image and config.batch_size % config.data.patches_per_image:
    raise ValueError(f"batch_size {config.batch_size} must be a multiple of patches_per_image "
                     f"{config.data.patches_per_image}")
  steps_per_epoch = max(n_train // images_per_step, 1)
  eval_every = config.eval_every_steps or steps_per_epoch
  train_iter = input_pipeline.make_train_iter(dataset, config.data, config.aug, images_per_step,
                                              config.data.seed)

  # --- Model & optimizer ------------------------------------------------------
  ts = TrainState(config, num_classes, config.total_steps or config.num_epochs * steps_per_epoch,
                  mesh)
  total_steps = ts.total_steps
  train_steps = {k: make_train_step(ts, k) for k in ts.stage_steps}  # Each compiles on first use.
  final_stage = max(ts.stage_steps)  # The stage whose model is evaluated and kept as best.
  eval_step = make_eval_step(ts)

  # --- Load checkpoint --------------------------------------------------------
  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  restored = ckpt.restore_latest(ts.abstract, train_iter)
  if restored:
    state, meta = restored
    logging.info("Resumed from step %d", meta["step"])
  else:
    state, meta = ts.init(), {"step": 0, "best": None, "best_step": None, "bad_evals": 0}
    if config.model.init_from:
      weights, _ = convert.load_pretrained(config.model.init_from, config.model.name)
      convert.init_model_state(state["model"], weights, f"init_from {config.model.init_from}")
      state = jax.device_put(state, ts.replicated)
      logging.info("Initialised from %s (%s)", config.model.init_from, weights_info["origin"])
  step = meta["step"]
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  _truncate_jsonl(metrics_path, step)
  writer = report.SummaryWriter(workdir)

  # --- Train loop -------------------------------------------------------------
  preempt = _Preemption()
  pending = []  # Device metrics of the steps since the last log: fetched together.
  bar = tqdm.tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
  t_last, s_last = time.perf_counter(), step
  stop_reason = None

  def log(rows, kind):
    with open(metrics_path, "a") as f:
      for r in rows:
        f.write(json.dumps({"kind": kind, **r}) + "\n")
    for r in rows:
      writer.scalars(kind, r, r["step"])

  def flush_train_metrics():
    nonlocal t_last, s_last
    if not pending:
      return
    rows = [{"step": s, **{k: float(v) for k, v in m.items()}} for s, m in jax.device_get(pending)]
    pending.clear()
    for r in rows:
      if not np.isfinite(r["loss"]):
        raise TrainingError(f"Loss is {r['loss']} at step {r['step']}: training stopped, no "
                            f"checkpoint written after step {meta['step']}. Lower optim.lr or "
                            "check the data.")
    dt = time.perf_counter() - t_last
    t_last, s_last, n = time.perf_counter(), rows[-1]["step"], rows[-1]["step"] - s_last
    speed = {"step_time": dt / max(n, 1), "img_per_s": n * images_per_step / max(dt, 1e-9)}
    rows[-1].update(speed)
    log(rows, "train")
    bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", step_s=f"{speed['step_time']:.3f}",
                    img_s=f"{speed['img_per_s']:.0f}")

  def save():
    flush_train_metrics()  # Raises on NaN: a NaN state is never saved.
    meta["step"] = step
    ckpt.save(step, state, train_iter, dict(meta))

  with jax.set_mesh(mesh):
    while step < total_steps:
      batch = sharding.to_global(mesh, next(train_iter))
      stage = ts.stage_at(step)
      state, m = train_steps[stage](state, batch)
      step += 1
      pending.append((step, m))
      bar.update()
      if step % config.log_every_steps == 0:
        flush_train_metrics()
      if step % eval_every == 0 or step == total_steps:
        flush_train_metrics()
        val = evaluate_split(eval_step, state, mesh, dataset, config, "val",
                             tuple(config.data.train_sources), tuple(config.data.train_categories),
                             tuple(config.data.exclude_categories))
        val = {"step": step, "epoch": step / steps_per_epoch, **val}
        log([{k: v for k, v in val.items() if not isinstance(v, list)}], "val")
        score = val[config.best_metric]
        if stage != final_stage:
          pass  # An earlier stage (DeepFD's D1) has no classifier worth keeping yet.
        elif meta["best"] is None or score > meta["best"]:
          meta.update(best=score, best_step=step, bad_evals=0)
          ckpt.save_best(step, state, {"step": step, "val": val})
        else:
          meta["bad_evals"] += 1
        bar.write(f"step {step} epoch {val['epoch']:.1f}: val {config.best_metric}={score:.4f} "
                  + (f"(best {meta['best']:.4f} at step {meta['best_step']})" if meta["best"]
                     is not None else f"(stage {stage})"))
        report.plot_curves(metrics_path, os.path.join(workdir, "curves.png"))
        save()
        if config.early_stop_patience and meta["bad_evals"] >= config.early_stop_patience:
          stop_reason = f"early stop: no improvement in {meta['bad_evals']} evaluations"
          break
      if preempt.requested:
        save()
        stop_reason = "SIGTERM: checkpoint written"
        break
  bar.close()
  flush_train_metrics()
  writer.close()
  if stop_reason:
    logging.info(stop_reason)
    print(stop_reason, flush=True)
  if preempt.requested:
    ckpt.close()
    return {"step": step, "preempted": True}

  # --- Final held-out evaluation of the best model ------------------------------
  best_state, _ = checkpoint.restore_model(workdir, ts.abstract, "best")
  ckpt.close()
  test = evaluate_split(eval_step, best_state, mesh, dataset, config, "test",
                        tuple(config.data.train_sources), tuple(config.data.train_categories),
                        tuple(config.data.exclude_categories), desc="test")
  test = {k: v for k, v in test.items() if not isinstance(v, list)}
  log([{"step": meta["best_step"], **test}], "test")
  sources = ",".join(config.data.train_sources) or "all"
  print(f"held-out test ({sources}): "
        + " ".join(f"{k}={test[k]:.4f}" for k in ("top1", "accuracy", "real_acc", "fake_acc", "ap",
                                                   "auc") if k in test), flush=True)
  return {"step": step, "best": meta["best"], "test": test}


def default_workdir():
  name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
  return os.path.join("runs", name)


def main(argv):
  del argv
  train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir or default_workdir())


if __name__ == "__main__":
  # Defined here, not at import, so evaluate/predict can import this module with their own flags.
  config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output folder (default: runs/<config name>).")
  flags.mark_flag_as_required("config")
  cli.run(main)
