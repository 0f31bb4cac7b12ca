"""The training losses."""

import jax
import jax.numpy as jnp
import optax

def classification_loss(logits, labels, label_smoothing=0.0):
  """Mean cross-entropy; with `label_smoothing` a, against (1 - a) one-hot + a / classes
  (PyTorch's CrossEntropyLoss(label_smoothing=a), timm's LabelSmoothingCrossEntropy)."""
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  target = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, target).mean()


def contrastive_loss(embeddings, labels, margin):
  """DeepFD's pairwise contrastive loss over every pair of the (global) batch.

  For a pair, p = 1 when both labels agree, E = ||e_i - e_j||_2 and the loss is
  0.5 * (p * E^2 + (1 - p) * max(0, margin - E)^2). Same-label and different-label
  pairs are averaged separately and the two means weighted equally, so both kinds
  count the same in every step whatever the batch's class mix.

  Returns:
    (loss, mean distance of same-label pairs, mean distance of different-label pairs).
  """
  diff = embeddings[:, None, :] - embeddings[None, :, :]
  dist = jnp.sqrt(jnp.sum(diff**2, -1) + 1e-12)
  n = labels.shape[0]
  off_diag = ~jnp.eye(n, dtype=bool)
  same = (labels[:, None] == labels[None, :]) & off_diag
  other = labels[:, None] != labels[None, :]
  mean = lambda v, m: jnp.sum(jnp.where(m, v, 0.0)) / jnp.maximum(jnp.sum(m), 1)
  loss = 0.5 * (mean(dist**2, same) + mean(jnp.maximum(margin - dist, 0.0) ** 2, other))
  return loss, mean(dist, same), mean(dist, other)
