"""Checkpoints (orbax): the one module that knows how they are stored.

A training checkpoint holds the train state (model + optimizer, as a pure
dict), the grain iterator state and a small JSON `meta` (step, epoch, best
metric, stage). `checkpoints/` keeps the last N; `best/` keeps the best model
(its weights and BatchNorm statistics only: evaluation needs nothing else).
Orbax writes into a temporary folder and renames it when complete, so a crash
mid-save leaves the previous checkpoint loadable. Saving a step that is already
on disk is a no-op, so a run that resumes and reaches that step again (or is
stopped right after an evaluation saved it) never fails on it. Every process of
a multi-host run calls save and restore (orbax coordinates them).

Saves are asynchronous: `save` and `save_best` return once the arrays are on the host and the
iterator state is taken, and the files are written while training goes on. The next save of the
same kind, `wait`, `close` and every restore wait for them first; a crash before a write
completes leaves the previous checkpoint (the temporary folder is removed on the next open).

Converted weights (`fakejax.convert`) are one model's arrays, keyed by their
path in the model ('block1/sep1/depthwise/kernel'), plus a JSON `info` (origin,
preprocessing) in `WEIGHTS_INFO` beside them.
"""

import json
import os

from etils import epath
from flax import nnx
import grain
import jax
import numpy as np
from orbax import checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from fakejax import cli


def wait_at_barrier(key, timeout_s):
  """Waits until every process of the jax.distributed job has called this with `key`.

  The barrier of jax.distributed's coordination service (jax has no public call for it; orbax's
  public multihost API has), not a device collective: it waits as long as the slowest process
  takes and fails when a process dies.
  """
  ocp.multihost.get_barrier_sync_fn()(key=key, timeout_ms=int(timeout_s * 1000))


class MismatchError(cli.UserError):
  """A checkpoint that does not fit the model it is restored into."""


def _handlers(items):
  known = {"state": ocp.StandardCheckpointHandler, "meta": ocp.JsonCheckpointHandler,
           "data_iter": grain.checkpoint.CheckpointHandler}
  return {k: known[k]() for k in items}


def _manager(path, items, keep=None):
  """keep=None opens existing checkpoints for reading (creates and deletes nothing).

  Each folder's manager syncs processes under its own barrier names: orbax names a save's
  barriers by its step alone, so `checkpoints/` and `best/` saving the same step at once in a
  multi-host run would otherwise meet at one barrier and time out.
  """
  mp = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=os.path.basename(os.path.normpath(path)))
  options = (ocp.CheckpointManagerOptions(create=False, multiprocessing_options=mp) if keep is None else
             ocp.CheckpointManagerOptions(create=True, preservation_policy=pp.LatestN(keep),
                                          cleanup_tmp_directories=True, multiprocessing_options=mp))
  return ocp.CheckpointManager(os.path.abspath(path), options=options, item_handlers=_handlers(items))


def path_name(path):
  """'a/b/0/kernel' of a jax.tree_util key path (the names every error message shows)."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def flat(tree):
  """{path_name: leaf} of a nested tree."""
  return {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _nested(flat_dict):
  out = {}
  for key, value in flat_dict.items():
    *parents, last = key.split("/")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = value
  return out


def check_compatible(saved_meta, abstract, what):
  """Raises MismatchError naming every parameter whose presence or shape differs."""
  saved = {k: tuple(v.shape) for k, v in flat(saved_meta).items() if hasattr(v, "shape")}
  want = {k: tuple(v.shape) for k, v in flat(abstract).items()}
  problems = [f"{k}: checkpoint {saved.get(k, 'missing')} vs model {want.get(k, 'missing')}"
              for k in sorted(set(saved) | set(want)) if saved.get(k) != want.get(k)]
  if problems:
    raise MismatchError(f"{what} does not match the configured model (other architecture or head "
                        f"size?): {len(problems)} mismatched parameter(s): {'; '.join(problems)}")


class Checkpointer:
  """Saves and restores training runs in `workdir`."""

  def __init__(self, workdir, keep=2):
    self.workdir = workdir
    self.latest = _manager(os.path.join(workdir, "checkpoints"), ("state", "data_iter", "meta"), keep)
    self.best = _manager(os.path.join(workdir, "best"), ("state", "meta"), 1)

  def has(self, step):
    self.latest.wait_until_finished()
    return step in self.latest.all_steps()

  def save(self, step, state, data_iter, meta):
    """Starts saving the full training state (asynchronous: see the module docstring).

    Returns:
      False when `step` was already saved (nothing is written), else True.
    """
    self.latest.wait_until_finished()  # The previous save, so that all_steps() is complete.
    if step in self.latest.all_steps():
      return False
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(nnx.to_pure_dict(state)),
        data_iter=grain.checkpoint.CheckpointSave(data_iter),
        meta=ocp.args.JsonSave(meta)), force=True)
    return True

  def best_steps(self):
    self.best.wait_until_finished()
    return self.best.all_steps()

  def save_best(self, step, model_state, meta):
    """Starts saving the model (not the optimizer) as the best one, unless `step` is already there."""
    self.best.wait_until_finished()
    if step in self.best.all_steps():
      return
    self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"model": nnx.to_pure_dict(model_state)}),
        meta=ocp.args.JsonSave(meta)), force=True)

  def wait(self):
    """Blocks until every save started so far is on disk."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def restore_latest(self, abstract_state, data_iter):
    """Restores the newest checkpoint into `data_iter` and returns (state, meta), or None."""
    self.wait()
    step = self.latest.latest_step()
    if step is None:
      return None
    abstract = nnx.to_pure_dict(abstract_state)
    check_compatible(self.latest.item_metadata(step)["state"], abstract,
                     f"Checkpoint {self.latest.directory}/{step}")
    out = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data_iter=grain.checkpoint.CheckpointRestore(data_iter),
        meta=ocp.args.JsonRestore()))
    return _fill(abstract_state, out["state"]), out["meta"]

  def close(self):
    self.latest.close()
    self.best.close()


def _steps(path, items):
  if not os.path.isdir(path):
    return []
  mngr = _manager(path, items)
  try:
    return sorted(mngr.all_steps())
  finally:
    mngr.close()


def _pick(workdir, which):
  """(folder, step) of a run's checkpoint: 'best' (falls back to the newest training checkpoint
  when no evaluation ever saved one, e.g. a run preempted early), 'latest' or a step number."""
  best = _steps(os.path.join(workdir, "best"), ("state", "meta"))
  latest = _steps(os.path.join(workdir, "checkpoints"), ("state", "data_iter", "meta"))
  if which == "best" and best:
    return os.path.join(workdir, "best"), best[-1]
  if which in ("best", "latest"):
    if not latest:
      raise FileNotFoundError(f"No checkpoint in {workdir} (neither best/ nor checkpoints/ has one)")
    return os.path.join(workdir, "checkpoints"), latest[-1]
  step = int(which)
  for sub, steps in (("checkpoints", latest), ("best", best)):
    if step in steps:
      return os.path.join(workdir, sub), step
  raise FileNotFoundError(f"No checkpoint for step {step} in {workdir}; available: "
                          f"{sorted(set(latest) | set(best))}")


def _tree_metadata(item):
  """The saved tree's metadata in one item folder (e.g. RUN/best/STEP/state). Asked of the item's
  handler: a Checkpointer would also look for a step's metadata there and warn, on every restore,
  that it is missing."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    return handler.metadata(epath.Path(item)).tree
  finally:
    handler.close()


def _read_meta(item):
  """The JSON meta item of a step folder (e.g. RUN/best/STEP/meta), asked of its handler."""
  handler = ocp.JsonCheckpointHandler()
  try:
    return handler.restore(epath.Path(item), args=ocp.args.JsonRestore())
  finally:
    handler.close()


def restore_model(workdir, abstract_model, which="best"):
  """Loads only the model (weights and BatchNorm statistics) of a run's checkpoint.

  Args:
    workdir: the run.
    abstract_model: nnx.State of the model with ShapeDtypeStruct leaves (their sharding is
      where the arrays go).
    which: 'best', 'latest' or a step number.

  Returns:
    (model state, meta).
  """
  path, step = _pick(workdir, which)
  item = os.path.join(os.path.abspath(path), str(step), "state")
  target = {"model": nnx.to_pure_dict(abstract_model)}
  saved = _tree_metadata(item)
  with ocp.PyTreeCheckpointer() as ckptr:
    check_compatible({"model": saved.get("model", {})}, target, f"Checkpoint {path}/{step}")
    tree = ckptr.restore(item, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  return _fill(abstract_model, tree["model"]), _read_meta(os.path.join(os.path.abspath(path), str(step), "meta"))


WEIGHTS_INFO = "fakejax_weights.json"


def is_weights(path):
  return os.path.isfile(os.path.join(path, WEIGHTS_INFO))


def save_weights(path, weights, info):
  """Writes one model's arrays ({path: array}) and their `info` dict to the folder `path`."""
  path = os.path.abspath(path)
  if os.path.exists(path):
    raise FileExistsError(f"{path} already exists; remove it or choose another output folder")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(path, "state"), _nested({k: np.asarray(v) for k, v in weights.items()}))
  with open(os.path.join(path, WEIGHTS_INFO), "w") as f:
    json.dump(info, f, indent=2)


def _restore_to_host(path, subtree=None):
  """Restores an orbax tree (or only its `subtree` key) as host numpy arrays, whatever wrote it.

  Read straight into numpy: no device is involved, so this works under any JAX_PLATFORMS (a
  CUDA-only process has no CPU device to restore onto).
  """
  metadata = _tree_metadata(path)
  with ocp.PyTreeCheckpointer() as ckptr:
    if subtree is not None:
      metadata = {subtree: metadata[subtree]}
    restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    tree = ckptr.restore(path, args=ocp.args.PyTreeRestore(
        item=metadata, restore_args=restore_args, partial_restore=subtree is not None))
  tree = jax.tree.map(np.asarray, tree)
  return tree if subtree is None else tree[subtree]


def load_weights(path):
  """(weights {path: array}, info) of a folder written by save_weights."""
  with open(os.path.join(path, WEIGHTS_INFO)) as f:
    info = json.load(f)
  return flat(_restore_to_host(os.path.join(os.path.abspath(path), "state"))), info


def load_run_weights(workdir, which="best"):
  """The model arrays ({path: array}) of a training run's checkpoint ('best', 'latest' or a step)."""
  path, step = _pick(os.path.abspath(workdir), which)
  return flat(_restore_to_host(os.path.join(path, str(step), "state"), "model"))


def _fill(abstract_state, pure):
  """An nnx.State shaped like `abstract_state` holding the restored arrays."""
  state = jax.tree.map(lambda x: x, abstract_state)
  nnx.replace_by_pure_dict(state, pure)
  return state
