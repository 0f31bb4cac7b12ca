r"""SAFE (Li et al., KDD 2025): the official recipe of Ouxiang-Li/SAFE.

  python -m fakejax.train --config configs/safe.py --config.data.dir=PREPARED_FORENSYNTHS \
      --config.data.train_sources=car,cat,chair,horse --workdir runs/safe
  python -m fakejax.evaluate --workdir runs/safe --preset safe
  python -m fakejax.train --config configs/safe.py:photo --workdir runs/safe_photo   # photo benchmark

The network is their truncated ResNet-50 (models 'resnet_trunc', 1.44M parameters) with two
logits; its input is the HH band of a one-level bior1.3 DWT (symmetric) of the [0, 1] image per
channel, resized bilinearly back to the crop (model.front='safe_dwt', preprocess 'unit').
From scripts/train.sh and main_finetune.py: crops, never resizes: RandomCrop 256 -> flip ->
RandomRotation(180) -> ColorJitter(0.5, 0.5, 0.5) -> RandomMask(ratio 0-0.75, 16 px, p 0.5);
test CenterCrop 256. Label-smoothed (0.1) cross-entropy; AdamW (wd 0.01 on kernels only), lr
blr 1e-2 x 128 / 256 = 5e-3 for their 4 GPUs x 32 = batch 128, one warm-up epoch then a cosine
to 1e-6, 20 epochs; the best validation accuracy picks the checkpoint (as theirs).

Departures, named: RandomCrop's pad_if_needed zero-pads both sides by the shortfall; here
data.too_small='pad' reflects. The ':photo' variant trains on the 64 px photo benchmark: crops of
64 (the whole image), RandomMask patches of 8 px (16 px on a 256 crop is 1/16 of the side: kept
at 1/8 so a 64 px crop still has 64 cells), 10 epochs.
"""

from fakejax import defaults


def get_config(arg=None):
  c = defaults.get_config()
  c.model.name = "resnet_trunc"
  c.model.front = "safe_dwt"
  c.model.preprocess = "unit"         # ToTensor only: no mean/std normalisation.
  c.model.dropout = 0.0
  c.data.image_size = 256
  c.data.too_small = "pad"
  c.aug.flip = 0.5
  c.aug.spin = 180.0
  c.aug.color_jitter = (0.5, 0.5, 0.5)
  c.aug.mask_prob = 0.5
  c.aug.mask_ratio = (0.0, 0.75)
  c.aug.mask_patch = 16
  c.label_smoothing = 0.1
  c.batch_size = 128
  c.num_epochs = 20
  c.optim.name = "adamw"
  c.optim.lr = 1e-2 * 128 / 256
  c.optim.end_lr = 1e-6
  c.optim.weight_decay = 0.01
  c.optim.schedule = "cosine"
  c.optim.warmup_epochs = 1
  if arg == "photo":
    c.data.dir = "photo"
    c.data.train_sources = ()
    c.data.image_size = 64
    c.aug.mask_patch = 8
    c.num_epochs = 10
  elif arg:
    raise ValueError(f"configs/safe.py takes no argument or 'photo', got {arg!r}")
  return c
