"""Run outputs a person reads: TensorBoard events and plots."""

import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from tensorboardX import SummaryWriter as _TBWriter


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
  axes[1].plot([r["step"] for r in train], [r["accuracy"] for r in train], lw=0.8, alpha=0.6,
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
