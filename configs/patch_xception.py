r"""Patch-level training (the patch-wise detection study): Xception on K random 32x32 patches.

  python -m fakejax.train --config configs/patch_xception.py [--config.data.patch_size=64]

Each image contributes K patches (labels repeated); batch_size counts patches.
Image-level decisions (voting over patches) come from fakejax.evaluate.
"""

from fakejax import defaults


def get_config():
  c = defaults.get_config()
  c.model.name = "xception"
  c.model.dropout = 0.5
  c.data.patches_per_image = 8
  c.data.patch_size = 32
  c.data.image_size = 32        # Evaluation crops patches of the same size.
  c.data.synthetic.size = 128
  c.batch_size = 256            # 32 images x 8 patches.
  c.num_epochs = 30
  c.optim.lr = 1e-3
  return c
