r"""CNNDetection (Wang et al., CVPR 2020): the recipe of PeterWang512/CNNDetection (commit ea0b562).

  python -m fakejax.convert --from torchvision --model resnet50 resnet50-0676ba61.pth weights/resnet50
  python -m fakejax.train --config configs/cnndetection.py:0.5 --config.data.dir=PREPARED_PROGAN \
      --workdir runs/cnndetection_0.5      # or :0.1, their two released detectors
  python -m fakejax.evaluate --workdir runs/cnndetection_0.5 --preset cnndetection

From train.py, networks/trainer.py, data/datasets.py and options/: torchvision's ResNet-50 from
ImageNet weights with a new fc 2048 -> 1 (normal(0, 0.02)) trained by BCE (one logit, scored as
[0, z]); Adam (0.9, 0.999) at 1e-4, batch 64; ImageNet normalisation; Gaussian blur (sigma
U(0, 3)) and JPEG (quality 30-100) each with probability p (0.5 or 0.1: the variant) before a
random 224 crop and a flip.

Departures, named:
- Their loader resizes the shorter side to 256 first (loadSize); here crops come from the image
  as stored (aug.resize 0): resampling erases the fingerprints, and ProGAN's are 256 px already.
- Their JPEG picks cv2 or PIL at random (jpg_method cv2,pil); here PIL.
- Their lr drops 10x after 5 epochs without a validation gain, until below 1e-6; here a constant
  lr for num_epochs (30), the best validation accuracy kept.
- The head starts as fakejax's ResNet head (torchvision's default), not normal(0, 0.02).

The ':0.5_cpu' and ':0.1_cpu' variants are what scripts/leaderboard.py trains at CPU size: from
scratch with two logits and Adam at 1e-3 (the data, width and steps are the leaderboard's).
"""

from fakejax import defaults

VARIANTS = ("0.5", "0.1", "0.5_cpu", "0.1_cpu")


def get_config(arg="0.5"):
  if arg not in VARIANTS:
    raise ValueError(f"configs/cnndetection.py takes one of {', '.join(VARIANTS)}, got {arg!r}")
  p = float(arg.split("_")[0])
  c = defaults.get_config()
  c.model.name = "resnet50"
  c.model.dropout = 0.0
  c.model.preprocess = "imagenet"
  c.model.single_logit = True
  c.model.init_from = "weights/resnet50"  # python -m fakejax.convert --from torchvision ...
  c.data.image_size = 224
  c.data.synthetic.size = 256
  c.aug.flip = 0.5
  c.aug.blur_prob, c.aug.blur_sig = p, (0.0, 3.0)
  c.aug.jpg_prob, c.aug.jpg_qual, c.aug.jpg_method = p, (30, 100), "pil"
  c.batch_size = 64
  c.num_epochs = 30
  c.optim.name = "adam"
  c.optim.lr = 1e-4
  c.optim.schedule = "constant"
  if arg.endswith("_cpu"):
    c.model.single_logit = False
    c.model.init_from = ""
    c.optim.lr = 1e-3
  return c
