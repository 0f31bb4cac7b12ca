"""The train state: model and optimizers, created sharded, with a graph definition per stage."""

from flax import nnx
import jax

from fakejax import models
from fakejax import runs
from fakejax import sharding
from fakejax.training import optim as optim_lib


class TrainState:
  """The graph definitions of a (model, optimizers) collection, per training stage and for eval.

  The arrays live in a separate nnx.State pytree, replicated over the mesh, so the jitted steps
  are pure functions of it and it can be donated. The stages, what each trains and the train /
  eval modes of its parts come from the strategy (training.strategies); each stage has its own
  optimizer.

  The config is read here, once: the step (training.step) takes what it needs from the state
  (`seed`, `dtype`, `accumulate_steps`, the strategy, the schedules), not from the config.

  Args:
    config: the run's config.
    strategy: a training.strategies strategy.
    num_classes: the model's logits.
    mesh: the data mesh.
    steps_per_epoch: what schedule keys in epochs count.
  """

  def __init__(self, config, strategy, num_classes, mesh, steps_per_epoch=1):
    self.strategy = strategy
    self.seed = config.seed  # The default seed of the dropout masks (the step takes it as an argument).
    self.dtype = models.resolve_dtype(config.model.dtype)  # The compute dtype.
    self.accumulate_steps = max(config.optim.accumulate_steps, 1)  # Micro-batches per update.
    self.replicated = sharding.replicated(mesh)
    self.spec = runs.model_spec(config.model, num_classes, mesh)
    self.preprocess = self.spec.preprocess
    self.model_def = self.spec.graph
    self.stage_steps = strategy.stages
    self.lr_fns = {k: optim_lib.create_learning_rate_fn(config.optim, n, steps_per_epoch)
                   for k, n in self.stage_steps.items()}

    def init(seed):
      model = models.from_config(config.model, num_classes, seed=jax.random.key(seed))
      return {"model": model, **{self.optimizer_name(k): nnx.Optimizer(
          model, optim_lib.create_transfer_optimizer(config.optim, self.lr_fns[k], config.model.backbone_lr),
          wrt=strategy.wrt(k)) for k in self.stage_steps}}

    modules = nnx.eval_shape(lambda: init(config.seed))
    self.train_defs = {}
    for k in self.stage_steps:
      strategy.set_train_modes(modules["model"], k)
      self.train_defs[k], abstract = nnx.split(modules)
    self.abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), abstract)
    # Created directly on every device with its final sharding, never on one and copied. The
    # seed is an argument, not a constant: runs that differ only in their seed share one program.
    init_state = jax.jit(lambda seed: nnx.state(init(seed)), out_shardings=self.replicated)
    self.init = lambda: init_state(config.seed)

  @classmethod
  def for_config(cls, config, num_classes, total_steps, mesh, steps_per_epoch=1):
    """The TrainState of the strategy `config` trains with (strategies.for_config)."""
    from fakejax.training import strategies  # pylint: disable=g-import-not-at-top  (strategies import the loop)
    return cls(config, strategies.for_config(config, total_steps), num_classes, mesh, steps_per_epoch)

  @property
  def total_steps(self):
    return sum(self.stage_steps.values())

  @staticmethod
  def optimizer_name(stage):
    """The state key of a stage's optimizer (stage 0 and 1: 'optimizer', as checkpoints hold it)."""
    return "optimizer" if stage in (0, 1) else f"optimizer_stage{stage}"

  def stage_at(self, step):
    """The stage that trains step `step` (0-based)."""
    for k, n in self.stage_steps.items():
      if step < n:
        return k
      step -= n
    return k
