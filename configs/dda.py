r"""DDA, Dual Data Alignment (Chen et al., NeurIPS 2025): the recipe of roy-ch/Dual-Data-Alignment.

  python -m fakejax.aligned --reals COCO/train2017 --autoencoder sd2-vae/ --out aligned_coco
  python -m fakejax.prepare --root aligned_coco --out data/aligned_coco
  python -m fakejax.train --config configs/dda.py --config.data.dir=data/aligned_coco \
      --config.model.init_from=timm_dinov2:dinov2_vitl14_pretrain.pth --workdir runs/dda
  python -m fakejax.evaluate --workdir runs/dda --preset dda
  python -m fakejax.train --config configs/dda.py:photo --workdir runs/dda_photo   # smoke scale

The network is DINOv2 ViT-L/14 without registers (models 'dinov2_vit_l14'; the facebookresearch
hub's 'dinov2_vitl14', so its positional embedding is resampled as the hub does: pos_interp='hub'),
frozen, with LoRA of rank 8 and alpha 1 on every block's attn.qkv, attn.proj, mlp.fc1 and mlp.fc2
(model.transfer='lora': only the adapters and the head train, models.lora.TRAINABLE), and their
`fc`, a linear 1024 -> 1 (BCE, scored as [0, z]) on the final-norm class token, initialised
normal(0, 0.02). Its weights come from the user's file: init_from 'timm_dinov2:FILE' reads the
hub's `dinov2_vitl14_pretrain.pth` (torch.hub's cache holds it), timm's or Hugging Face's DINOv2-L
(fakejax.convert.from_timm_dinov2); nothing is downloaded. The default points at the hub's file in
the working directory. DDA normalises with CLIP's mean and std, not DINOv2's ImageNet ones
(model.preprocess='clip'; training logs that the weights expected 'imagenet': DDA's choice).

Sources: Training/train.sh (rank 8, alpha 1, AdamW at 1e-4, batch 16 -> 16 // 6 = 2 sources per
loader batch in data/__init__.py, 4 accumulation steps, 1 epoch, crops of 336), networks/trainer.py
(the LoRA targets, the head's init, AdamW (0.9, 0.999) with options.py's weight_decay 0,
CosineAnnealingLR(T_max=1000, eta_min=lr * 1e-3) stepped after every optimizer step),
data/datasets.py (PadRandomCrop(336): zero pad, then a random crop; CLIP's statistics; JPEG
55-100 at p 0.15, flips, Gaussian noise of std 55 at p 0.1, blur at p 0.2, grayscale at p 0.1;
the same draws for a real and its fake: ComposedTransforms), Inference/inference.py (CenterCrop(336)
without resize, sigmoid of the logit: `evaluate --preset dda`). The data are pairs (data.pairs): each
real with its reconstruction through Stable Diffusion's autoencoder (fakejax.aligned), both
augmented alike. A batch of 16 images is DDA's 8 (real, fake) pairs per update, as 4 micro-batches
of 2 pairs (their loader's); the schedule steps once per update, as theirs, so one epoch is as many
updates as theirs. On several devices set optim.accumulate_steps so that 16 / accumulate_steps is a
multiple of the device count (the update is the same: BCE does not depend on the batch's make-up).
A prepared dataset without a val split trains with --config.data.val_fraction=0.01.

Departures, named:
- The head trains. DDA's get_trainable_params sums the parameters of its fc with a generator that
  it then passes to AdamW exhausted: their optimizer holds the LoRA factors alone and their head
  keeps its random init (normal(0, 0.02), torch's uniform bias). Here it trains, with a zero bias.
- The loss is BCE alone: their 0.5 BCE + 0.5 ContrastiveLoss (pytorch-metric-learning, pos_margin
  0, neg_margin 1, on the L2-normalised class tokens of each forward's 12 images) is not
  replicated.
- No resized copies: each of their sources goes through the model as 6 images (the pair, and the
  pair resized by a factor from U(0.2, 1) and one from U(1, 3.5), each with one of PIL's six
  resamplings), 12 per forward; here the pair alone, 4 per micro-batch.
- The fake's JPEG at its real's quality (their p 0.5 per draw) is fakejax.aligned's, once, at
  build time. Their pixel-mix and frequency-mix (the fake blended with its real in pixels or in
  the whole image's DCT, each at p 0.2 with a share up to 0.8: train.sh) are aug.pixel_mix_* and
  aug.freq_mix_* (augment.mix_pair), drawn with numpy's generator where theirs is Python's.
- Augmentations fakejax's aug block lacks: the vertical flip, pepper noise (p 0.1), the median and
  motion halves of their blur choice, sharpening (p 0.1), ColorJitter(0.4, 0.4, 0.4, hue 0.175) at
  p 0.2 (aug.color_jitter applies every time and has no hue). Their Gaussian half of the blur
  (kernels 3 and 5, sigma U(0.1, 2)) is aug.blur_prob 0.1 with PIL's untruncated kernel; the order
  is fakejax's (noise, blur, JPEG, crop, flip, grayscale) where theirs is JPEG, flips, noise, blur,
  grayscale, crop.
- The best validation accuracy picks the checkpoint `evaluate` loads by default (one evaluation,
  at the end of the epoch: theirs, the last; `--checkpoint latest` is the same here).
The ':photo' variant is no DDA but its chain at smoke scale: the aligned photo benchmark
(data.photo.aligned: 2,000 reals beside their reconstructions through a CPU-size KL autoencoder,
tested on the five other families; ~10 minutes to generate once on 2 cores), a random
dinov2_vit_tiny (64 wide, 2 blocks; no weights to read) with the same rank-8 LoRA and head, 56 px
crops of the 64 px images, batch 32 (16 pairs), 20 epochs (2,500 updates, 2 minutes on 2 cores),
lr 3e-3 and T_max 500. Adapters on a random backbone barely separate the reconstructions (val
accuracy 0.574, held-out accuracy 0.551 / AUC 0.583; 2026-12-07): it tests the chain, not DDA.
"""

from fakejax import defaults
from fakejax import photo


def get_config(arg=None):
  c = defaults.get_config()
  c.model.name = "dinov2_vit_l14"
  c.model.init_from = "timm_dinov2:dinov2_vitl14_pretrain.pth"
  c.model.transfer = "lora"
  c.model.lora_rank = 8
  c.model.lora_alpha = 1.0
  c.model.lora_targets = ("qkv", "proj", "fc1", "fc2")
  c.model.pos_interp = "hub"          # The hub's ViT-L/14 without registers (interpolate_offset 0.1).
  c.model.single_logit = True
  c.model.preprocess = "clip"
  c.model.dropout = 0.0
  c.data.pairs = True
  c.data.train_sources = ()
  c.data.image_size = 336
  c.data.too_small = "zero"           # PadRandomCrop: zero pad to 336 (centred), then a random crop.
  c.aug.crop = "random"
  c.aug.flip = 0.5
  c.aug.jpg_prob = 0.15
  c.aug.jpg_qual = (55, 100)
  c.aug.blur_prob = 0.1               # The Gaussian half of RandomApply(RandomChoice(4 blurs), p=0.2).
  c.aug.blur_sig = (0.1, 2.0)         # torchvision GaussianBlur's default sigma range.
  c.aug.noise_prob = 0.1              # RandomGaussianNoise(std=55, p=0.1): a variance of 55^2.
  c.aug.noise_var = (55.0**2, 55.0**2)
  c.aug.grayscale = 0.1
  c.aug.pixel_mix_prob = 0.2          # train.sh: P_PIXELMIX 0.2, R_PIXELMIX 0.8 (the fake's share).
  c.aug.pixel_mix_ratio = 0.8
  c.aug.freq_mix_prob = 0.2           # P_FREQMIX 0.2, R_FREQMIX 0.8 (the real's share in the DCT).
  c.aug.freq_mix_ratio = 0.8
  c.batch_size = 16
  c.num_epochs = 1
  c.optim.name = "adamw"
  c.optim.lr = 1e-4
  c.optim.weight_decay = 0.0
  c.optim.schedule = "cosine_annealing"
  c.optim.decay_every = 1000          # T_max, in updates.
  c.optim.end_lr = 1e-4 * 1e-3        # eta_min = lr * 0.001.
  c.optim.accumulate_steps = 4
  if arg == "photo":
    c.model.name = "dinov2_vit_tiny"
    c.model.init_from = ""
    c.data.dir = "photo"
    c.data.photo.aligned = True
    c.data.photo.families = (photo.ALIGNED_FAMILY,) + photo.FAMILIES
    c.data.image_size = 56
    c.batch_size = 32
    c.num_epochs = 20
    c.optim.lr = 3e-3
    c.optim.end_lr = 3e-6
    c.optim.decay_every = 500
    c.optim.accumulate_steps = 1
  elif arg:
    raise ValueError(f"configs/dda.py takes no argument or 'photo', got {arg!r}")
  return c
