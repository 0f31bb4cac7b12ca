r"""MobileNetV2 (Keras applications architecture) for real vs. fake, from scratch or ImageNet.

  python -m fakejax.train --config configs/mobilenet_v2.py --config.data.dir=PREPARED_DATASET
  # From the Keras ImageNet weights (convert once; see the README):
  python -m fakejax.convert --from keras --model mobilenet_v2 \
      mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5 weights/mobilenet_v2
  python -m fakejax.train --config configs/mobilenet_v2.py:imagenet --config.data.dir=PREPARED_DATASET
"""

from fakejax import defaults


def get_config(start="scratch"):
  c = defaults.get_config()
  c.model.name = "mobilenet_v2"
  c.model.dropout = 0.2
  c.data.image_size = 224
  c.data.synthetic.size = 256
  c.batch_size = 64
  c.num_epochs = 30
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  if start == "imagenet":
    c.model.init_from = "weights/mobilenet_v2"
    c.optim.lr = 1e-4
  elif start != "scratch":
    raise ValueError(f"Unknown start {start!r}; known: scratch, imagenet")
  return c
