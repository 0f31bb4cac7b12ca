r"""ResNet-101 (torchvision v1.5 layout) for real vs. fake; otherwise as configs/resnet50.py.

  python -m fakejax.train --config configs/resnet101.py --config.data.dir=PREPARED_DATASET
"""

import os

from fakejax import defaults


def get_config():
  c = defaults.from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "resnet50.py"))
  c.model.name = "resnet101"
  return c
