"""What a dataset build reports: per-class formats and sizes, format/size bias, leakage."""

import collections

import numpy as np

from fakejax.datasets.layouts import REAL


def class_stats(formats, heights, widths):
  """Counts, formats and sizes of the records of one class (one value per record in each)."""
  n = len(formats)
  fmts = collections.Counter(str(f) for f in formats)
  sizes = collections.Counter(f"{w}x{h}" for h, w in zip(heights, widths))
  pixels = np.asarray(heights, np.int64) * np.asarray(widths, np.int64)
  return {
      "n": n,
      "formats": dict(fmts),
      "jpeg_share": round(fmts.get("JPEG", 0) / max(n, 1), 4),
      "median_pixels": float(np.median(pixels)) if n else 0.0,
      "top_sizes": dict(sizes.most_common(5)),
  }


def format_bias_warnings(stats):
  """Warnings when real and fake classes differ in file format or image size."""
  out = []
  if REAL not in stats or not stats[REAL]["n"]:
    return out
  real = stats[REAL]
  for cls, s in stats.items():
    if cls == REAL or not s["n"]:
      continue
    if abs(s["jpeg_share"] - real["jpeg_share"]) > 0.1:
      out.append(f"format bias: JPEG share is {real['jpeg_share']:.0%} for real but "
                 f"{s['jpeg_share']:.0%} for {cls}; a detector can learn 'JPEG vs PNG'.")
    ratio = s["median_pixels"] / max(real["median_pixels"], 1)
    if not 0.8 <= ratio <= 1.25:
      out.append(f"size bias: median image of {cls} has {ratio:.2f}x the pixels of real; "
                 "a detector can learn the size instead of the fingerprint.")
  return out


def format_summary(summary):
  """A readable text version of a build summary."""
  lines = [f"layout: {summary['layout']}   classes: {', '.join(summary['classes'])}",
           "examples: " + ", ".join(f"{k}={v}" for k, v in summary["counts"].items())]
  if summary.get("pairs"):
    lines.append("pairs (generator -> real folders): " + ", ".join(
        f"{g}={'+'.join(r)}" for g, r in summary["pairs"].items()))
  for cls, s in summary["class_stats"].items():
    lines.append(f"  {cls:>12}: n={s['n']} formats={s['formats']} jpeg={s['jpeg_share']:.0%} "
                 f"sizes={s['top_sizes']}")
  if summary["skipped"]:
    lines.append(f"skipped {len(summary['skipped'])} file(s):")
    lines += [f"  {s['path']}: {s['reason']}" for s in summary["skipped"][:50]]
    if len(summary["skipped"]) > 50:
      lines.append(f"  ... (all {len(summary['skipped'])} in build_summary.json)")
  if summary["ignored_non_image_files"]:
    lines.append(f"ignored {len(summary['ignored_non_image_files'])} non-image file(s)")
  lk = summary["leakage"]
  if lk["n_hashes_in_several_splits"]:
    lines.append(f"LEAKAGE: {lk['n_hashes_in_several_splits']} image(s) appear in more than one split"
                 + (f"; --dedup removed {len(lk['removed_by_dedup'])}" if lk["removed_by_dedup"]
                    else " (use --dedup to remove them)"))
    lines += [f"  same pixels: {' == '.join(e)}" for e in lk["examples"][:10]]
  if summary.get("speed"):
    sp = summary["speed"]
    lines.append(f"built {sp['images']} images in {sp['seconds']:.1f} s ({sp['images_per_s']:.0f} images/s, "
                 f"{sp['workers']} worker process(es)); {sp['bytes_on_disk'] / 2**20:.1f} MiB on disk "
                 f"({summary.get('storage', 'png')} storage)")
  lines += [f"WARNING {w}" for w in summary["warnings"]]
  return "\n".join(lines)
