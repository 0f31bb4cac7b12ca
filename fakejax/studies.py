"""What the study scripts (scripts/study_*.py, scripts/leaderboard.py) share: flags, configs, the
seeds loop, test sets, scoring through fakejax.scoring, mean +- std tables, error-bar figures,
the verdict rule.

A study script builds configs, calls `Study.train` once per (point, seed), scores each run with
`score`, `Study.add`s one record per (point, seed, test set) and ends with `Study.finish`, which
writes OUT/results.md (tables, figures, verdicts, command, date, machine), OUT/results.json (every
record) and the figures. Runs live in OUT/runs/<label>_s<seed>_<config hash>: rerunning a study
resumes or reuses finished runs, and a changed setting trains new ones instead of clashing.

The rule for "no difference": two points differ only when their means are further apart than
the sum of their standard deviations over seeds (sample std, ddof=1), i.e. when their
mean +- std error bars do not overlap, and by at least MIN_DIFF (at a ceiling every seed scores
1.000 and the spread is 0: a change in the fourth digit is not a finding); a trend only when the
fitted change over the swept range exceeds the mean std of its points and MIN_DIFF.
"""

import argparse
import ast
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import shlex
import sys
import time

from absl import flags
from absl import logging
import jax
from matplotlib import colormaps
import numpy as np

from fakejax import cli
from fakejax import datasets
from fakejax import defaults
from fakejax import report
from fakejax import scoring
from fakejax import training

# The one tiny shape every --quick run uses (that of tests/conftest.py's tiny_config), so the
# smoke runs of all studies and the other tests share compiled programs through the cache.
TINY = {"model.width": 0.125, "model.middle_blocks": 1, "model.dropout": 0.0, "data.image_size": 32,
        "data.synthetic.size": 32, "data.synthetic.train": 8, "data.synthetic.val": 4,
        "data.synthetic.test": 3, "batch_size": 16, "total_steps": 2, "eval_every_steps": 2,
        "log_every_steps": 1}
# The photo benchmark's --quick size: 32 px crops, generators of 8 steps.
TINY_PHOTO = {"data.photo.size": 32, "data.photo.train": 24, "data.photo.val": 8, "data.photo.test": 32,
              "data.photo.gen_steps": 8}
# The CPU size of the default runs: configs/quick.py's narrow Xception at 64 px.
MIN_DIFF = 0.01  # Smallest difference reported: one test image in a hundred.
CPU = {"model.width": 0.25, "model.middle_blocks": 2, "model.bn_momentum": 0.9, "data.image_size": 64,
       "data.synthetic.size": 64, "batch_size": 32, "log_every_steps": 50}


# ---------------------------------------------------------------------------
# Flags and configs.
# ---------------------------------------------------------------------------
def parser(doc, name):
  """The flags every study takes; a script adds its own."""
  p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default=os.path.join("runs", "studies", name), help="Output folder.")
  p.add_argument("--quick", action="store_true", help="Smoke run: tiny model and data, 1 seed, seconds.")
  p.add_argument("--seeds", type=int, default=None, help="Seeds per point (default 3; --quick: 1).")
  p.add_argument("--data", default="", help="A dataset made by `fakejax.prepare` (default: the "
                 "synthetic benchmark at CPU size; with --data the study's GPU-size settings).")
  p.add_argument("--benchmark", default="synthetic", choices=("synthetic", "photo"),
                 help="The embedded benchmark without --data: 'synthetic' or 'photo' (fakejax.photo).")
  p.add_argument("--data_cache", default="data", help="Where the embedded benchmarks are cached.")
  p.add_argument("--steps", type=int, default=0, help="Training steps of every run (0: the study's).")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="Config override applied to every run last, e.g. --set model.dtype=bfloat16.")
  p.add_argument("--xla_cache", default=os.environ.get("JAX_COMPILATION_CACHE_DIR")
                 or os.path.expanduser("~/.cache/fakejax-xla"),
                 help="Persistent compilation cache (runs of one shape compile once).")
  return p


def parse(p, argv):
  """Parses argv (None: sys.argv) and applies the --quick / --seeds defaults."""
  args = p.parse_args(argv)
  args.argv = list(sys.argv[1:] if argv is None else argv)
  if args.seeds is None:
    args.seeds = 1 if args.quick else 3
  if args.seeds < 1:
    p.error("--seeds must be >= 1")
  return args


def setup(args):
  """Process-wide settings: those of every command (cli.set_process_defaults), the compilation
  cache, quiet library logs, absl flags parsed."""
  cli.set_process_defaults()
  if args.xla_cache:
    jax.config.update("jax_compilation_cache_dir", args.xla_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  logging.set_verbosity(logging.WARNING)  # orbax and grain log every step at INFO.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads absl flags, as under app.run.


def set_keys(config, values):
  """Writes {'a.b': value} into a ConfigDict (tuples for lists)."""
  for key, v in values.items():
    node = config
    *path, last = key.split(".")
    for k in path:
      node = node[k]
    if last not in node:
      raise cli.UserError(f"unknown config key {key!r}")
    node[last] = tuple(v) if isinstance(v, list) else v
  return config


def parse_sets(items):
  """['a.b=1', 'c=x'] -> {'a.b': 1, 'c': 'x'} (Python literals where they parse)."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise cli.UserError(f"--set {item!r}: expected KEY=VALUE")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def base_config(args, gpu=None):
  """The config every run of a study starts from.

  Synthetic benchmark: the CPU size (CPU), or with --quick the tiny one (TINY). With --data:
  the full-size defaults plus the study's GPU-size settings `gpu` ({key: value}).
  """
  c = defaults.get_config()
  c.data.cache_dir = args.data_cache
  if args.data:
    c.data.dir = args.data
    set_keys(c, gpu or {})
  else:
    set_keys(c, TINY if args.quick else CPU)
    if getattr(args, "benchmark", "synthetic") == "photo":
      c.data.dir = "photo"
      c.data.train_sources = ()  # Its train split holds the training family only.
      if args.quick:
        set_keys(c, TINY_PHOTO)
  set_keys(c, parse_sets(getattr(args, "set", [])))  # Study.train applies --set again, last.
  return c


def sizes(args, cpu, quick=None, gpu=None):
  """A study setting at the current size: `quick` with --quick, `gpu` with --data, else `cpu`."""
  if args.quick and quick is not None:
    return quick
  if args.data and gpu is not None:
    return gpu
  return cpu


# ---------------------------------------------------------------------------
# Runs and records.
# ---------------------------------------------------------------------------
def machine():
  """The CPU model, its core count and JAX's devices, for the results header."""
  model = platform.processor() or ""
  try:
    with open("/proc/cpuinfo") as f:
      model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), model)
  except OSError:
    pass
  devs = jax.devices()
  return f"{model}, {os.cpu_count()} cores; JAX {jax.__version__} on {len(devs)} {devs[0].platform} device(s)"


class Study:
  """One study's runs, records and report.

  Args:
    args: the parsed flags (parser()).
    name: short name (file names).
    title: the heading of results.md.
  """

  def __init__(self, args, name, title, script=""):
    self.args, self.name, self.title = args, name, title
    self.script = script or f"study_{name}.py"
    self.out = args.out
    self.records = []
    self.runs = {}  # workdir -> {'label', 'seed', 'seconds', 'reused'}
    self._by_digest = {}  # Identical configs (e.g. a point two sweeps share) train once.
    self.overrides = parse_sets(args.set)
    self.t0 = time.time()
    self.started = datetime.datetime.now().astimezone()
    os.makedirs(self.out, exist_ok=True)

  @property
  def seeds(self):
    return range(self.args.seeds)

  def dataset(self, config):
    """The Dataset a config trains on, --set applied as train() applies it (the synthetic
    benchmark is generated on first use)."""
    config = config.copy_and_resolve_references()
    set_keys(config, self.overrides)
    return datasets.open_dataset(config.data)

  def train(self, config, label, seed):
    """Trains (or resumes, or reuses) one run of `config` with `seed`; returns its workdir.

    The seed sets the initialisation and dropout (config.seed) and the data order and
    augmentation (config.data.seed); --steps and --set apply last.
    """
    config = config.copy_and_resolve_references()
    config.seed = config.data.seed = seed
    if self.args.steps:
      config.total_steps = self.args.steps
    set_keys(config, self.overrides)
    digest = hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:8]
    if digest in self._by_digest:
      return self._by_digest[digest]
    workdir = os.path.join(self.out, "runs", f"{label}_s{seed}_{digest}")
    self._by_digest[digest] = workdir
    t = time.time()
    print(f"[{self.name}] {label} seed {seed} -> {workdir}", flush=True)
    out = training.train_and_evaluate(config, workdir)
    self.runs[workdir] = {"label": label, "seed": seed, "seconds": round(time.time() - t, 1),
                          "reused": bool(out.get("finished"))}  # Finished by an earlier invocation.
    return workdir

  def add(self, **record):
    """One result: the point's keys, 'seed', 'set' and metric values."""
    self.records.append(record)

  def add_rows(self, rows, means=None, **keys):
    """One record per scored set ({set: report row}, numbers only) with the point's `keys`;
    `means` {name: [set names]} adds the mean over those sets (scoring.mean_row) as a set."""
    for name, row in rows.items():
      self.add(**keys, set=name, **{k: v for k, v in row.items() if isinstance(v, (int, float))})
    for name, members in (means or {}).items():
      row = scoring.mean_row([rows[m] for m in members], name)
      self.add(**keys, set=name, **{k: v for k, v in row.items() if isinstance(v, (int, float))})

  def select(self, **match):
    """The records whose keys equal `match`."""
    return [r for r in self.records if all(r.get(k) == v for k, v in match.items())]

  def values(self, metric, **match):
    """[metric of each matching record] (one per seed)."""
    return [r[metric] for r in self.select(**match) if metric in r]

  def finish(self, sections, extra=None):
    """Writes results.md and results.json; returns the Markdown.

    Args:
      sections: [(heading, Markdown text)].
      extra: more JSON-able facts for results.json.
    """
    wall = time.time() - self.t0
    command = "python " + shlex.join([f"scripts/{self.script}"] + self.args.argv)
    data = self.args.data or ("the photo benchmark (fakejax.photo)" if getattr(self.args, "benchmark", "")
                              == "photo" else "the synthetic benchmark (fakejax.synthetic)")
    head = [f"# {self.title}", "",
            f"- Command: `{command}`",
            f"- Date: {self.started:%Y-%m-%d %H:%M %Z}; wall time {wall / 60:.1f} min "
            f"({sum(not r['reused'] for r in self.runs.values())} runs trained, "
            f"{sum(r['reused'] for r in self.runs.values())} reused from an earlier invocation)",
            f"- Machine: {machine()}",
            f"- Data: {data}",
            f"- Seeds per point: {self.args.seeds} (mean +- sample std over seeds; two points differ "
            "only when their mean +- std bars do not overlap)", ""]
    md = "\n".join(head + [f"## {h}\n\n{body.strip()}\n" for h, body in sections])
    with open(os.path.join(self.out, "results.md"), "w") as f:
      f.write(md)
    with open(os.path.join(self.out, "results.json"), "w") as f:
      json.dump({"study": self.name, "command": command, "date": self.started.isoformat(),
                 "wall_seconds": wall, "machine": machine(), "seeds": self.args.seeds,
                 "runs": self.runs, "records": self.records, **(extra or {})}, f, indent=1,
                default=_jsonable)
    print(md, flush=True)
    print(f"results written to {self.out}", flush=True)
    return md


def _jsonable(v):
  if isinstance(v, np.generic):
    return v.item()
  if isinstance(v, np.ndarray):
    return v.tolist()
  raise TypeError(type(v))


def entry(main):
  """Runs a study's main(argv) as a program: bad input is a one-line error, not a traceback."""
  try:
    main(None)
  except cli.USER_ERRORS as e:
    sys.exit(f"{sys.argv[0]}: error: {e}")


# ---------------------------------------------------------------------------
# Test sets and scoring (fakejax.scoring does every forward pass and decision).
# ---------------------------------------------------------------------------
def test_set(dataset, split, name, sources, categories=(), exclude=()):
  """(name, record indices): the fakes of `sources` with the reals they pair with, in the
  given content categories (all when empty) minus `exclude`."""
  return name, dataset.select(split, tuple(sources), tuple(categories), tuple(exclude))


def sources_of(dataset, split="test"):
  """The generators (fake sources) of a split, sorted."""
  idx = dataset.index(split)
  return sorted(str(s) for s in set(idx["source"][idx["label"] == 1]))


def train_source(args, config, dataset):
  """The generator a study trains on: --train_source, else the benchmark's training family
  (synthetic: tconv; photo: data.photo.families[0]), else with --data the train split's first."""
  if getattr(args, "train_source", ""):
    return args.train_source
  if args.data:
    return sources_of(dataset, "train")[0]
  return config.data.photo.families[0] if config.data.dir == "photo" else "tconv"


TRAIN_SOURCE_HELP = ("Generator trained on (default: the benchmark's training family, tconv on synthetic "
                     "and nn_conv on photo; with --data the first generator of the train split).")


def categories_of(dataset, split="test"):
  """The content categories of a split, sorted ('' left out)."""
  return sorted(str(c) for c in set(dataset.index(split)["category"]) if c)


def forward_sets(run, dataset, sets, view, split="test", *, copies=None, perturbation=None):
  """{name: (results, labels)} of the (name, record indices) `sets` of one dataset, each image
  scored once (runs.Run.score_sets)."""
  kw = {"copies": copies} if copies else {}
  return run.score_sets([(dataset, name, idx) for name, idx in sets], view, split, perturbation=perturbation, **kw)


def load_step(run, step):
  """Points a loaded Run at another of its checkpoints (no new compilation: same shapes)."""
  run.load(step)
  return run


def eval_steps(workdir):
  """The steps at which a run was validated (each has a checkpoint when keep_checkpoints allows)."""
  return [r["step"] for r in report.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["kind"] == "val"]


def metrics_of(run, view, results, labels):
  """The report row of some scored images (scoring.set_metrics)."""
  return scoring.set_metrics(results, labels, run.class_names, view, run.config.threshold)


def score(run, dataset, sets, view, split="test", *, copies=None, perturbation=None):
  """{set name: report row} of a run under one view (optional test-time copies, perturbation)."""
  scored = forward_sets(run, dataset, sets, view, split, copies=copies, perturbation=perturbation)
  return {name: metrics_of(run, view, res, labels) for name, (res, labels) in scored.items()}


def revote(results, view, threshold=0.5):
  """The results re-decided under another patch view from their stored per-patch logits.

  The 'confident' and 'mean_*' rules use the grid patches of a 'grid' run; 'random' with k
  patches uses the first k of a 'random' run with more (augment.random_patches draws them in
  order, so they are exactly the k patches a k-patch run draws). The decisions are
  scoring.decide / scoring.verdict, as in any evaluation.
  """
  out = []
  for r in results:
    logits = r.patch_logits[:view.k] if view.mode == "random" else r.patch_logits
    p = scoring.decide(view.rule, logits, threshold, view.theta)
    score_, pred = scoring.verdict(p, view.rule, threshold)
    out.append(dataclasses.replace(r, probs=p, score=score_, pred=pred, copy_scores=(score_,),
                                   n_inputs=len(logits), outputs={"logits": logits}))
  return out


# ---------------------------------------------------------------------------
# Statistics and tables.
# ---------------------------------------------------------------------------
def mean_std(values):
  """(mean, sample std; 0 for one value) of a list, NaN-free; (nan, nan) when empty."""
  v = np.asarray([x for x in values if x == x], np.float64)
  if not len(v):
    return float("nan"), float("nan")
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def pm(values, digits=3):
  """'mean ± std' of a list (n when fewer than the seeds is not shown)."""
  m, s = mean_std(values)
  return "n/a" if m != m else f"{m:.{digits}f} ± {s:.{digits}f}"


def differs(a, b):
  """+1 when a's mean is above b's by more than std_a + std_b (and MIN_DIFF), -1 below, else 0."""
  (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
  if ma != ma or mb != mb or abs(ma - mb) <= max(sa + sb, MIN_DIFF):
    return 0
  return 1 if ma > mb else -1


def trend(x, per_point):
  """Least-squares line through every (x, seed value) pair.

  Args:
    x: the swept values.
    per_point: per x, the values over seeds.

  Returns:
    dict slope, intercept, change (fitted value at max x minus at min x), spread (mean std of
    the points) and sign (+1/-1 when |change| > max(spread, MIN_DIFF), else 0).
  """
  xs = np.concatenate([[xv] * len(v) for xv, v in zip(x, per_point)]).astype(np.float64)
  ys = np.concatenate([np.asarray(v, np.float64) for v in per_point])
  slope, intercept = np.polyfit(xs, ys, 1) if len(set(xs.tolist())) > 1 else (0.0, float(ys.mean()))
  change = float(slope * (max(x) - min(x)))
  spread = float(np.mean([mean_std(v)[1] for v in per_point]))
  return {"slope": float(slope), "intercept": float(intercept), "change": change, "spread": spread,
          "sign": 0 if not np.isfinite(change) or abs(change) <= max(spread, MIN_DIFF) else int(np.sign(change))}


def md_table(columns, rows):
  """A Markdown table: `rows` are lists of cells (strings or numbers)."""
  cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  return "\n".join(lines + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows])


def word(sign, up="higher", down="lower", none="no difference"):
  return {1: up, -1: down, 0: none}[sign]


# ---------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------
def plot_series(path, series, xlabel, ylabel, title="", *, trend_lines=False, xticks=None, ylim=(0.4, 1.02),
                logx=False, hline=None):
  """Mean +- std error bars against x, one line per series, each seed's value as a faint dot.

  Args:
    path: PNG file.
    series: [(label, x values, per-x list of seed values)].
    xlabel, ylabel, title: text.
    trend_lines: also draw each series' least-squares line (dashed) with its slope.
    xticks: tick positions (default: the x values).
    ylim: y range.
    logx: logarithmic x axis (base 2).
    hline: (y, label) of a reference line, e.g. chance.
  """
  fig, ax = report.figure_and_axes(figsize=(5.6, 3.8))
  colours = colormaps["tab10"](np.arange(max(len(series), 1)) % 10)
  for (label, x, per_point), colour in zip(series, colours):
    stats = [mean_std(v) for v in per_point]
    for xv, v in zip(x, per_point):
      ax.plot([xv] * len(v), v, ".", color=colour, alpha=0.35, ms=5)
    if trend_lines and len(x) > 1:
      t = trend(x, per_point)
      xx = np.linspace(min(x), max(x), 50)
      ax.plot(xx, t["slope"] * xx + t["intercept"], "--", color=colour, lw=1)
      label = f"{label} (trend {t['change']:+.3f} over the range)"
    ax.errorbar(x, [m for m, _ in stats], [s for _, s in stats], fmt="o-", color=colour, capsize=3,
                label=label, lw=1.4)
  if hline:
    ax.axhline(hline[0], color="grey", ls=":", lw=1, label=hline[1])
  if logx:
    ax.set_xscale("log", base=2)
  ticks = sorted(xticks if xticks is not None else {xv for _, x, _ in series for xv in x})
  pos = np.log2(ticks) if logx else np.asarray(ticks, float)
  crowded = len(ticks) > 2 and np.diff(pos).min() < 0.06 * (pos[-1] - pos[0])  # Labels would overlap.
  ax.set_xticks(ticks, [f"{t:g}" for t in ticks], rotation=90 if crowded else 0, fontsize=8 if crowded else None)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if ylim:
    ax.set_ylim(*_room_for(ylim, [v for _, _, ys in series for y in ys for v in np.ravel(y)]))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)


def _room_for(ylim, values):
  """ylim, its bottom lowered to a tenth at least 0.05 below the smallest value (a bar under it would
  vanish)."""
  finite = [v for v in values if np.isfinite(v)]
  low = min(finite, default=ylim[0])
  return (min(ylim[0], np.floor(low * 10 - 0.5) / 10), ylim[1])


def plot_bars(path, groups, conditions, values, ylabel, title="", *, ylim=(0.4, 1.02), hline=None):
  """Grouped bars of mean +- std with each seed as a dot.

  Args:
    path: PNG file.
    groups: the x groups (e.g. test sets).
    conditions: the bars in each group (e.g. models).
    values: {(group, condition): [seed values]}.
    ylabel, title: text.
    ylim: y range.
    hline: (y, label) of a reference line.
  """
  fig, ax = report.figure_and_axes(figsize=(max(5.0, 1.1 * len(groups) * max(len(conditions), 1) ** 0.5 + 2) + 1.8, 3.8))
  width = 0.8 / max(len(conditions), 1)
  colours = colormaps["tab10"](np.arange(max(len(conditions), 1)) % 10)
  for j, (cond, colour) in enumerate(zip(conditions, colours)):
    xs = np.arange(len(groups)) + (j - (len(conditions) - 1) / 2) * width
    stats = [mean_std(values.get((g, cond), [])) for g in groups]
    ax.bar(xs, [m for m, _ in stats], width * 0.9, yerr=[s for _, s in stats], capsize=3, color=colour,
           alpha=0.8, label=cond)
    for x, g in zip(xs, groups):
      v = values.get((g, cond), [])
      ax.plot([x] * len(v), v, "k.", ms=3, alpha=0.6)
  if hline:
    ax.axhline(hline[0], color="grey", ls=":", lw=1, label=hline[1])
  ax.set_xticks(np.arange(len(groups)), groups, rotation=15 if len(groups) > 4 else 0, fontsize=8)
  ax.set_ylabel(ylabel)
  if ylim:
    ax.set_ylim(*_room_for(ylim, [v for vs in values.values() for v in vs]))
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # Beside the bars, never over them.
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
