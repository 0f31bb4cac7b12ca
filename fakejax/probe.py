"""Linear probes on frozen features, computed once per dataset and cached (UnivFD's training).

  python -m fakejax.train --config configs/univfd.py \
      --config.model.init_from=clip:open_clip_model.safetensors --config.data.dir=DATASET

With model.transfer='linear_probe' and model.cached_features=True, training does not run the
frozen backbone at every step: the backbone's features (`model.features`) of the training and
validation records are computed once, in the evaluator's 'full' view (the centre crop of
data.image_size after data.eval_resize, no augmentation), and cached under
data.cache_dir/features/ keyed by the dataset, the records, the weights and the view. Then
only the head trains, on those features, in seconds. The run folder is a run like any other
(its checkpoint holds the whole model: backbone and trained head), so `evaluate`, `predict`,
`explain` and `serve` score it through the full forward.

The head's training is UnivFD's (WisconsinAIVision/UniversalFakeDetect train.py, trainer.py
and earlystop.py): AdamW (optim.lr, betas 0.9/0.999, optim.weight_decay), batches of
batch_size, every epoch a validation accuracy; after early_stop_patience epochs without a
gain of more than 0.001 the learning rate drops 10x (patience renewed, the gain needed 0.002),
and training stops when it would fall below 1e-6 or after num_epochs epochs.
"""

import hashlib
import json
import os

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fakejax import cli
from fakejax import evaluator
from fakejax import metrics as metrics_lib
from fakejax import models
from fakejax import sharding

MIN_LR = 1e-6  # UnivFD's adjust_learning_rate(min_lr=1e-6).


def feature_forward(model_def, preprocess, dtype):
  """The jitted (model state, uint8 images) -> backbone features (the evaluator's forward with
  the model's `features` in place of its logits)."""
  dtype = jnp.dtype(models.resolve_dtype(dtype))

  def features(state, x):
    return nnx.merge(model_def, state).features(models.preprocess(x, preprocess, dtype)).astype(jnp.float32)

  return evaluator.make_forward(model_def, preprocess, dtype, outputs=features)


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
         "model": [m.name, m.width, m.dtype], "preprocess": preprocess,
         "view": [d.image_size, d.eval_resize, d.too_small]}
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16], key


def cached_features(config, forward, model_state, mesh, dataset, split, indices, preprocess):
  """(n, d) float32 features of records `indices` of a split: from the cache, else computed
  (every process decodes and computes its part of each batch, the last one padded with repeats;
  process 0 writes the cache)."""
  key, what = _cache_key(config, dataset, split, indices, preprocess)
  path = os.path.join(config.data.cache_dir, "features", f"{split}_{key}.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      logging.info("Features of %d %s records from %s", len(indices), split, path)
      return f["features"]
  d = config.data
  view = evaluator.View("full", crop=d.image_size, resize=d.eval_resize, too_small=d.too_small)
  src = dataset.source(split)
  batch = config.eval_batch_size or config.batch_size
  sharding.check_batch(batch, mesh, "eval_batch_size")
  out, per = [], batch // jax.process_count()
  for start in range(0, len(indices), batch):
    chunk = indices[start:start + batch]
    mine = np.resize(chunk, batch)[jax.process_index() * per:(jax.process_index() + 1) * per]  # Padded.
    local = np.stack([view.cut(dataset.decode(src[int(i)]), int(i))[0][0] for i in mine])
    feats = sharding.to_host(forward(model_state, sharding.to_global(mesh, local)))
    out.append(np.asarray(feats)[:len(chunk)])
  feats = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
  if sharding.is_main():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, features=feats, key=json.dumps(what))
    os.replace(tmp, path)
  return feats


def train_head(head, x_train, y_train, x_val, y_val, config, class_names, loss_fn, best, log=None):
  """UnivFD's head training on features (module docstring).

  Args:
    head: the model's head (an nnx.Linear), trained in place; it ends as the best one.
    x_train, y_train, x_val, y_val: features and labels.
    class_names: the classes (their order is the labels').
    config: the run's ConfigDict (optim.lr, optim.weight_decay, batch_size, num_epochs,
      early_stop_patience (0: no early stop), data.seed, model.single_logit, threshold).
    loss_fn: (logits, labels) -> mean loss.
    best: a loop.BestTracker (config.best_metric) that picks the head kept.
    log: optional callable(step, validation row) after each epoch.

  Returns:
    (updates made, why it stopped).
  """
  if len(x_train) == 0:
    raise cli.UserError("No training records to probe")
  single = config.model.single_logit
  lr = config.optim.lr
  tx = optax.inject_hyperparams(optax.adamw)(learning_rate=lr, b1=0.9, b2=0.999,
                                             weight_decay=config.optim.weight_decay)
  opt = nnx.Optimizer(head, tx, wrt=nnx.Param)

  def logits_of(head, x):
    z = head(x).astype(jnp.float32)
    return jnp.concatenate([jnp.zeros_like(z), z], -1) if single else z

  @nnx.jit
  def update(head, opt, x, y, lr):
    loss, grads = nnx.value_and_grad(lambda h: loss_fn(logits_of(h, x), y))(head)
    opt.opt_state.hyperparams["learning_rate"][...] = lr
    opt.update(head, grads)
    return loss

  @nnx.jit
  def probabilities(head, x):
    return jax.nn.softmax(logits_of(head, x), -1)

  patience, delta, es_best, bad = config.early_stop_patience, 0.001, None, 0
  kept, reason, step, n, bs = None, "num_epochs", 0, len(x_train), config.batch_size
  for epoch in range(1, config.num_epochs + 1):
    order = np.random.default_rng([config.data.seed, epoch]).permutation(n)
    losses = []
    for i in range(0, n, bs):
      b = order[i:i + bs]
      losses.append(update(head, opt, jnp.asarray(x_train[b]), jnp.asarray(y_train[b]), lr))
      step += 1
    probs = np.asarray(probabilities(head, jnp.asarray(x_val)))
    row = {k: v for k, v in metrics_lib.summarize(y_val, probs, list(class_names), config.threshold).items()
           if not isinstance(v, list)}
    row.update(epoch=epoch, lr=lr, train_loss=float(np.mean(jax.device_get(losses))))
    if best.update(step, row):
      kept = jax.tree.map(jnp.copy, nnx.state(head))
    if log:
      log(step, row)
    if not patience:
      continue
    # UnivFD's EarlyStopping(patience, delta=-0.001): a gain counts from best + 0.001; after
    # `patience` epochs without one the lr drops 10x, a new EarlyStopping(delta=-0.002) starts.
    acc = row.get("accuracy", row.get("top1"))
    if es_best is None or acc >= es_best + delta:
      es_best, bad = acc, 0
      continue
    bad += 1
    if bad >= patience:
      if lr / 10 < MIN_LR:
        reason = "early stop: the learning rate would fall below 1e-6"
        break
      lr, bad, delta, es_best = lr / 10, 0, 0.002, None
  nnx.update(head, kept)
  return step, reason
