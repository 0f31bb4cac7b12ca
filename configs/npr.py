r"""NPR (Tan et al., CVPR 2024): the official recipe of chuangchuangtan/NPR-DeepfakeDetection.

  python -m fakejax.train --config configs/npr.py --config.data.dir=PREPARED_FORENSYNTHS \
      --config.data.train_sources=car,cat,chair,horse --workdir runs/npr
  python -m fakejax.evaluate --workdir runs/npr --preset npr_forensynths   # or npr_gangen
  python -m fakejax.train --config configs/npr.py:photo --workdir runs/npr_photo   # photo benchmark

The network is their truncated ResNet-50 (models 'resnet_trunc': 3x3/2 stem, layer1-2, 1.44M
parameters) with one logit trained by BCE; its input is the nearest-neighbour up-sampling
residual x - up(down(x)) times 2/3 of the ImageNet-normalised image (model.front='npr').
From the README's command and options/: Adam (0.9, 0.999) at 2e-4, batch 32, 50 epochs, the lr
x0.9 after epochs 10, 20, 30 and 40 (delr_freq 10), Resize 256 -> RandomCrop 224 -> flip, no
blur or JPEG (their data_augment call is commented out). Their checkpoint is the last epoch's.

Departures, named: the official code keeps the last epoch and validates only to log; here the
best validation accuracy picks the checkpoint `evaluate` uses by default (`--checkpoint latest` gives
theirs). The ':photo' variant trains on the 64 px photo benchmark: no resize, crops of 64 (the
whole image), 10 epochs (2,000 + 2,000 images, about 10 CPU minutes), the lr x0.9 every 2 epochs.
"""

from fakejax import defaults


def get_config(arg=None):
  c = defaults.get_config()
  c.model.name = "resnet_trunc"
  c.model.front = "npr"
  c.model.single_logit = True
  c.model.preprocess = "imagenet"
  c.model.dropout = 0.0
  c.data.image_size = 224
  c.aug.resize = 256                  # transforms.Resize((256, 256)) before the crop.
  c.aug.flip = 0.5
  c.batch_size = 32
  c.num_epochs = 50
  c.optim.name = "adam"
  c.optim.lr = 2e-4
  c.optim.end_lr = 0.0
  c.optim.schedule = "step"
  c.optim.decay_rate = 0.9
  c.optim.decay_every_epochs = 10
  c.optim.decay_begin_epochs = 1      # `epoch % 10 == 0 and epoch != 0` at the end of 0-based epoch e.
  if arg == "photo":
    c.data.dir = "photo"
    c.data.train_sources = ()
    c.data.image_size = 64
    c.aug.resize = 0
    c.num_epochs = 10
    c.optim.decay_every_epochs = 2
  elif arg:
    raise ValueError(f"configs/npr.py takes no argument or 'photo', got {arg!r}")
  return c
