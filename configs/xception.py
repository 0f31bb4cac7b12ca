r"""Xception fine-tuned for real vs. fake: the settings of the Xception generalization study.

  python -m fakejax.train --config configs/xception.py --config.data.dir=PREPARED_DATASET

256x256 crops, batch 64, Adam 1e-3, 50 epochs; sweep dropout with
--config.model.dropout=0.0 ... 0.9. On one modern GPU (bfloat16:
--config.model.dtype=bfloat16) expect roughly an hour per 100k images x 50 epochs
per the arithmetic in docs/performance.md; on a CPU use configs/quick.py instead.
"""

from fakejax import defaults


def get_config():
  c = defaults.get_config()
  c.model.name = "xception"
  c.model.dropout = 0.5
  c.data.image_size = 256
  c.data.synthetic.size = 256
  c.batch_size = 64
  c.num_epochs = 50
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  return c
