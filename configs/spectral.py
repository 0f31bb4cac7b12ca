r"""The spectral detector: logistic regression on the log-spectrum of the high-pass residual.

  python -m fakejax.train --config configs/spectral.py:photo --workdir runs/spectral_photo   # seconds
  python -m fakejax.evaluate --workdir runs/spectral_photo
  python -m fakejax.train --config configs/spectral.py:photo_aligned --workdir runs/spectral_aligned
  python -m fakejax.evaluate --workdir runs/spectral_aligned --debias jpeg:96
  python -m fakejax.train --config configs/spectral.py --config.data.dir=PREPARED \
      --config.data.image_size=256 --config.model.spectrum_size=256 --workdir runs/spectral

A baseline, not a published repository's recipe: the cue of Durall et al. (CVPR 2020) and Frank
et al. (ICML 2020), the spectrum of the image's fine residual, read by a linear classifier. The
features (models.spectral.log_spectrum) are the grey level of the centre model.spectrum_size
crop minus its 3x3 binomial blur, 20 log10 |orthonormal FFT| (the map explain --spectrum draws),
flattened; they have no parameters. The classifier is scikit-learn's LogisticRegression (lbfgs,
C 0.1, 2000 iterations at most) on the features standardised over the training records, fitted
once on at most 2,000 of them (probe.solver='logistic', probe.max_records, data.seed's draw)
through the cached-feature probe (training.probe): training takes seconds. The run is a run like
any other: `evaluate`, `predict`, `explain` and `serve` score it through its whole forward.

model.spectrum_size must not exceed data.image_size (the crop the model sees); set both
together. The default variant reads the synthetic benchmark, ':photo' the photo benchmark
(trained on its training family, nn_conv), ':photo_aligned' the photo benchmark's aligned pairs
(each real and its reconstruction through the small autoencoder, photo.ALIGNED_FAMILY; the five
test families unseen; configs/aligned_resnet.py's data), ':photo_unaligned' its ablation (the
same autoencoder's fakes of other crops).
"""

from fakejax import defaults
from fakejax import photo


def get_config(arg=None):
  c = defaults.get_config()
  c.model.name = "spectral"
  c.model.single_logit = True         # scikit-learn's binary coefficients: one logit z, scored [0, z].
  c.model.preprocess = "unit"         # A uniform scale of the pixels: the standardised features ignore it.
  c.model.dropout = 0.0
  c.model.transfer = "linear_probe"
  c.model.cached_features = True
  c.model.spectrum_size = 64
  c.data.image_size = 64
  c.probe.solver = "logistic"
  c.probe.C = 0.1
  c.probe.max_records = 2000
  c.batch_size = 64                   # Images per batch of the feature pass.
  variants = ("photo", "photo_aligned", "photo_unaligned")
  if arg in variants:
    c.data.dir = "photo"
    c.data.train_sources = ()         # The photo benchmark's train split holds its training family only.
  if arg in variants[1:]:
    c.data.photo.families = (photo.ALIGNED_FAMILY,) + photo.FAMILIES
    c.data.photo.aligned = arg == "photo_aligned"
  elif arg not in (None, "", "photo"):
    raise ValueError(f"configs/spectral.py takes no argument or one of {', '.join(variants)}, got {arg!r}")
  return c
