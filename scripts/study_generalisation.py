r"""Study 1, Xception generalisation: (a) content diversity, (b) dropout before the classifier.

  python scripts/study_generalisation.py                      # synthetic benchmark, CPU size
  python scripts/study_generalisation.py --quick              # smoke run (seconds)
  python scripts/study_generalisation.py --data /data/fj/cnndetection --train_source progan \
      --per_category 2000 --n_categories 1,2,4,8,16           # real data, the study's GPU size

The finding tested: (a) with the total number of training images fixed, training on more
content categories (1, 2, 4, ... N) raises accuracy on a content category never seen in
training; (b) the dropout ratio before the classifier (0 to 0.9) changes accuracy on unseen
content and on unseen generators, best at a moderate ratio.

Per seed s, one category is held out (a seeded choice, so the seeds cover different unseen
contents) and the others are put in a seeded order; N categories are the first N of that order
(nested: each N adds categories to the previous one), each with per_category // N images of the
reals and of the training generator's fakes (data.train_per_category). Part (b) trains on all
the seen categories at the largest N. Test sets: 'unseen content' (the training generator on the
held-out category), 'seen content' (the training generator on the training categories) and
'unseen generators' (each other generator on the training categories; their mean).

The synthetic default: all 9 content categories of fakejax.synthetic, the narrow Xception of
configs/quick.py at 64 px, Adam 1e-3, 100 steps of 32 images per run, trained on the 'tconv'
generator (the benchmark's ProGAN stand-in). With --data: full Xception at 256 px, batch 64,
Adam 1e-3, 50 epochs (the study's settings). About 25 minutes on a 2-core CPU.
"""

import os


import numpy as np

from fakejax import runs
from fakejax import studies as sc
from fakejax import cli
from fakejax import synthetic

GPU = {"data.image_size": 256, "batch_size": 64, "num_epochs": 50, "optim.lr": 1e-3}
METRICS = ("accuracy", "ap")


def flags():
  p = sc.parser(__doc__, "generalisation")
  p.add_argument("--parts", default="1a,1b", help="Which parts to run: 1a, 1b or both.")
  p.add_argument("--train_source", default="", help=sc.TRAIN_SOURCE_HELP)
  p.add_argument("--n_categories", default="", help="Numbers of training categories "
                 "(default 1,2,4,8; --quick 1,2).")
  p.add_argument("--per_category", type=int, default=0, help="Training images of each source at "
                 "N=1; N categories get per_category // N each (default 160; --quick 8; with "
                 "--data the smallest category's count).")
  p.add_argument("--dropouts", default="", help="Dropout ratios of part 1b (default 0,0.25,0.5,0.75,0.9; "
                 "--quick 0).")
  p.add_argument("--dropout_1a", type=float, default=None, help="Dropout of the part-1a runs (default 0.5; "
                 "--quick 0); "
                 "the 1b point with the same ratio is the same run.")
  return p


def category_order(categories, seed):
  """(held-out category, the others in a seeded order) for one seed."""
  order = [str(c) for c in np.random.default_rng([seed, 1607]).permutation(sorted(categories))]
  return order[0], order[1:]


def main(argv=None):
  args = sc.parse(flags(), argv)
  sc.setup(args)
  study = sc.Study(args, "generalisation", "Study 1: Xception generalisation (content diversity, dropout)")
  config = sc.base_config(args, GPU)
  photo = config.data.dir == "photo"  # 5 content categories (photo.CATEGORIES): up to 4 seen.
  ns = [int(n) for n in (args.n_categories or sc.sizes(args, "1,2,4" if photo else "1,2,4,8", "1,2")).split(",")]
  dropouts = [float(d) for d in (args.dropouts or sc.sizes(args, "0,0.25,0.5,0.75,0.9", "0")).split(",")]
  dropout_1a = args.dropout_1a if args.dropout_1a is not None else sc.sizes(args, 0.5, 0.0)
  parts = args.parts.split(",")
  if photo:
    config.total_steps = sc.sizes(args, 100, 2)
    config.eval_every_steps = sc.sizes(args, 50, 2)
  elif not args.data:
    config.data.synthetic.categories = synthetic.CATEGORIES  # All 9: part (a) needs many.
    config.data.synthetic.train = args.per_category or sc.sizes(args, 160, 8)
    config.data.synthetic.val = sc.sizes(args, 20, 4)
    config.data.synthetic.test = sc.sizes(args, 60, 3)
    config.total_steps = sc.sizes(args, 100, 2)
    config.eval_every_steps = sc.sizes(args, 50, 2)
  dataset = study.dataset(config)
  source = sc.train_source(args, config, dataset)
  unseen_gens = [g for g in sc.sources_of(dataset) if g != source]
  categories = sc.categories_of(dataset, "train")
  if max(ns) > len(categories) - 1:
    raise cli.UserError(f"--n_categories up to {max(ns)} needs {max(ns) + 1} categories; the data has "
                           f"{len(categories)}: {', '.join(categories)}")
  per_category = args.per_category or (sc.sizes(args, 160, 8) if photo else config.data.synthetic.train)
  if args.data and not args.per_category:
    idx = dataset.index("train")
    per_category = min(int(np.sum((idx["category"] == c) & (idx["source"] == source))) for c in categories)
  config.data.train_sources = (source,)
  config.best_metric = "accuracy"

  def run_point(part, seed, n, dropout, **keys):
    held, order = category_order(categories, seed)
    c = config.copy_and_resolve_references()
    c.model.dropout = dropout
    c.data.train_categories = tuple(order[:n])
    c.data.train_per_category = per_category // n
    workdir = study.train(c, f"{part}_n{n}_d{dropout:g}", seed)
    run = runs.Run(workdir)
    sets = [sc.test_set(dataset, "test", "unseen content", (source,), (held,)),
            sc.test_set(dataset, "test", "seen content", (source,), order[:n])]
    sets += [sc.test_set(dataset, "test", g, (g,), order[:n]) for g in unseen_gens]
    rows = sc.score(run, dataset, sets, run.view("full"))
    study.add_rows(rows, {"unseen generators": unseen_gens} if unseen_gens else None, part=part,
                   seed=seed, held_out=held, n=n, dropout=dropout, **keys)

  for seed in study.seeds:
    if "1a" in parts:
      for n in ns:
        run_point("1a", seed, n, dropout_1a)
    if "1b" in parts:
      for d in dropouts:
        run_point("1b", seed, max(ns), d)

  sections = []
  figures = {}
  if "1a" in parts:
    rows = []
    for n in ns:
      v = lambda s, m: study.values(m, part="1a", n=n, set=s)
      rows.append([n, per_category // n, sc.pm(v("unseen content", "accuracy")), sc.pm(v("unseen content", "ap")),
                   sc.pm(v("seen content", "accuracy")), sc.pm(v("unseen generators", "accuracy")),
                   sc.pm(v("unseen generators", "ap"))])
    table = sc.md_table(["categories N", "images per category", "unseen content acc", "unseen content AP",
                         "seen content acc", "unseen generators acc", "unseen generators AP"], rows)
    verdicts = []
    for m in METRICS:
      per = [study.values(m, part="1a", n=n, set="unseen content") for n in ns]
      t = sc.trend(ns, per)
      ends = sc.differs(per[-1], per[0])
      verdicts.append(f"- Unseen-content {m}: linear trend {t['slope']:+.4f} per category, "
                      f"{t['change']:+.3f} from N={ns[0]} to N={ns[-1]} against a mean spread of "
                      f"{t['spread']:.3f} -> **{sc.word(t['sign'], 'rises', 'falls', 'no trend')}**; "
                      f"N={ns[-1]} vs N={ns[0]}: {sc.word(ends)}.")
      path = os.path.join(study.out, f"fig_1a_{m}.png")
      sc.plot_series(path, [("unseen content", ns, per)] + [
          (s, ns, [study.values(m, part="1a", n=n, set=s) for n in ns])
          for s in ("seen content", "unseen generators") if study.values(m, part="1a", set=s)],
                     "number of training categories (total images fixed)", f"{m} (mean ± std over seeds)",
                     f"1a: content diversity, trained on {source}", trend_lines=True,
                     ylim=(0.4, 1.02) if m == "accuracy" else (0.2, 1.02), hline=(0.5, "chance"))
      figures[f"1a_{m}"] = path
    sections.append(("1a: content diversity (total training images fixed)",
                     f"Trained on {source}; held-out category per seed: "
                     + ", ".join(f"seed {s}: {category_order(categories, s)[0]}" for s in study.seeds)
                     + f".\n\n{table}\n\n" + "\n".join(verdicts)
                     + "\n\n" + "\n".join(f"![{k}]({os.path.basename(p)})" for k, p in figures.items()
                                          if k.startswith("1a"))))
  if "1b" in parts:
    n = max(ns)
    rows = []
    for d in dropouts:
      v = lambda s, m: study.values(m, part="1b", dropout=d, set=s)
      rows.append([f"{d:g}", sc.pm(v("seen content", "accuracy")), sc.pm(v("unseen content", "accuracy")),
                   sc.pm(v("unseen content", "ap")), sc.pm(v("unseen generators", "accuracy")),
                   sc.pm(v("unseen generators", "ap"))])
    table = sc.md_table(["dropout", "seen content acc", "unseen content acc", "unseen content AP",
                         "unseen generators acc", "unseen generators AP"], rows)
    verdicts = []
    for m in METRICS:
      series = []
      for s in ("unseen content", "unseen generators"):
        per = [study.values(m, part="1b", dropout=d, set=s) for d in dropouts]
        if not any(per):
          continue
        series.append((s, dropouts, per))
        verdicts.append(f"- {s} {m}: " + best_interior(dropouts, per))
      path = os.path.join(study.out, f"fig_1b_{m}.png")
      sc.plot_series(path, series, "dropout before the classifier", f"{m} (mean ± std over seeds)",
                     f"1b: dropout, trained on {source} ({n} categories)", trend_lines=True,
                     ylim=(0.4, 1.02) if m == "accuracy" else (0.2, 1.02), hline=(0.5, "chance"))
      figures[f"1b_{m}"] = path
    sections.append(("1b: dropout before the classifier",
                     f"Trained on {source}, {n} categories of {per_category // n} images each; "
                     "'unseen generators' is the mean over " + ", ".join(unseen_gens)
                     + f" on the training categories.\n\n{table}\n\n" + "\n".join(verdicts) + "\n\n"
                     + "\n".join(f"![{k}]({os.path.basename(p)})" for k, p in figures.items()
                                 if k.startswith("1b"))))
  study.finish(sections, {"figures": figures, "train_source": source, "per_category": per_category})
  return study


def best_interior(xs, per):
  """Which x is best by mean, and whether it beats both ends by more than the spread."""
  means = [sc.mean_std(v)[0] for v in per]
  if np.all(np.isnan(means)):
    return "no images in this test set -> **no data**."
  b = int(np.nanargmax(means))
  t = sc.trend(xs, per)
  text = f"best mean at {xs[b]:g} ({sc.pm(per[b])}); linear trend {t['change']:+.3f} over the range"
  if 0 < b < len(xs) - 1 and sc.differs(per[b], per[0]) > 0 and sc.differs(per[b], per[-1]) > 0:
    return text + " -> **best at a moderate ratio** (above both ends beyond the spread)."
  if all(sc.differs(per[b], v) == 0 for v in per):
    return text + " -> **no difference** between ratios (within the spread)."
  return text + " -> **not best at a moderate ratio** (an end is as good or better)."


if __name__ == "__main__":
  sc.entry(main)
