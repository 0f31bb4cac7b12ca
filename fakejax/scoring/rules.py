"""Per-image decision rules (host side, hand-checkable): an image's class probabilities from its
inputs' logits, and its verdict."""

import numpy as np

from fakejax import metrics as metrics_lib
from fakejax.scoring.views import VOTING

def decide(rule, logits, threshold=0.5, theta=0.0):
  """Class probabilities of one image from its inputs' logits.

  Args:
    rule: 'mean_prob', 'mean_logit', or a voting mode (VOTING).
    logits: (n_inputs, n_classes).
    threshold: p_fake at or above which a patch is fake (binary voting).
    theta: confidence margin of the 'confident' mode.

  Returns:
    (n_classes,) probabilities; in the voting modes the fraction of votes per class.
  """
  logits = np.asarray(logits, np.float64)
  probs = metrics_lib.softmax(logits)
  n_classes = probs.shape[-1]
  if rule == "mean_prob":
    return probs.mean(0)
  if rule == "mean_logit":
    return metrics_lib.softmax(logits.mean(0))
  if rule not in VOTING:
    raise ValueError(f"Unknown rule {rule!r}")
  if rule == "confident":
    top2 = np.sort(probs, -1)[:, -2:]
    keep = (top2[:, 1] - top2[:, 0]) >= theta
    probs = probs[keep] if keep.any() else probs
  if n_classes == 2:
    fake = (probs[:, 1] >= threshold).mean()
    return np.array([1 - fake, fake])
  return np.bincount(probs.argmax(-1), minlength=n_classes) / len(probs)


def verdict(p, rule, threshold=0.5, has_real=True):
  """(score, predicted class) of an image's probabilities: score = p(fake) = 1 - p(real).

  A voting mode already thresholded each patch: the image is fake when at least half the
  votes are (a tie counts as fake). Without a real class (has_real False: class 0 is a
  generator) there is no p_fake: the score is NaN and the class is the arg-max.
  """
  score = float(1 - p[0]) if has_real else float("nan")
  if len(p) == 2 and has_real:
    return score, int(score >= (0.5 if rule in VOTING else threshold))
  return score, int(np.argmax(p))
