r"""UnivFD (Ojha et al., CVPR 2023): a linear probe on CLIP ViT-L/14's image embedding, the recipe
of WisconsinAIVision/UniversalFakeDetect.

  python -m fakejax.train --config configs/univfd.py --config.data.dir=PREPARED_PROGAN \
      --config.model.init_from=clip:open_clip_model.safetensors --workdir runs/univfd
  python -m fakejax.evaluate --workdir runs/univfd --preset univfd
  python -m fakejax.train --config configs/univfd.py:tiny --workdir runs/univfd_tiny   # smoke run

The backbone is CLIP's ViT-L/14 visual tower (models 'clip_vit_l14'), frozen; its weights come
from the user's file (open_clip's `open_clip_model.safetensors` of ViT-L-14 'openai', or OpenAI's
`ViT-L-14.pt`): nothing is downloaded. The head is their `fc`, a linear 768 -> 1 trained by BCE
(one logit, scored as [0, z]). From train.py, trainer.py and options/: --fix_backbone, AdamW
(0.9, 0.999) at 1e-4 without weight decay, batch 256, at most 100 epochs (niter), EarlyStopping
(patience 5, delta 0.001) that divides the lr by 10 and stops below 1e-6 (probe.lr_drop_patience;
fakejax.training.probe), CLIP's
normalisation, crops of 224.

Departures, named:
- The features are computed once (model.cached_features): each image as the evaluator's 'full'
  view sees it, the 224 centre crop (pad with 0 when smaller, as their CenterCrop), instead of
  their per-epoch Resize(256) -> blur/JPEG (prob 0.5 each in their base options) -> RandomCrop(224)
  -> flip. Training is then seconds instead of a ViT-L forward per image per epoch.
- The head keeps the best validation accuracy (theirs is the last epoch's); the head starts as
  theirs, normal(0, 0.02), with a zero bias where torch's default is uniform(+-1/sqrt(768)).
The ':tiny' variant is no UnivFD: a 64 px CLIP-shaped ViT of random weights (clip_vit_tiny) on
the synthetic benchmark, to run the chain without CLIP weights.
"""

from fakejax import defaults


def get_config(arg=None):
  c = defaults.get_config()
  c.model.name = "clip_vit_l14"
  c.model.single_logit = True
  c.model.preprocess = "clip"
  c.model.dropout = 0.0
  c.model.transfer = "linear_probe"
  c.model.cached_features = True
  c.data.image_size = 224
  c.data.too_small = "zero"
  c.aug.crop = "center"
  c.aug.flip = 0.0
  c.batch_size = 256
  c.num_epochs = 100
  c.optim.name = "adamw"
  c.optim.lr = 1e-4
  c.optim.weight_decay = 0.0
  c.probe.lr_drop_patience = 5
  c.eval_batch_size = 64
  if arg == "tiny":
    c.model.name = "clip_vit_tiny"
    c.data.image_size = 64
    c.batch_size = 64
    c.num_epochs = 20
    c.optim.lr = 1e-3
  elif arg:
    raise ValueError(f"configs/univfd.py takes no argument or 'tiny', got {arg!r}")
  return c
