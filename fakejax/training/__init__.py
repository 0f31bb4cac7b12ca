"""Training: one loop, strategies plugged into it.

  trainer     train_and_evaluate: open data -> state -> restore or init -> train -> finalize
  strategies  what trains at each stage with which loss (standard, DeepFD's stages, the probe)
  state       TrainState: the model and optimizers, created sharded, a graph per stage
  step        the jitted, donating update step
  loop        the one loop (run_steps) and the context its phases share
  schedule    when to log, evaluate and checkpoint (functions of the step), the best metric
  optim       optimizers and learning-rate schedules
  losses      cross-entropy and DeepFD's contrastive loss
  probe       the head on cached backbone features (UnivFD)
"""

from fakejax.training.loop import TrainingError
from fakejax.training.state import TrainState
from fakejax.training.step import make_train_step
from fakejax.training.trainer import open_data
from fakejax.training.trainer import train_and_evaluate

__all__ = ["TrainState", "TrainingError", "make_train_step", "open_data", "train_and_evaluate"]
