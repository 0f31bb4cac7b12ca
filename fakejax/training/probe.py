"""Linear probes on frozen features, computed once per dataset and cached (UnivFD's training).

  python -m fakejax.train --config configs/univfd.py \
      --config.model.init_from=clip:open_clip_model.safetensors --config.data.dir=DATASET

With model.transfer='linear_probe' and model.cached_features=True (strategies.CachedProbe),
training does not run the frozen backbone at every step: the backbone's features
(`model.features`) of the training and validation records are computed once through the scoring
engine in the 'full' view (the centre crop of data.image_size after data.eval_resize, no
augmentation), and cached under data.cache_dir/features/ keyed by the dataset, the records, the
weights and the view. Then only the head trains, on those features, in seconds. The run folder
is a run like any other (its checkpoint holds the whole model: backbone and trained head), so
`evaluate`, `predict`, `explain` and `serve` score it through the full forward.

Two solvers (probe.solver), on the training records or a seeded draw of probe.max_records:
'logistic' fits scikit-learn's LogisticRegression on the standardised features to convergence
(the spectral recipe, configs/spectral.py); 'epochs' is UnivFD's head training
(WisconsinAIVision/UniversalFakeDetect train.py, trainer.py and earlystop.py): optim.name's
optimizer (theirs: AdamW, betas 0.9/0.999) at optim.lr, batches of batch_size, every epoch a
validation accuracy; after probe.lr_drop_patience epochs without a gain of more than 0.001 the
learning rate drops 10x (patience renewed, the gain needed 0.002), and training stops when it
would fall below 1e-6 or after num_epochs epochs.
"""

import hashlib
import json
import os

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.linear_model import LogisticRegression

from fakejax import cli
from fakejax import metrics as metrics_lib
from fakejax import models
from fakejax import runs
from fakejax import scoring
from fakejax import processes
from fakejax.models import spectral
from fakejax.training import losses
from fakejax.training import optim as optim_lib

MIN_LR = 1e-6  # UnivFD's adjust_learning_rate(min_lr=1e-6).


def feature_forward(spec):
  """The jitted (model state, uint8 images) -> {'logits', 'features'} of a runs.ModelSpec: the
  scoring forward, with the backbone's features beside the logits."""
  return scoring.make_forward(spec.graph, spec.preprocess, spec.dtype, outputs=lambda model, x, valid: {
      "logits": model(x), "features": model.features(x).astype(jnp.float32)})


def _cache_key(config, dataset, split, indices, preprocess):
  """What the features of some records depend on: dataset, records, weights, model, view."""
  m, d = config.model, config.data
  weights = config.model.init_from.partition(":")[2] or config.model.init_from
  stat = os.stat(weights) if os.path.exists(weights) else None
  with open(os.path.join(dataset.path, "fakejax.json"), "rb") as f:
    dataset_hash = hashlib.sha256(f.read()).hexdigest()
  key = {"dataset": os.path.abspath(dataset.path), "dataset_meta": dataset_hash, "split": split,
         "records": hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest(),
         "init_from": m.init_from, "weights_file": [stat.st_size, stat.st_mtime_ns] if stat else None,
         "model": [m.name, m.width, m.dtype, m.get("spectrum_size", 64)], "preprocess": preprocess,
         "view": [d.image_size, d.eval_resize, d.too_small]}
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16], key


def cached_features(config, evaluator, dataset, split, indices, preprocess):
  """(n, d) float32 features of records `indices` of a split: from the cache, else scored by
  `evaluator` (a scoring.Evaluator over feature_forward) in the config's 'full' view; process 0
  writes the cache."""
  key, what = _cache_key(config, dataset, split, indices, preprocess)
  path = os.path.join(config.data.cache_dir, "features", f"{split}_{key}.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      logging.info("Features of %d %s records from %s", len(indices), split, path)
      return f["features"]
  results = evaluator.run(*scoring.dataset_reader(dataset, split, indices), runs.view_of(config.data))
  bad = [r.error for r in results if r.error]
  if bad:
    raise cli.UserError(f"{len(bad)} record(s) of {split} could not be scored, e.g.: {bad[0]}")
  feats = np.stack([r.outputs["features"][0] for r in results]) if results else np.zeros((0, 0), np.float32)
  if processes.is_main():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, features=feats, key=json.dumps(what))
    os.replace(tmp, path)
  return feats


def train(ctx):
  """strategies.CachedProbe: the head trained on the frozen backbone's cached features; the whole
  model saved as the best checkpoint. Returns (state, step, stop reason)."""
  config, ts, data = ctx.config, ctx.ts, ctx.data
  model = nnx.merge(ts.model_def, ctx.state["model"])
  if not hasattr(model, "features"):
    raise cli.UserError(f"model.cached_features needs a model with features(); {config.model.name} has "
                        "none (the CLIP ViTs and the spectral model have)")
  learned = models.backbone_param_count(model, with_batch_stats=False)
  if learned and not config.model.init_from and config.model.name != "clip_vit_tiny":  # The smoke model.
    raise cli.UserError(f"model.cached_features probes a pretrained backbone: set model.init_from "
                        f"(e.g. clip:open_clip_model.safetensors for {config.model.name})")
  forward = feature_forward(ts.spec)
  evaluator = runs.evaluator_of(config, lambda x, valid=None: forward(ctx.state["model"], x, valid), ctx.mesh,
                                data.task)
  train_idx = probe_records(data.train_idx, config.probe.get("max_records", 0), config.data.seed)
  splits = (("train", train_idx), (data.val_split, data.val_idx))
  feats = {s: cached_features(config, evaluator, data.dataset, s, idx, ts.preprocess) for s, idx in splits}
  labels = {s: data.task.labels(data.dataset, s, idx) for s, idx in splits}
  train_set, val_set = [(feats[s], labels[s]) for s, _ in splits]
  log = lambda s, row: ctx.log.log([{"step": s, **row}], "val")
  if config.probe.solver == "logistic":
    step, reason = fit_logistic(model.head, train_set, val_set, config, class_names=data.task.class_names,
                                best=ctx.best, log=log)
  elif config.probe.solver == "epochs":
    step, reason = train_head(model.head, train_set, val_set, config, class_names=data.task.class_names,
                              best=ctx.best, log=log)
  else:
    raise cli.UserError(f"Unknown probe.solver {config.probe.solver!r}; known: epochs, logistic")
  ctx.state["model"] = nnx.state(model)
  best = ctx.best
  ctx.ckpt.save_best(best.best_step, ctx.state["model"], {"step": best.best_step, "val": best.best_val,
                                                         **best.meta()})
  return ctx.state, step, reason


def probe_records(train_idx, max_records, seed):
  """The training records the head is fitted on: all (max_records 0), or probe.max_records of
  them drawn with data.seed."""
  return np.random.default_rng(seed).permutation(train_idx)[:max_records] if max_records else train_idx


def fit_logistic(head, train, val, config, *, class_names, best, log=None):
  """probe.solver='logistic': scikit-learn's LogisticRegression (lbfgs, L2 of inverse strength
  probe.C, 2000 iterations at most) on the training features standardised by their mean and
  standard deviation (+ 1e-6), in float64; the result written into a models.spectral.Standardized
  head (a binary two-logit head scores [0, z]). One validation row, as step 1. Returns (1, reason)."""
  if not isinstance(head, spectral.Standardized):
    raise cli.UserError("probe.solver='logistic' fits a standardised linear head (model 'spectral'); "
                        f"this model's head is a {type(head).__name__}: use probe.solver='epochs'")
  x, y = np.asarray(train[0], np.float64), np.asarray(train[1])
  mean, scale = x.mean(0), x.std(0) + 1e-6
  clf = LogisticRegression(max_iter=2000, C=config.probe.C).fit((x - mean) / scale, y)
  if len(clf.classes_) != len(class_names):
    raise cli.UserError(f"The training records hold {len(clf.classes_)} of the {len(class_names)} classes")
  kernel, bias = clf.coef_.T, clf.intercept_
  if kernel.shape[1] == 1 and head.fc.out_features == 2:  # Binary with two logits: [0, z].
    kernel, bias = np.concatenate([np.zeros_like(kernel), kernel], 1), np.concatenate([[0.0], bias])
  for var, value in ((head.mean, mean), (head.scale, scale), (head.fc.kernel, kernel), (head.fc.bias, bias)):
    var.value = jnp.asarray(value, jnp.float32)
  probs = jax.nn.softmax(_head_logits(head, jnp.asarray(val[0]), config.model.single_logit), -1)
  row = _val_row(val[1], probs, class_names, config.threshold)
  best.update(1, row)
  if log:
    log(1, row)
  return 1, f"logistic regression: {clf.n_iter_.max()} lbfgs iterations"


class _Plateau:
  """UnivFD's EarlyStopping(patience, delta=-0.001): a gain counts from best + delta; after
  `patience` epochs without one the lr drops 10x and a new EarlyStopping(delta=-0.002) starts."""

  def __init__(self, patience, lr):
    self.patience, self.lr, self.delta, self.mark, self.bad = patience, lr, 0.001, None, 0

  def update(self, acc):
    """Records an epoch's accuracy; returns why training stops, or None."""
    if not self.patience:
      return None
    if self.mark is None or acc >= self.mark + self.delta:
      self.mark, self.bad = acc, 0
      return None
    self.bad += 1
    if self.bad < self.patience:
      return None
    if self.lr / 10 < MIN_LR:
      return "early stop: the learning rate would fall below 1e-6"
    self.lr, self.bad, self.delta, self.mark = self.lr / 10, 0, 0.002, None
    return None


def train_head(head, train, val, config, *, class_names, best, log=None):
  """UnivFD's head training on features (module docstring).

  Args:
    head: the model's head (an nnx.Linear), trained in place; it ends as the best one.
    train, val: (features, labels) of each.
    config: the run's ConfigDict (optim: its name, lr, weight_decay, a 'constant' schedule;
      batch_size, num_epochs, probe.lr_drop_patience (0: no drop), data.seed,
      model.single_logit, threshold, label_smoothing).
    class_names: the classes (their order is the labels').
    best: a schedule.BestTracker (config.best_metric) that picks the head kept.
    log: optional callable(step, validation row) after each epoch.

  Returns:
    (updates made, why it stopped).
  """
  (x_train, y_train), (x_val, y_val) = train, val
  if len(x_train) == 0:
    raise cli.UserError("No training records to probe")
  if config.optim.schedule != "constant":
    raise cli.UserError("model.cached_features: the head's learning rate follows UnivFD's plateau rule "
                        f"(probe.lr_drop_patience); set optim.schedule='constant', not {config.optim.schedule!r}")
  plateau = _Plateau(config.probe.lr_drop_patience, config.optim.lr)
  opt = nnx.Optimizer(head, optim_lib.create_adjustable_optimizer(config.optim, config.optim.lr), wrt=nnx.Param)
  update, probabilities = _head_programs(config.model.single_logit, config.label_smoothing)
  kept, reason, step, n, bs = None, "num_epochs", 0, len(x_train), config.batch_size
  for epoch in range(1, config.num_epochs + 1):
    order = np.random.default_rng([config.data.seed, epoch]).permutation(n)
    lr, epoch_losses = plateau.lr, []
    for i in range(0, n, bs):
      b = order[i:i + bs]
      epoch_losses.append(update(head, opt, jnp.asarray(x_train[b]), jnp.asarray(y_train[b]), lr))
      step += 1
    row = _val_row(y_val, probabilities(head, jnp.asarray(x_val)), class_names, config.threshold)
    row.update(epoch=epoch, lr=lr, train_loss=float(np.mean(jax.device_get(epoch_losses))))
    if best.update(step, row):
      kept = jax.tree.map(jnp.copy, nnx.state(head))
    if log:
      log(step, row)
    stop = plateau.update(row.get("accuracy", row.get("top1")))
    if stop:
      reason = stop
      break
  nnx.update(head, kept)
  return step, reason


def _val_row(labels, probs, class_names, threshold):
  """The validation row (numbers only) of the head's class probabilities."""
  summary = metrics_lib.summarize(labels, np.asarray(probs), list(class_names), threshold)
  return {k: v for k, v in summary.items() if not isinstance(v, list)}


def _head_logits(head, x, single_logit):
  """The class logits of a head on features; a single-logit head z scores as [0, z]."""
  z = head(x).astype(jnp.float32)
  return jnp.concatenate([jnp.zeros_like(z), z], -1) if single_logit else z


def _head_programs(single, label_smoothing):
  """The head's jitted update (one batch at a learning rate; returns the loss) and its class
  probabilities; a single-logit head z (model.single_logit) scores as [0, z]."""
  logits_of = lambda head, x: _head_logits(head, x, single)

  @nnx.jit
  def update(head, opt, x, y, lr):
    loss, grads = nnx.value_and_grad(
        lambda h: losses.classification_loss(logits_of(h, x), y, label_smoothing))(head)
    opt.opt_state.hyperparams["learning_rate"][...] = lr
    opt.update(head, grads)
    return loss

  @nnx.jit
  def probabilities(head, x):
    return jax.nn.softmax(logits_of(head, x), -1)

  return update, probabilities
