"""What a run is: its task, its model (built one way for training and for loading), its files.

A run folder (WORKDIR) holds
  config.json     the config it trained with (a resumed run must match it but for OPERATIONAL_KEYS)
  run.json        what loading it needs besides the config: the task's classes, the dataset, the
                  validation records (`Task.info`), a converted detector's test preset
  finished.json   why and where it ended, and its held-out test row
  checkpoints/, best/, metrics.jsonl, ...   (fakejax.checkpoint, fakejax.report)
JSON files are written whole or not at all (`write_json`).

The records a run trains and validates on are chosen here (`Selection`); input_pipeline streams
them.

`Run` loads a trained (or converted) run to score with: its best or latest weights, the inference
forward (BatchNorm folded), its evaluator and views.
"""

import dataclasses
import json
import os

from flax import nnx
import jax
import ml_collections
import numpy as np

from fakejax import augment
from fakejax import checkpoint
from fakejax import cli
from fakejax import datasets
from fakejax import defaults
from fakejax import input_pipeline
from fakejax import models
from fakejax import scoring
from fakejax import sharding

TASKS = ("binary", "attribution")
# Config keys that may change between a run and its resumption (they do not change results).
OPERATIONAL_KEYS = ("data.workers", "data.cache_dir", "log_every_steps", "keep_checkpoints",
                    "checkpoint_every_steps", "checkpoint_every_minutes", "eval_batch_size",
                    "eval_threads", "data.read_threads", "data.prefetch", "profile_steps")


class TrainingError(cli.UserError):
  """A run cannot go on (NaN loss or metric, a changed config, ...); the message says why."""


# ---------------------------------------------------------------------------
# The task (binary real/fake, or attribution among the dataset's classes) and the records a run
# trains and validates on.
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Task:
  """What a run predicts: 'binary' (real 0 / fake 1) or 'attribution' (one class per source).

  Attributes:
    kind: one of TASKS.
    class_names: the classes, in the order of the labels.
  """
  kind: str
  class_names: tuple

  @classmethod
  def from_config(cls, data_cfg, dataset):
    """The task a config's `data.task` asks of `dataset`."""
    if data_cfg.task not in TASKS:
      raise cli.UserError(f"Unknown data.task {data_cfg.task!r}; known: {', '.join(TASKS)}")
    return cls(data_cfg.task, tuple(dataset.class_names) if data_cfg.task == "attribution" else ("real", "fake"))

  @classmethod
  def from_info(cls, info):
    """The task a run.json records."""
    return cls(info.get("task", "binary"), tuple(info["class_names"]))

  @property
  def label_key(self):
    """The dataset index column that holds the labels."""
    return "label" if self.kind == "binary" else "class_label"

  @property
  def num_classes(self):
    return len(self.class_names)

  @property
  def has_real(self):
    """Whether class 0 is 'real' (else no image has a p_fake: attribution among generators only)."""
    return self.class_names[0] == "real"

  def label_name(self, pred):
    return self.class_names[pred] if len(self.class_names) > 2 else ("fake" if pred else "real")

  def labels(self, dataset, split, indices):
    return dataset.index(split)[self.label_key][indices]

  def info(self):
    """Its part of run.json."""
    return {"task": self.kind, "num_classes": self.num_classes, "class_names": list(self.class_names)}


def balance(indices, labels, seed):
  """Oversamples every class up to the largest one (deterministic)."""
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(labels, return_counts=True)
  out = []
  for c in classes:
    idx = indices[labels == c]
    extra = rng.choice(idx, counts.max() - len(idx)) if len(idx) < counts.max() else idx[:0]
    out.append(np.concatenate([idx, extra]))
  return np.sort(np.concatenate(out))


@dataclasses.dataclass(frozen=True)
class Selection:
  """The records of a dataset a run reads: the one home of the config's record selection (its
  `data` block is read here, once, by `from_config`).

  Attributes:
    task: the run's Task (class balance counts its labels).
    sources: data.train_sources: those generators' fakes with the reals they pair with (all: empty).
    categories: data.train_categories (all: empty).
    exclude: data.exclude_categories.
    val_fraction: the seeded share of train validation holds out, for a dataset without 'val'.
    per_category: data.train_per_category: training records kept per (category, source), 0: all.
    balance: data.balance: every training class oversampled to the largest.
    seed: the hold-out, subset and balance draws' seed (data.seed).
  """
  task: Task
  sources: tuple = ()
  categories: tuple = ()
  exclude: tuple = ()
  val_fraction: float = 0.0
  per_category: int = 0
  balance: bool = False
  seed: int = 0

  @classmethod
  def from_config(cls, data_cfg, dataset):
    """The selection a config's `data` block asks of `dataset`."""
    return cls(Task.from_config(data_cfg, dataset), tuple(data_cfg.train_sources), tuple(data_cfg.train_categories),
               tuple(data_cfg.exclude_categories), data_cfg.val_fraction, data_cfg.train_per_category,
               bool(data_cfg.balance), data_cfg.seed)

  def records(self, dataset, split):
    """The record indices of `split` in the selected sources and categories (validation and test
    read these)."""
    return dataset.select(split, self.sources, self.categories, self.exclude)

  def validation(self, dataset):
    """(split, record indices, the share of train held out or 0.0) validation reads.

    The dataset's 'val' split; for datasets released without one, a seeded `val_fraction` of
    train (held out of training by `train`).

    Raises:
      datasets.DatasetError: before any training step, when there is neither.
    """
    if "val" in dataset.splits:
      return "val", self.records(dataset, "val"), 0.0
    if not self.val_fraction:
      raise datasets.DatasetError(
          f"{dataset.path} has no 'val' split (it has {', '.join(dataset.splits)}); set "
          "--config.data.val_fraction=0.1 to hold out a seeded part of train for validation")
    held = np.intersect1d(self.records(dataset, "train"), np.flatnonzero(self._held_out(dataset)))
    return "train", held, self.val_fraction

  def _held_out(self, dataset):
    """Mask over the train split of the records set aside for validation (val_fraction)."""
    n = len(dataset.index("train")["label"])
    mask = np.zeros(n, bool)
    if "val" not in dataset.splits and self.val_fraction:
      rng = np.random.default_rng([self.seed, 7919])
      mask[rng.permutation(n)[:int(round(n * self.val_fraction))]] = True
    return mask

  def train(self, dataset):
    """The training records: `records` of train, less what validation holds out, per-category
    subsets, class balance."""
    idx = self.records(dataset, "train")
    idx = idx[~self._held_out(dataset)[idx]]
    if self.per_category:
      idx = per_group_subset(idx, dataset.index("train"), self.per_category, self.seed)
    if self.balance:
      idx = balance(idx, self.task.labels(dataset, "train", idx), self.seed)
    return idx


def per_group_subset(indices, index, n, seed):
  """A seeded subset of `indices` with at most `n` records per (category, source), sorted.

  Args:
    indices: record indices of a split.
    index: that split's index columns (Dataset.index).
    n: records kept per group.
    seed: subset seed.
  """
  rng = np.random.default_rng([seed, 6449])
  groups = np.char.add(np.char.add(index["category"][indices].astype(str), "/"),
                       index["source"][indices].astype(str))
  keep = [rng.permutation(indices[groups == g])[:n] for g in np.unique(groups)]
  return np.sort(np.concatenate(keep)) if keep else indices


def train_iter(dataset, data_cfg, aug_cfg, global_batch, seed, *, indices=None, **kw):
  """input_pipeline.make_train_iter over the run's training records (default: `Selection.train`)
  with its task's labels; `kw`: make_train_iter's process_index, process_count."""
  selection = Selection.from_config(data_cfg, dataset)
  indices = selection.train(dataset) if indices is None else indices
  return input_pipeline.make_train_iter(dataset, data_cfg, aug_cfg, global_batch, seed, indices=indices,
                                        label_key=selection.task.label_key, **kw)


def evaluator_of(config, fn, mesh, task, *, batch_size=0, threads=0):
  """The scoring.Evaluator a run's config scores `fn(x, valid)` with (validation, the held-out
  test, the probe's features, evaluate, predict, explain, serve): batches of `batch_size`, else
  eval_batch_size, else batch_size; data.image_size; `threads`, else eval_threads."""
  return scoring.Evaluator(fn, mesh, batch_size or config.eval_batch_size or config.batch_size,
                           config.data.image_size, threads=threads or config.eval_threads,
                           has_real=task.has_real)


# ---------------------------------------------------------------------------
# The model, one way for training and for loading.
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class ModelSpec:
  """A run's model without its weights.

  Attributes:
    graph: the eval-mode nnx graph definition.
    abstract: its state as ShapeDtypeStructs replicated over the mesh (what a restore fills).
    preprocess: the input normalisation and front-end (models.resolve_preprocess).
    dtype: the compute dtype.
  """
  graph: object
  abstract: object
  preprocess: str
  dtype: str


def model_spec(model_cfg, num_classes, mesh):
  """The ModelSpec of a config's `model` block with `num_classes` logits."""
  model = nnx.eval_shape(lambda: models.from_config(model_cfg, num_classes))
  model.eval()
  graph, state = nnx.split(model)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)), state)
  preprocess = models.resolve_preprocess(model_cfg.name, model_cfg.preprocess, front=model_cfg.front)
  return ModelSpec(graph, abstract, preprocess, model_cfg.dtype)


def view_of(data_cfg, mode="full", preset="", **kw):
  """A scoring.View with a config's crop, eval resize and too-small policy; a `preset`
  (scoring.PRESETS) sets its own mode, crop, resize and padding over those and over `kw`. The
  default, 'full', is the evaluation crop that validation and the probe's features use."""
  settings = dict(crop=data_cfg.image_size, too_small=data_cfg.too_small, resize=data_cfg.eval_resize, **kw)
  if preset:
    if preset not in scoring.PRESETS:
      raise cli.UserError(f"Unknown preset {preset!r}; known: {', '.join(scoring.PRESETS)}")
    settings.update(scoring.PRESETS[preset])
    mode = settings.pop("mode")
  return scoring.View(mode, **settings)


# ---------------------------------------------------------------------------
# The run folder's files.
# ---------------------------------------------------------------------------
def write_text(path, text):
  """Writes the whole file or, if killed, leaves the old one: never a torn file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path, obj):
  write_text(path, json.dumps(obj, indent=2))


def read_json(path):
  with open(path) as f:
    return json.load(f)


def flat_config(d, prefix=""):
  """{'a.b': value} of a nested dict (lists for tuples)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat_config(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = list(v) if isinstance(v, tuple) else v
  return out


def check_same_run(workdir, config_json):
  """Refuses to resume a run whose saved config differs (other than OPERATIONAL_KEYS). A key the
  saved config lacks (a run saved before the key existed) counts as today's default."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  saved, new = flat_config(json.loads(load_config(workdir).to_json())), flat_config(json.loads(config_json))
  diff = [f"{k}: {saved.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
          for k in sorted(set(saved) | set(new))
          if k not in OPERATIONAL_KEYS and saved.get(k) != new.get(k)]
  if diff:
    raise TrainingError(f"{workdir} holds a run with another config; resuming it would mix two runs. "
                        f"Use another --workdir, or the saved values. Differences: {'; '.join(diff)}")


def _merge(config, saved):
  """Writes the saved values (a nested dict) into a ConfigDict."""
  for k, v in saved.items():
    if isinstance(v, dict) and isinstance(config.get(k), ml_collections.ConfigDict):
      _merge(config[k], v)
    else:
      config[k] = v
  return config


def load_config(workdir):
  """A run's config (over today's defaults: a run saved before a key existed still loads)."""
  return _merge(defaults.get_config(), read_json(os.path.join(workdir, "config.json")))


def default_workdir(config_arg):
  """runs/<config name>[_<variant>]: each variant of a config file gets its own run."""
  path, _, variant = config_arg.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("runs", f"{name}_{variant}" if variant else name)


# ---------------------------------------------------------------------------
# A run loaded to score with.
# ---------------------------------------------------------------------------
class Run:
  """A trained (or converted) run loaded from its folder: model weights only, ready to score.

  Args:
    workdir: the run folder.
    which: the checkpoint, 'best', 'latest' or a step.
    devices: the devices of the mesh (default: all).
    batch_size: the global eval batch (default: the run's eval_batch_size, else batch_size).
    threads: decoding threads (default: the run's eval_threads).
    dtype: the compute dtype ('auto', 'float32', 'bfloat16'; '' = the one the run trained with):
      a run trained in bf16 on a GPU scores in float32 on a CPU with dtype='auto'.
  """

  def __init__(self, workdir, which="best", devices=None, batch_size=0, threads=0, dtype=""):
    run_path = os.path.join(workdir, "run.json")
    if not os.path.exists(run_path):
      raise cli.UserError(f"{workdir} is not a fakejax run (no run.json); train one with "
                          "`python -m fakejax.train`")
    self.workdir = workdir
    self.config = c = load_config(workdir)
    c.model.dtype = models.resolve_dtype(dtype or c.model.dtype)
    self.info = read_json(run_path)
    self.task = Task.from_info(self.info)
    self.mesh = sharding.make_mesh(devices)
    self.spec = model_spec(c.model, self.task.num_classes, self.mesh)
    self._folder = scoring.Folder(self.spec.graph, self.spec.preprocess, c.model.dtype)
    self.load(which)
    self.forward = self._folder.forward
    self.evaluator = evaluator_of(c, lambda x, valid=None: self.forward(self.inference_state, x, valid),
                                  self.mesh, self.task, batch_size=batch_size, threads=threads)
    self.batch = self.evaluator.batch

  @property
  def class_names(self):
    return self.task.class_names

  @property
  def model_def(self):
    return self.spec.graph

  @property
  def preprocess(self):
    return self.spec.preprocess

  def load(self, which):
    """Loads another checkpoint of the run ('best', 'latest' or a step): same shapes, so the
    compiled forward is reused."""
    self.state, self.meta = checkpoint.restore_model(self.workdir, self.spec.abstract, which)
    # Scores come from the inference model (Folder, the forward training validates with);
    # model_def / state stay the plain model (explain differentiates through it).
    _, self.inference_state = self._folder(self.state)

  def view(self, mode="full", preset=None, **kw):
    """view_of this run's data config; without a `preset`, mode 'auto' takes the run's own (a
    converted released detector's test transform: `predict` and `serve` score UnivFD's ViT on its
    224 center crop, not on whole images)."""
    if preset is None:
      preset = self.info.get("preset", "") if mode == "auto" else ""
    return view_of(self.config.data, mode, preset, **kw)

  def label_name(self, pred):
    return self.task.label_name(pred)

  def score_sets(self, sets, view, split="test", **kw):
    """scoring.score_sets with this run's evaluator and labels (keyword args: copies,
    perturbation, threshold (default: the run's), progress)."""
    kw.setdefault("threshold", self.config.threshold)
    return scoring.score_sets(self.evaluator, sets, view, self.task.label_key, split, **kw)

  def set_rows(self, scored, view, threshold=None):
    """{name: report row} of score_sets' output (scoring.set_metrics)."""
    t = self.config.threshold if threshold is None else threshold
    return {name: scoring.set_metrics(res, labels, self.class_names, view, t)
            for name, (res, labels) in scored.items()}

  def protocol(self, sets, view, split="test", copies=(augment.Copy(),), perturbations=(), *,
               threshold=None, progress=None):
    """Every set scored under every condition (plain, then each perturbation), the field's way.

    Args:
      sets: [(dataset, name, record indices of `split`)].
      view: a scoring.View.
      split: the split the indices refer to.
      copies: test-time copies (augment.tta_copies).
      perturbations: augment.Perturbation list (the robustness protocol).
      threshold: p_fake threshold (default: the run's).
      progress: optional callable(images finished, condition name).

    Returns:
      (rows, curves {set: (labels, p_fake)}, examples for patch heatmaps) of the plain condition
      first; rows of the perturbed conditions carry 'perturbation' and 'strength'.
    """
    t = self.config.threshold if threshold is None else threshold
    rows, curves, examples = [], {}, []
    for pert in (None,) + tuple(perturbations):
      name = pert.name if pert else "plain"
      scored = self.score_sets(sets, view, split, copies=copies, perturbation=pert, threshold=t,
                               progress=progress and (lambda n, name=name: progress(n, name)))
      for dataset, set_name, idx in sets:
        res, labels = scored[set_name]
        row = {"test_set": set_name, **scoring.set_metrics(res, labels, self.class_names, view, t)}
        if pert:
          row.update(perturbation=pert.kind, strength=pert.strength)
        else:
          curves[set_name] = (labels, p_fake(res))
          examples += [(abs(r.score - 0.5), f"{set_name} #{idx[i]} (true {self.label_name(labels[i])})",
                        dataset, int(idx[i]), r) for i, r in enumerate(res)]
        rows.append(row)
    return rows, curves, examples

  def calibrate(self, view, source, target_real_acc, copies=(augment.Copy(),)):
    """(threshold, info) chosen from real images only (scoring.reals_threshold).

    Args:
      view: the View the test sets are scored with (the reals are scored the same way).
      source: 'val' (the reals of the run's dataset's val split) or a folder of real images.
      target_real_acc: the share of those reals called real.
      copies: test-time copies, as for the test sets.
    """
    if self.class_names != ("real", "fake"):
      raise cli.UserError("calibration needs a binary real/fake run")
    if source == "val":
      if not self.info.get("dataset"):
        raise cli.UserError("--calibrate val: this run has no dataset of its own; give a folder of reals")
      ds = datasets.open_named(self.info["dataset"])
      if "val" not in ds.splits:
        raise cli.UserError(f"--calibrate val: {self.info['dataset']} has no val split; give a folder of reals")
      sizes, load = scoring.dataset_reader(ds, "val", np.flatnonzero(ds.index("val")["label"] == 0))
    elif os.path.isdir(source):
      sizes, load = scoring.file_reader(datasets.list_images([source]))
    else:
      raise cli.UserError(f"--calibrate {source!r}: expected 'val' or a folder of real images")
    t, n = scoring.reals_threshold(p_fake(self.evaluator.run(sizes, load, view, copies)), target_real_acc)
    return t, {"source": source, "n_reals": n, "target_real_acc": target_real_acc, "threshold": t}


def p_fake(results):
  """The p_fake of scored images (NaN where there is none)."""
  return np.array([r.score for r in results], np.float64)
