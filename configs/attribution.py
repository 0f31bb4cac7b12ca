r"""Multi-class GAN attribution: which generator (or 'real') made this image?

  python -m fakejax.train --config configs/attribution.py
  python -m fakejax.train --config configs/attribution.py --config.data.dir=PREPARED_ATTRIBUTION_DATASET

On the synthetic benchmark the classes are real + the 4 generator families;
a prepared 'attribution' layout gives one class per folder. ResNet-50, Adam
1e-2 decaying to 1e-4 (the schedule of the attribution study), top-1 picks the
best checkpoint.

From torchvision's ImageNet weights (convert them once, see the README), fine-tuned
at a lower rate:

  python -m fakejax.train --config configs/attribution.py:imagenet
"""

from fakejax import defaults


def get_config(start="scratch"):
  c = defaults.get_config()
  c.model.name = "resnet50"
  c.model.dropout = 0.0
  c.data.task = "attribution"
  c.data.train_sources = ()  # Every class.
  c.data.balance = True
  c.data.image_size = 128
  c.data.synthetic.size = 128
  c.batch_size = 64
  c.num_epochs = 30
  c.optim.name = "adam"
  c.optim.lr = 1e-2
  c.optim.end_lr = 1e-4
  c.optim.schedule = "exponential"
  c.best_metric = "top1"
  if start == "imagenet":
    c.model.init_from = "weights/resnet50"  # python -m fakejax.convert --from torchvision ...
    c.optim.lr = 1e-3
    c.optim.end_lr = 1e-5
  elif start != "scratch":
    raise ValueError(f"Unknown start {start!r}; known: scratch, imagenet")
  return c
