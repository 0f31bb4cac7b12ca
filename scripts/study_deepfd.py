r"""Study 5, DeepFD: does the contrastive first stage help on unseen generators?

  python scripts/study_deepfd.py                               # synthetic benchmark, CPU size
  python scripts/study_deepfd.py --quick                       # smoke run (seconds)
  python scripts/study_deepfd.py --data /data/fj/cnndetection --train_source progan \
      --set data.image_size=256 --stage1 20000 --stage2 20000  # real data

DeepFD (Hsu et al. 2018) trains its feature network D1 with a pairwise contrastive loss
(stage 1), then a classifier D2 on D1's features with cross-entropy (stage 2, D1 frozen). The
finding tested: with the contrastive stage, the detector does better on generators it never saw
than without it. Conditions, each with the same total number of steps:
  contrastive + frozen D1   stage 1 then stage 2 (configs/deepfd.py);
  cross-entropy only        no stage 1; D1 and D2 trained together with cross-entropy for
                            stage1 + stage2 steps (the plain-classifier ablation);
  random frozen D1          no stage 1; only D2 trains on the untrained D1 (what stage 2 alone
                            gets; --conditions to leave it out).
Tested on the training generator ('seen') and every other one (their mean: 'unseen').

The synthetic default: configs/deepfd.py (width 0.5, 64 px, 32 images per step, stage 1 200
steps, stage 2 150), trained on 'tconv'. About 15 minutes on a 2-core CPU.
"""

import os


from fakejax import runs
from fakejax import studies as sc
from fakejax import cli
from fakejax import defaults

CONDITIONS = ("contrastive + frozen D1", "cross-entropy only", "random frozen D1")
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "deepfd.py")


def flags():
  p = sc.parser(__doc__, "deepfd")
  p.add_argument("--train_source", default="", help=sc.TRAIN_SOURCE_HELP)
  p.add_argument("--stage1", type=int, default=0, help="Contrastive steps (default: configs/deepfd.py's; "
                 "--quick 2).")
  p.add_argument("--stage2", type=int, default=0, help="Classifier steps (default: configs/deepfd.py's; "
                 "--quick 2).")
  p.add_argument("--conditions", default="", help="Conditions to run (default: all three; --quick the "
                 "first two).")
  return p


def condition_config(base, condition, stage1, stage2):
  """The config of one condition (same total steps in each)."""
  c = base.copy_and_resolve_references()
  if condition == "contrastive + frozen D1":
    c.deepfd.stage1_steps, c.deepfd.stage2_steps, c.deepfd.freeze_d1 = stage1, stage2, True
  elif condition == "cross-entropy only":
    c.deepfd.stage1_steps, c.deepfd.stage2_steps, c.deepfd.freeze_d1 = 0, stage1 + stage2, False
  elif condition == "random frozen D1":
    c.deepfd.stage1_steps, c.deepfd.stage2_steps, c.deepfd.freeze_d1 = 0, stage1 + stage2, True
  else:
    raise cli.UserError(f"Unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
  return c


def main(argv=None):
  args = sc.parse(flags(), argv)
  sc.setup(args)
  study = sc.Study(args, "deepfd", "Study 5: DeepFD with and without the contrastive stage")
  config = sc.base_config(args)
  fd = defaults.from_file(CONFIG)
  config.model = fd.model  # DeepFD's architecture and preprocessing ...
  config.deepfd = fd.deepfd
  config.optim.lr = fd.optim.lr
  if args.quick:
    sc.set_keys(config, {"model.width": sc.TINY["model.width"], "eval_every_steps": 2})
  elif not args.data:
    config.batch_size, config.eval_every_steps = fd.batch_size, fd.eval_every_steps
  stage1 = args.stage1 or sc.sizes(args, fd.deepfd.stage1_steps, 2)
  stage2 = args.stage2 or sc.sizes(args, fd.deepfd.stage2_steps, 2)
  conditions = (args.conditions or sc.sizes(args, ",".join(CONDITIONS), ",".join(CONDITIONS[:2]))).split(",")
  dataset = study.dataset(config)
  source = sc.train_source(args, config, dataset)
  others = [g for g in sc.sources_of(dataset) if g != source]
  config.data.train_sources = (source,)
  sets = [sc.test_set(dataset, "test", g, (g,)) for g in [source] + others]

  for seed in study.seeds:
    for cond in conditions:
      run = runs.Run(study.train(condition_config(config, cond, stage1, stage2), cond.split()[0], seed))
      rows = sc.score(run, dataset, sets, run.view("full"))
      study.add_rows({"seen" if n == source else n: r for n, r in rows.items()},
                     {"unseen": others} if others else None, seed=seed, condition=cond)

  groups = ["seen", "unseen"] + others
  rows = [[cond] + [sc.pm(study.values(m, condition=cond, set=s)) for s in ("seen", "unseen")
                    for m in ("accuracy", "ap")]
          + [sc.pm(study.values("accuracy", condition=cond, set=g)) for g in others] for cond in conditions]
  table = sc.md_table(["condition", "seen acc", "seen AP", "unseen acc", "unseen AP"]
                      + [f"{g} acc" for g in others], rows)
  verdicts = []
  if CONDITIONS[0] in conditions:
    for other in conditions:
      if other == CONDITIONS[0]:
        continue
      for m in ("accuracy", "ap"):
        a, b = study.values(m, condition=CONDITIONS[0], set="unseen"), study.values(m, condition=other, set="unseen")
        verdicts.append(f"- unseen {m}, {CONDITIONS[0]} vs {other}: {sc.pm(a)} vs {sc.pm(b)} -> "
                        f"**{sc.word(sc.differs(a, b))}**.")
  figures = {}
  for m in ("accuracy", "ap"):
    path = os.path.join(study.out, f"fig_5_{m}.png")
    sc.plot_bars(path, groups, conditions, {(g, c): study.values(m, condition=c, set=g)
                                            for g in groups for c in conditions},
                 f"{m} (mean ± std over seeds)", f"DeepFD trained on {source} ({stage1} + {stage2} steps)",
                 ylim=(0.4, 1.02) if m == "accuracy" else (0.2, 1.02), hline=(0.5, "chance"))
    figures[m] = path
  study.finish([("DeepFD: with vs without the contrastive stage",
                 f"Trained on {source}; stage 1 {stage1} steps, stage 2 {stage2} steps (the ablations train "
                 f"{stage1 + stage2} steps of cross-entropy); unseen = mean over {', '.join(others)}.\n\n{table}\n\n"
                 + "\n".join(verdicts) + "\n\n" + "\n".join(f"![{k}]({os.path.basename(p)})"
                                                           for k, p in figures.items()))],
               {"figures": figures, "train_source": source, "stage1": stage1, "stage2": stage2})
  return study


if __name__ == "__main__":
  sc.entry(main)
