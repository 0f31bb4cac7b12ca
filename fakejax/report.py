"""Run outputs a person reads: TensorBoard events and plots."""

import csv
import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top
from tensorboardX import SummaryWriter as _TBWriter  # pylint: disable=g-import-not-at-top


class SummaryWriter:
  """TensorBoard scalars under `workdir/tb` (tensorboardX: no TensorFlow needed)."""

  def __init__(self, workdir):
    self._w = _TBWriter(os.path.join(workdir, "tb"))

  def scalars(self, prefix, row, step):
    for k, v in row.items():
      if k != "step" and isinstance(v, (int, float)):
        self._w.add_scalar(f"{prefix}/{k}", v, step)

  def close(self):
    self._w.close()


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def plot_curves(metrics_path, out_png):
  """Training loss/accuracy and validation accuracy/AP against the step."""
  rows = read_jsonl(metrics_path)
  train = [r for r in rows if r["kind"] == "train"]
  val = [r for r in rows if r["kind"] == "val"]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, label="train loss")
  if val and "loss" in val[0]:
    axes[0].plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val loss")
  axes[0].set_xlabel("step")
  axes[0].set_ylabel("cross-entropy")
  axes[0].set_yscale("log")
  axes[0].legend()
  acc = [r for r in train if "accuracy" in r]  # DeepFD's contrastive stage has no accuracy.
  axes[1].plot([r["step"] for r in acc], [r["accuracy"] for r in acc], lw=0.8, alpha=0.6,
               label="train accuracy (batch)")
  for key in ("accuracy", "ap", "top1"):
    if val and key in val[0]:
      axes[1].plot([r["step"] for r in val], [r[key] for r in val], "o-", label=f"val {key}")
  axes[1].set_xlabel("step")
  axes[1].set_ylim(0, 1.02)
  axes[1].legend(loc="lower right")
  fig.suptitle(os.path.basename(os.path.dirname(os.path.abspath(metrics_path))))
  fig.tight_layout()
  fig.savefig(out_png, dpi=90)
  plt.close(fig)


# ---------------------------------------------------------------------------
# Evaluation reports.
# ---------------------------------------------------------------------------
TABLE_COLUMNS = ("test_set", "n_real", "n_fake", "accuracy", "real_acc", "fake_acc", "ap", "auc",
                 "eer", "top1", "patch_acc", "n_patches")


def training_indicators(metrics_path):
  """The patch-study indicators of a run from its validation history.

  Returns:
    best (top-1) validation accuracy, mean of the 5 best evaluations, mean over all.
  """
  if not os.path.exists(metrics_path):
    return {}
  acc = [r.get("accuracy", r.get("top1")) for r in read_jsonl(metrics_path) if r["kind"] == "val"]
  acc = sorted((a for a in acc if a is not None), reverse=True)
  if not acc:
    return {}
  return {"best_val_accuracy": acc[0], "mean_top5_val_accuracy": float(np.mean(acc[:5])),
          "mean_val_accuracy": float(np.mean(acc)), "n_evals": len(acc)}


def _fmt(v):
  if isinstance(v, float):
    return "nan" if v != v else f"{v:.4f}"
  return str(v)


def write_tables(out, rows, info):
  """report.json (everything), report.csv and report.md (the table)."""
  cols = [c for c in TABLE_COLUMNS if any(c in r for r in rows)]
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump({"info": info, "rows": rows}, f, indent=2)
  with open(os.path.join(out, "report.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(cols)
    for r in rows:
      w.writerow([r.get(c, "") for c in cols])
  lines = [f"| {' | '.join(cols)} |", "|" + "---|" * len(cols)]
  lines += [f"| {' | '.join(_fmt(r.get(c, '')) for c in cols)} |" for r in rows]
  desc = f"mode={info['mode']}" + (f", patch={info['patch_size']}" if info.get("patch_size") else "")
  ind = info.get("training_indicators") or {}
  if ind:
    lines += ["", "Validation accuracy during training: best {best_val_accuracy:.4f}, mean of the 5 "
              "best {mean_top5_val_accuracy:.4f}, mean of all {mean_val_accuracy:.4f} "
              "({n_evals} evaluations).".format(**ind)]
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(f"Checkpoint step {info.get('checkpoint_step')}, split {info.get('split')}, {desc}\n\n")
    f.write("\n".join(lines) + "\n")


def plot_matrix(rows, out_png, title="", metrics=("accuracy", "real_acc", "fake_acc", "ap", "auc")):
  """Test sets x metrics heatmap with the numbers written in."""
  metrics = [m for m in metrics if any(m in r for r in rows)] or ["top1"]
  data = np.array([[r.get(m, np.nan) for m in metrics] for r in rows], float)
  fig, ax = plt.subplots(figsize=(1.4 * len(metrics) + 3, 0.5 * len(rows) + 1.8))
  im = ax.imshow(data, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
  ax.set_xticks(range(len(metrics)), metrics)
  ax.set_yticks(range(len(rows)), [r["test_set"] for r in rows])
  for i in range(data.shape[0]):
    for j in range(data.shape[1]):
      ax.text(j, i, _fmt(float(data[i, j])), ha="center", va="center", fontsize=9)
  fig.colorbar(im, ax=ax, fraction=0.04)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(out_png, dpi=90)
  plt.close(fig)


def plot_cross_matrix(matrix, train_names, test_names, out_png, metric="accuracy"):
  """The train-on-each x test-on-all matrix (rows: trained on, columns: tested on)."""
  fig, ax = plt.subplots(figsize=(1.3 * len(test_names) + 2.5, 0.7 * len(train_names) + 2))
  im = ax.imshow(matrix, vmin=0.5 if metric == "accuracy" else 0, vmax=1, cmap="RdYlGn")
  ax.set_xticks(range(len(test_names)), test_names, rotation=30, ha="right")
  ax.set_yticks(range(len(train_names)), train_names)
  ax.set_xlabel("tested on")
  ax.set_ylabel("trained on")
  for i in range(matrix.shape[0]):
    for j in range(matrix.shape[1]):
      ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=10)
  fig.colorbar(im, ax=ax, fraction=0.04, label=metric)
  ax.set_title(f"cross-generator {metric}")
  fig.tight_layout()
  fig.savefig(out_png, dpi=90)
  plt.close(fig)


def plot_roc(curves, out_png):
  """ROC curve (fake = positive) of each test set."""
  fig, ax = plt.subplots(figsize=(5.5, 5))
  for name, (labels, scores) in curves.items():
    if len(set(np.asarray(labels).tolist())) < 2:
      continue
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    ax.plot(fpr, tpr, label=f"{name} (AUC {skm.roc_auc_score(labels, scores):.3f})")
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax.set_xlabel("false positive rate (real called fake)")
  ax.set_ylabel("true positive rate (fake caught)")
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(out_png, dpi=90)
  plt.close(fig)


def plot_patch_heatmaps(items, patch_size, out_png, class_names):
  """Each image with its per-patch p_fake (grid modes) or its patch boxes (random mode).

  Args:
    items: [(title, uint8 image, per-image result from inference.score_images)].
    patch_size: patch side.
    out_png: output file.
    class_names: the run's classes (p_fake = 1 - p(real)).
  """
  if not items:
    return
  fig, axes = plt.subplots(1, len(items), figsize=(3.2 * len(items), 3.6), squeeze=False)
  for ax, (title, img, res) in zip(axes[0], items):
    ax.imshow(img)
    logits = res["patch_logits"]
    z = np.exp(logits - logits.max(-1, keepdims=True))
    p_fake = 1 - (z / z.sum(-1, keepdims=True))[:, 0]
    if res["grid"] is not None:
      ny, nx = res["grid"]
      heat = p_fake.reshape(ny, nx)
      ax.imshow(heat, cmap="coolwarm", vmin=0, vmax=1, alpha=0.45, interpolation="nearest",
                extent=(0, nx * patch_size, ny * patch_size, 0))
      ax.set_xlim(0, img.shape[1])
      ax.set_ylim(img.shape[0], 0)
    pred = class_names[res["pred"]] if len(class_names) > 2 else ("fake" if res["pred"] else "real")
    ax.set_title(f"{title}\n{pred}, score {res['score']:.2f}", fontsize=8)
    ax.axis("off")
  fig.tight_layout(rect=(0, 0.05, 1, 1))
  fig.text(0.5, 0.01, "overlay: per-patch p(fake), red = fake, blue = real", ha="center", fontsize=9)
  fig.savefig(out_png, dpi=90)
  plt.close(fig)
