"""Detection metrics on host arrays (scikit-learn where it already does the job)."""

import numpy as np
from sklearn import metrics as skm


def softmax(logits):
  z = logits - logits.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def eer(labels, scores):
  """Equal error rate: where the false-positive and false-negative rates cross.

  Over every threshold (all of the ROC's points: sklearn's default drops collinear ones, and
  with them the crossing), from the highest down, fpr rises and fnr falls; the EER is their
  value at the first threshold where fnr <= fpr, linearly interpolated from the one before when
  they are not equal there.
  """
  fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
  fnr = 1 - tpr
  d = fnr - fpr
  i = int(np.argmax(d <= 0))  # d ends at -1 (fpr 1, fnr 0): there is such a point.
  if d[i] == 0 or i == 0:
    return float(fpr[i])
  t = d[i - 1] / (d[i - 1] - d[i])
  return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def binary(labels, p_fake, threshold=0.5):
  """Real/fake metrics with fake as the positive class.

  Args:
    labels: 0 real, 1 fake.
    p_fake: probability of fake.
    threshold: decision threshold on p_fake (p >= threshold is fake).

  Returns:
    dict of n_real, n_fake, accuracy, real_acc, fake_acc, ap, auc, eer (AP/AUC/EER
    are NaN when only one class is present).
  """
  labels = np.asarray(labels).astype(int)
  p_fake = np.asarray(p_fake, np.float64)
  pred = (p_fake >= threshold).astype(int)
  real, fake = labels == 0, labels == 1
  both = real.any() and fake.any()
  return {
      "n_real": int(real.sum()), "n_fake": int(fake.sum()),
      "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
      "real_acc": float((pred[real] == 0).mean()) if real.any() else float("nan"),
      "fake_acc": float((pred[fake] == 1).mean()) if fake.any() else float("nan"),
      "ap": float(skm.average_precision_score(labels, p_fake)) if both else float("nan"),
      "auc": float(skm.roc_auc_score(labels, p_fake)) if both else float("nan"),
      "eer": eer(labels, p_fake) if both else float("nan"),
  }


def threshold_from_reals(p_real, target_real_acc=0.95):
  """The lowest p_fake threshold at which at least `target_real_acc` of these real images are
  called real (p < threshold): chosen from reals only, never from test labels.

  Args:
    p_real: p_fake of real images (held-out reals of the training data, or the user's own).
    target_real_acc: the share of reals to call real, in (0, 1].

  Returns:
    the threshold (float): just above the ceil(target * n)-th smallest score.
  """
  p = np.sort(np.asarray(p_real, np.float64))
  if not len(p):
    raise ValueError("calibration needs at least one real image")
  if not 0 < target_real_acc <= 1:
    raise ValueError(f"target real accuracy must be in (0, 1], got {target_real_acc}")
  k = int(np.ceil(target_real_acc * len(p) - 1e-9))
  return float(np.nextafter(p[k - 1], np.inf))


def attribution(labels, scores, class_names):
  """Top-1 accuracy and confusion matrix (rows: true class, columns: predicted) from per-class
  scores (logits or probabilities)."""
  pred = np.asarray(scores).argmax(-1)
  labels = np.asarray(labels)
  cm = skm.confusion_matrix(labels, pred, labels=range(len(class_names)))
  return {"top1": float((pred == labels).mean()), "n": int(len(labels)),
          "confusion": cm.tolist(), "classes": list(class_names)}


def summarize(labels, probs, class_names, threshold=0.5, loss=True):
  """The metrics of a test set from labels and per-image class probabilities.

  Two classes: real/fake metrics on p_fake = probs[:, 1]. More (attribution): top-1 and the
  confusion matrix, plus real/fake metrics where any non-real class counts as fake.

  Args:
    labels: (n,) class indices.
    probs: (n, n_classes) probabilities (vote fractions in the voting modes).
    class_names: the classes.
    threshold: p_fake at or above which an image is fake.
    loss: also report the cross-entropy (meaningless for vote fractions).
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs, np.float64)
  out = {}
  if loss:
    out["loss"] = float(-np.log(probs[np.arange(len(labels)), labels] + 1e-12).mean())
  if len(class_names) == 2:
    return {**binary(labels, probs[:, 1], threshold), **out}
  out.update(attribution(labels, probs, class_names))
  if "real" in class_names:
    r = class_names.index("real")
    out.update(binary(labels != r, 1 - probs[:, r], threshold))
  return out


def precision_recall(confusion):
  """Per-class precision and recall of a confusion matrix (rows: true, columns: predicted)."""
  cm = np.asarray(confusion, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    precision = np.diag(cm) / cm.sum(0)
    recall = np.diag(cm) / cm.sum(1)
  return precision, recall
