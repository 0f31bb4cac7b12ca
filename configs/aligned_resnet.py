r"""AlignedForensics (Rajan, Lee et al., ICLR 2025): a ResNet-50 without early down-sampling trained
on aligned pairs, each real beside its reconstruction through a latent-diffusion autoencoder.

  # The aligned data: your reals, their reconstructions (python -m fakejax.aligned), a dataset.
  python -m fakejax.aligned --reals COCO/train2017 --autoencoder sd-vae/ --out aligned_coco
  python -m fakejax.prepare --root aligned_coco --out data/aligned_coco
  python -m fakejax.convert --from torchvision --model resnet50_nodown resnet50-0676ba61.pth weights/r50
  python -m fakejax.train --config configs/aligned_resnet.py --config.data.dir=data/aligned_coco \
      --config.model.init_from=weights/r50 --workdir runs/aligned_resnet
  python -m fakejax.evaluate --workdir runs/aligned_resnet --mode whole --dataset YOUR_TEST_SET \
      --debias jpeg
  # On the embedded photo benchmark (CPU, about 15 minutes): its aligned family, the five test families.
  python -m fakejax.train --config configs/aligned_resnet.py:photo --workdir runs/aligned_photo
  python -m fakejax.evaluate --workdir runs/aligned_photo --debias jpeg:96

From the official code (AniSundar18/AlignedForensics, training_code/): the network is
`res50nodown` (networks/resnet_mod.py, stride0=1: stem convolution and max-pool at stride 1;
here 'resnet50_nodown'), ImageNet weights, dropout 0.5 before a 1-logit head, BCE; Adam
(0.9, 0.999) at 1e-4, no weight decay; batches of 32 reals each with its fake (--batched_syncing:
cap_dset.py reseeds every random generator with one seed for the pair, so both get the same
augmentation: data.pairs); 96 px random crops (pad_if_needed); ImageNet mean/std; the augmentation
of script_train.sh: Gaussian noise (variance 10-50) p 0.2, blur sigma 0-3 p 0.5, JPEG 30-100 p 0.5,
rot90 p 1, horizontal flip, colour jitter 0.4/0.4/0.4 p 0.8, grayscale p 0.2. At test, whole
images at full resolution, sigmoid > 0.5.

Departures, named:
  - lr schedule: theirs divides the lr by 10 when validation accuracy has not improved for 10
    epochs and stops below 1e-6 (no fixed length); here a fixed number of epochs at 1e-4 and the
    best validation accuracy picks the checkpoint.
  - augmentation: RandomResizedCrop(256) p 0.2 and Cutout (one 48 px hole) p 0.2 are not applied;
    colour jitter is applied to every image without hue (theirs p 0.8 with hue 0.1); JPEG is PIL's
    only (theirs draws cv2 or PIL); the pad of a too-small image reflects (theirs: symmetric).
  - head initialisation: torchvision's Linear default (theirs: normal(0, 0.02)).
  - their real/fake pairing reseeds from time.time() (one-second resolution: neighbours in a
    second share draws); here each pair's seed comes from its place in the seeded stream.
  - their fakes are reconstructions through CompVis/ldm-text2im-large-256's autoencoder, saved as
    PNG with no format matching; fakejax.aligned JPEGs a fake like its JPEG real (--fake_jpeg
    none restores theirs).
  - ':photo' (the 64 px photo benchmark, CPU): from scratch (no ImageNet weights on disk), width
    0.25, crops of 48 px, 64 pairs a batch, 4 epochs at lr 1e-3, the whole 64 px image at test
    (about 8 minutes a run on 2 cores); trained on the
    aligned family only (photo.ALIGNED_FAMILY, SD's autoencoder at CPU size), tested on the five
    families it never saw. ':photo_unaligned' is the ablation: the same autoencoder's fakes of
    other crops.
"""

from fakejax import defaults
from fakejax import photo


def get_config(arg=None):
  c = defaults.get_config()
  c.model.name = "resnet50_nodown"
  c.model.single_logit = True
  c.model.preprocess = "imagenet"
  c.model.dropout = 0.5
  c.data.image_size = 96
  c.data.too_small = "pad"
  c.data.pairs = True
  c.data.train_sources = ()
  c.aug.flip = 0.5
  c.aug.noise_prob = 0.2
  c.aug.noise_var = (10.0, 50.0)
  c.aug.blur_prob = 0.5
  c.aug.blur_sig = (0.0, 3.0)
  c.aug.jpg_prob = 0.5
  c.aug.jpg_qual = (30, 100)
  c.aug.rot90 = 1.0
  c.aug.color_jitter = (0.4, 0.4, 0.4)
  c.aug.grayscale = 0.2
  c.batch_size = 64                   # 32 pairs.
  c.num_epochs = 50
  c.optim.name = "adam"
  c.optim.lr = 1e-4
  c.optim.schedule = "constant"
  if arg in ("photo", "photo_unaligned"):
    c.data.dir = "photo"
    c.data.photo.families = (photo.ALIGNED_FAMILY,) + photo.FAMILIES
    c.data.photo.aligned = arg == "photo"
    c.data.pairs = arg == "photo"
    c.data.image_size = 48
    c.model.width = 0.25
    c.batch_size = 128
    c.num_epochs = 4
    c.optim.lr = 1e-3                 # From scratch, 4 epochs: 1e-4 had barely moved the loss after one.
  elif arg:
    raise ValueError(f"configs/aligned_resnet.py takes no argument, 'photo' or 'photo_unaligned', got {arg!r}")
  return c
