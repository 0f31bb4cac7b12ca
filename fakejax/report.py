"""Run outputs a person reads: TensorBoard events and plots."""

import csv
import json
import os

from absl import logging
from matplotlib import colormaps
from matplotlib import figure
import numpy as np
from sklearn import metrics as skm
from tensorboardX import SummaryWriter as _TBWriter

from fakejax import cli
from fakejax import metrics as metrics_lib


def figure_and_axes(nrows=1, ncols=1, figsize=None, **kw):
  """A matplotlib Figure and its axes, drawn without pyplot: no backend is set for the process
  (importing this module changes nothing) and nothing global is left to close."""
  fig = figure.Figure(figsize=figsize)
  return fig, fig.subplots(nrows, ncols, **kw)


class RunLog:
  """What a training run writes for people: metrics.jsonl, TensorBoard events (tensorboardX:
  no TensorFlow needed) and curves.png. On every process but one it writes nothing.

  Args:
    workdir: the run folder.
    enabled: False on processes that must not write (processes.is_main()).
    resume_step: lines logged after this step are dropped (a killed run logged them; the
      resumed run logs them again).
  """

  def __init__(self, workdir, enabled=True, resume_step=0):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.curves = os.path.join(workdir, "curves.png")
    if not enabled:
      return
    if os.path.exists(self.path):  # Rewritten whole or not at all: a crash here loses nothing.
      rows = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
      tmp = f"{self.path}.tmp"
      with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
      os.replace(tmp, self.path)
    self._tb = _TBWriter(os.path.join(workdir, "tb"))

  def log(self, rows, kind):
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      for r in rows:
        f.write(json.dumps({"kind": kind, **r}) + "\n")
    for r in rows:
      for k, v in r.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(f"{kind}/{k}", v, r["step"])

  def plot(self):
    if self.enabled:
      plot_curves(self.path, self.curves)

  def close(self):
    if self.enabled:
      self._tb.close()


def read_jsonl(path):
  """The rows of a .jsonl file. A torn last line (the process was killed while writing it) is
  skipped with a warning; a bad line anywhere else is an error naming it."""
  with open(path) as f:
    lines = [l for l in f if l.strip()]
  rows = []
  for i, line in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i < len(lines) - 1:
        raise cli.UserError(f"{path} line {i + 1} is not JSON ({e}); fix or remove that line") from None
      logging.warning("%s: skipping its torn last line (a killed run was writing it): %r", path, line[:80])
  return rows


def plot_curves(metrics_path, out_png):
  """Training loss/accuracy and validation accuracy/AP against the step."""
  rows = read_jsonl(metrics_path)
  train = [r for r in rows if r["kind"] == "train"]
  val = [r for r in rows if r["kind"] == "val"]
  fig, axes = figure_and_axes(1, 2, figsize=(11, 4))
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


# ---------------------------------------------------------------------------
# Evaluation reports.
# ---------------------------------------------------------------------------
TABLE_COLUMNS = ("test_set", "n_real", "n_fake", "accuracy", "plain_accuracy", "real_acc", "fake_acc",
                 "cal_accuracy", "cal_real_acc", "cal_fake_acc", "ap", "plain_ap", "auc", "eer", "top1",
                 "patch_acc", "n_patches")
ROBUSTNESS_COLUMNS = ("perturbation", "strength", "test_set", "accuracy", "real_acc", "ap", "auc", "top1")


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


def _md_table(rows, cols):
  cell = lambda r, c: f"{r[c]:g}" if c == "strength" else _fmt(r.get(c, ""))
  lines = [f"| {' | '.join(cols)} |", "|" + "---|" * len(cols)]
  return lines + [f"| {' | '.join(cell(r, c) for c in cols)} |" for r in rows]


def write_tables(out, rows, info, robustness=()):
  """report.json (everything), report.csv (the table) and report.md (the tables).

  Args:
    out: folder.
    rows: one row per test set, the mean row last.
    info: what was evaluated (mode, view, TTA, checkpoint, ...).
    robustness: rows of the perturbed conditions ('perturbation', 'strength').
  """
  cols = [c for c in TABLE_COLUMNS if any(c in r for r in rows)]
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump({"info": info, "rows": rows, "robustness": list(robustness)}, f, indent=2)
  with open(os.path.join(out, "report.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(cols)
    for r in rows:
      w.writerow([r.get(c, "") for c in cols])
  lines = _md_table(rows, cols)
  for r in rows:
    if "confusion" in r:
      prec, rec = metrics_lib.precision_recall(r["confusion"])
      lines += ["", f"Per-class precision / recall ({r['test_set']}):", "",
                "| class | precision | recall |", "|---|---|---|"]
      lines += [f"| {c} | {_fmt(float(p))} | {_fmt(float(q))} |" for c, p, q in zip(r["classes"], prec, rec)]
  if robustness:
    rcols = [c for c in ROBUSTNESS_COLUMNS if any(c in r for r in robustness)]
    lines += ["", "Robustness (each test set re-scored under each perturbation):", ""]
    lines += _md_table(robustness, rcols)
  view = info.get("view") or {}
  desc = f"mode={info['mode']}" + (f", patch={view.get('patch_size')}" if info["mode"] in (
      "grid", "random", "confident", "mean_logit", "mean_prob") else "")
  if len(info.get("tta", ())) > 1:
    desc += f", TTA over {len(info['tta'])} copies ({', '.join(info['tta'])}; plain_* = identity copy)"
  cal = info.get("calibration")
  if cal:
    desc += (f"; cal_* at threshold {cal['threshold']:.4g}, chosen so that {cal['target_real_acc']:.0%} of "
             f"{cal['n_reals']} reals ({cal['source']}) are called real")
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
  fig, ax = figure_and_axes(figsize=(1.4 * len(metrics) + 3, 0.5 * len(rows) + 1.8))
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


def plot_cross_matrix(matrix, train_names, test_names, out_png, metric="accuracy"):
  """The train-on-each x test-on-all matrix (rows: trained on, columns: tested on)."""
  fig, ax = figure_and_axes(figsize=(1.3 * len(test_names) + 2.5, 0.7 * len(train_names) + 2))
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


def plot_roc(curves, out_png):
  """ROC curve (fake = positive) of each test set."""
  fig, ax = figure_and_axes(figsize=(5.5, 5))
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


def plot_patch_heatmaps(items, patch_size, out_png, class_names):
  """Each image with its per-patch p_fake (grid modes) or its patch boxes (random mode).

  Args:
    items: [(title, uint8 image, scoring.Result)].
    patch_size: patch side.
    out_png: output file.
    class_names: the run's classes (p_fake = 1 - p(real)).
  """
  if not items:
    return
  fig, axes = figure_and_axes(1, len(items), figsize=(3.2 * len(items), 3.6), squeeze=False)
  for ax, (title, img, res) in zip(axes[0], items):
    ax.imshow(img)
    p_fake = 1 - metrics_lib.softmax(np.asarray(res.patch_logits, np.float64))[:, 0]
    if res.grid is not None:
      ny, nx = res.grid
      heat = p_fake.reshape(ny, nx)
      ax.imshow(heat, cmap="coolwarm", vmin=0, vmax=1, alpha=0.45, interpolation="nearest",
                extent=(0, nx * patch_size, ny * patch_size, 0))
      ax.set_xlim(0, img.shape[1])
      ax.set_ylim(img.shape[0], 0)
    pred = class_names[res.pred] if len(class_names) > 2 else ("fake" if res.pred else "real")
    ax.set_title(f"{title}\n{pred}, score {res.score:.2f}", fontsize=8)
    ax.axis("off")
  fig.tight_layout(rect=(0, 0.05, 1, 1))
  fig.text(0.5, 0.01, "overlay: per-patch p(fake), red = fake, blue = real", ha="center", fontsize=9)
  fig.savefig(out_png, dpi=90)


def plot_confusion(confusion, class_names, out_png, title=""):
  """Row-normalised confusion matrix (rows: true class) with the counts in the cells."""
  cm = np.asarray(confusion, np.float64)
  norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  n = len(class_names)
  fig, ax = figure_and_axes(figsize=(0.9 * n + 2.8, 0.8 * n + 2.2))
  im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
  ax.set_xticks(range(n), class_names, rotation=30, ha="right")
  ax.set_yticks(range(n), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  for i in range(n):
    for j in range(n):
      ax.text(j, i, f"{int(cm[i, j])}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=8,
              color="white" if norm[i, j] > 0.6 else "black")
  fig.colorbar(im, ax=ax, fraction=0.04, label="share of the true class")
  ax.set_title(title or "confusion matrix")
  fig.tight_layout()
  fig.savefig(out_png, dpi=90)


STRENGTH_LABELS = {"jpeg": "JPEG quality", "blur": "blur sigma (px)", "resize": "resize factor",
                   "gamma": "gamma", "noise": "noise std (8-bit levels)"}


def plot_robustness(plain, perturbed, out_png):
  """Accuracy and AP against perturbation strength: one panel per kind, one line per test set.

  The unperturbed score is drawn as a dotted line of the same colour.
  """
  kinds = list(dict.fromkeys(r["perturbation"] for r in perturbed))
  metrics = [m for m in ("accuracy", "ap") if any(m in r for r in perturbed)] or ["top1"]
  fig, axes = figure_and_axes(len(metrics), len(kinds), figsize=(4 * len(kinds), 3.3 * len(metrics)),
                           squeeze=False)
  sets = list(dict.fromkeys(r["test_set"] for r in perturbed))
  colours = colormaps["tab10"](np.arange(len(sets)) % 10)
  for col, kind in enumerate(kinds):
    for row, m in enumerate(metrics):
      ax = axes[row, col]
      for s, colour in zip(sets, colours):
        pts = sorted((r["strength"], r[m]) for r in perturbed if r["perturbation"] == kind
                     and r["test_set"] == s and m in r)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colour, label=s)
        base = next((r[m] for r in plain if r["test_set"] == s and m in r), None)
        if base is not None:
          ax.axhline(base, color=colour, ls=":", lw=1)
      ax.set_xlabel(STRENGTH_LABELS.get(kind, f"{kind} strength"))
      ax.set_ylabel(m)
      ax.set_ylim(-0.02 if m != "accuracy" else 0.3, 1.02)
      if kind == "jpeg":
        ax.invert_xaxis()  # Lower quality = stronger.
      if row == 0:
        ax.set_title(kind)
  axes[0, -1].legend(fontsize=7, loc="lower left")
  fig.text(0.5, 0.005, "dotted: unperturbed", ha="center", fontsize=8)
  fig.tight_layout(rect=(0, 0.03, 1, 1))
  fig.savefig(out_png, dpi=90)


# ---------------------------------------------------------------------------
# Explain: Grad-CAM grids, per-class mean maps, spectra (fakejax.explain).
# ---------------------------------------------------------------------------
def plot_gradcam_grid(rows, out_png, title=""):
  """One row per image: the model's input, the Grad-CAM map, the overlay.

  Args:
    rows: [(text, uint8 image HxWx3, map in [0, 1] HxW, uint8 overlay HxWx3)].
    out_png: output file.
    title: figure title.
  """
  if not rows:
    return
  fig, axes = figure_and_axes(len(rows), 3, figsize=(8.4, 2.7 * len(rows) + 0.4), squeeze=False)
  for ax_row, (text, img, cam, over) in zip(axes, rows):
    ax_row[0].imshow(img, interpolation="nearest")
    ax_row[0].set_title(text, fontsize=7, loc="left")
    im = ax_row[1].imshow(cam, cmap="jet", vmin=0, vmax=1, interpolation="nearest")
    ax_row[2].imshow(over, interpolation="nearest")
    for ax in ax_row:
      ax.set_xticks([])
      ax.set_yticks([])
    fig.colorbar(im, ax=ax_row[1], fraction=0.046, pad=0.02)
  for ax, name in zip(axes[-1], ("input", "Grad-CAM (max = 1)", "overlay")):
    ax.set_xlabel(name, fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(out_png, dpi=90)


def plot_class_maps(maps, out_png, title=""):
  """Mean Grad-CAM map of each class (top, one colour scale) and its difference from the mean
  over the classes (bottom): what is particular to each generator.

  Args:
    maps: [(class name, mean map HxW, note)].
    out_png: output file.
    title: figure title.
  """
  n = len(maps)
  rows = 2 if n > 1 else 1
  fig, axes = figure_and_axes(rows, n, figsize=(2.6 * n + 0.8, 2.6 * rows + 0.6), squeeze=False)
  top = max(float(np.max(m)) for _, m, _ in maps) or 1.0
  overall = np.mean([m for _, m, _ in maps], 0)
  diff = max(float(np.max(np.abs(m - overall))) for _, m, _ in maps) or 1.0
  for j, (name, m, note) in enumerate(maps):
    im = axes[0, j].imshow(m, cmap="jet", vmin=0, vmax=top)
    axes[0, j].set_title(f"{name}\n{note}", fontsize=8)
    if rows > 1:
      im2 = axes[1, j].imshow(m - overall, cmap="RdBu_r", vmin=-diff, vmax=diff)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0, 0].set_ylabel("mean map", fontsize=8)
  fig.colorbar(im, ax=axes[0, :].tolist(), fraction=0.02, pad=0.01)
  if rows > 1:
    axes[1, 0].set_ylabel("minus the mean\nover classes", fontsize=8)
    fig.colorbar(im2, ax=axes[1, :].tolist(), fraction=0.02, pad=0.01)
  fig.suptitle(title, fontsize=10)
  fig.savefig(out_png, dpi=90, bbox_inches="tight")


def plot_spectra(spectra, freqs, out_png, title="", reference="real"):
  """Mean residual spectrum (dB) of each class (top, one colour scale) and its difference from
  the reference class (bottom): up-sampling peaks stand out against the real images.

  The Nyquist row and column (-0.5 cycles/pixel) are drawn again at +0.5, so a period-2
  pattern shows on both edges (corners for a checkerboard).

  Args:
    spectra: [(class name, centred dB spectrum SxS, number of images)], S even.
    freqs: the S frequencies (cycles/pixel) of the rows and columns, from -0.5.
    out_png: output file.
    title: figure title.
    reference: the class subtracted in the bottom row (left out when absent).
  """
  n = len(spectra)
  wrap = lambda s: np.concatenate([np.concatenate([s, s[:1]], 0), np.concatenate([s, s[:1]], 0)[:, :1]], 1)
  ref = next((s for c, s, _ in spectra if c == reference), None)
  rows = 2 if ref is not None and n > 1 else 1
  fig, axes = figure_and_axes(rows, n, figsize=(2.7 * n + 0.8, 2.7 * rows + 0.6), squeeze=False)
  d = freqs[1] - freqs[0]
  extent = (freqs[0] - d / 2, 0.5 + d / 2, 0.5 + d / 2, freqs[0] - d / 2)
  centre = len(freqs) // 2
  values = np.concatenate([np.delete(s.ravel(), centre * len(freqs) + centre) for _, s, _ in spectra])
  lo, hi = np.percentile(values, [1, 99.9])  # The residual's DC is ~0 (-120 dB): not the scale.
  if rows > 1:
    dmax = max(float(np.percentile(np.abs(s - ref), 99.9)) for _, s, _ in spectra) or 1.0
  for j, (name, s, count) in enumerate(spectra):
    im = axes[0, j].imshow(wrap(s), cmap="inferno", vmin=lo, vmax=hi, extent=extent)
    axes[0, j].set_title(f"{name} (n={count})", fontsize=8)
    if rows > 1 and name == reference:
      axes[1, j].axis("off")
      axes[1, j].text(0.5, 0.5, f"{reference}:\nthe reference", ha="center", va="center", fontsize=8,
                      transform=axes[1, j].transAxes)
    elif rows > 1:
      im2 = axes[1, j].imshow(wrap(s - ref), cmap="RdBu_r", vmin=-dmax, vmax=dmax, extent=extent)
  for ax in axes.ravel():
    ax.set_xticks([-0.5, 0, 0.5])
    ax.set_yticks([-0.5, 0, 0.5])
    ax.tick_params(labelsize=6)
  axes[-1, -1].set_xlabel("fx (cycles/pixel)", fontsize=7)
  axes[0, 0].set_ylabel("fy (cycles/pixel)", fontsize=7)
  fig.colorbar(im, ax=axes[0, :].tolist(), fraction=0.02, pad=0.01, label="mean 20 log10 |F| (dB)")
  if rows > 1:
    fig.colorbar(im2, ax=axes[1, :].tolist(), fraction=0.02, pad=0.01, label=f"dB above {reference}")
  fig.suptitle(title, fontsize=10)
  fig.savefig(out_png, dpi=90, bbox_inches="tight")


def plot_spectrum_profiles(profiles, out_png, title=""):
  """Azimuthal average of each class's mean residual spectrum against radial frequency.

  Args:
    profiles: [(class name, radii in cycles/pixel, mean dB over each ring)].
    out_png: output file.
    title: figure title.
  """
  fig, ax = figure_and_axes(figsize=(6, 4))
  for name, r, p in profiles:
    ax.plot(r[1:], p[1:], lw=1.2, label=name)  # Radius 0 is the residual's ~0 DC.
  ax.axvline(0.5, color="k", ls=":", lw=0.8)
  ax.set_xlabel("radial frequency (cycles/pixel; 0.5 = Nyquist along an axis)")
  ax.set_ylabel("mean 20 log10 |F| (dB)")
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(out_png, dpi=90)
