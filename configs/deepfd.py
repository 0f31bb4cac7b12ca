r"""DeepFD (Hsu et al. 2018): D1 trained with the contrastive loss, then D2 with cross-entropy.

  python -m fakejax.train --config configs/deepfd.py

Both stages run in one command (deepfd.stage1_steps, then deepfd.stage2_steps);
D1 is frozen in stage 2 (--config.deepfd.freeze_d1=False fine-tunes jointly).
On the synthetic benchmark (64x64, the 'tconv' generator), on a 2-core CPU:
a few minutes; held-out accuracy >= 0.90 on 'tconv' (README results table).
"""

from fakejax import defaults


def get_config():
  c = defaults.get_config()
  c.model.name = "deepfd"
  c.model.dropout = 0.0
  c.model.width = 0.5
  c.model.preprocess = "unit"
  c.data.image_size = 64
  c.batch_size = 32
  c.deepfd.stage1_steps = 200
  c.deepfd.stage2_steps = 150
  c.deepfd.margin = 2.0
  c.eval_every_steps = 50
  c.optim.lr = 1e-3
  return c
