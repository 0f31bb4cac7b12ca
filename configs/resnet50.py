r"""ResNet-50 (torchvision v1.5 layout) for real vs. fake.

  python -m fakejax.train --config configs/resnet50.py --config.data.dir=PREPARED_DATASET

224x224 crops, batch 64, SGD+momentum 3e-3 decaying exponentially to 3e-7 (one of the
studies we reproduce), 30 epochs, ImageNet normalisation.
"""

from fakejax import defaults


def get_config():
  c = defaults.get_config()
  c.model.name = "resnet50"
  c.model.dropout = 0.0
  c.model.preprocess = "imagenet"
  c.data.image_size = 224
  c.data.synthetic.size = 256
  c.batch_size = 64
  c.num_epochs = 30
  c.optim.name = "sgd"
  c.optim.lr = 3e-3
  c.optim.end_lr = 3e-7
  c.optim.schedule = "exponential"
  return c
