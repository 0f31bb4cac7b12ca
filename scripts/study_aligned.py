r"""Study 7, aligned training data: a detector trained only on reals and their reconstructions.

  python scripts/study_aligned.py                  # the photo benchmark, CPU size
  python scripts/study_aligned.py --quick          # smoke run (a minute)

The finding tested (AlignedForensics, ICLR'25; DDA, NeurIPS'25): trained only on aligned pairs,
each real beside its own reconstruction through a latent-diffusion autoencoder, a detector
generalises to generators it never saw, and better than one trained on the same autoencoder's
fakes of other images. On the photo benchmark (fakejax.photo): the aligned family (SD's KL
autoencoder at CPU size, photo.ALIGNED_FAMILY) is trained on, the five test families are all
unseen.

Points: 'aligned' (configs/aligned_resnet.py:photo: pairs, both augmented alike) and 'unaligned'
(:photo_unaligned, the ablation: the autoencoder's fakes of other crops, no pairs); the same two
for the spectral baseline, 'spectral_aligned' and 'spectral_unaligned' (configs/spectral.py:
logistic regression on the residual's log-spectrum, fitted in seconds). Each run is scored on every test family, whole 64 px images, under four conditions:
  plain          the test set as it is;
  debiased       the fakes alone JPEG'd at 96 (DDA's format-debiased protocol; the reals stay
                 lossless), so a detector that calls JPEGs real is caught;
  jpeg Q         matched post-processing: reals and fakes both JPEG'd at Q (65, 80, 95).
Reported: accuracy at 0.5 and AP per family and their mean, the reals' accuracy (1 - the false-
positive rate on real photographs) in each condition, and the issue's goals checked.
"""

import os

from fakejax import augment
from fakejax import cli
from fakejax import defaults
from fakejax import photo
from fakejax import runs
from fakejax import studies as sc

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
POINTS = {"aligned": ("aligned_resnet.py", "photo"), "unaligned": ("aligned_resnet.py", "photo_unaligned"),
          "spectral_aligned": ("spectral.py", "photo_aligned"),
          "spectral_unaligned": ("spectral.py", "photo_unaligned")}
ABLATIONS = (("aligned", "unaligned"), ("spectral_aligned", "spectral_unaligned"))
CONDITIONS = {"plain": None, "debiased": augment.Perturbation("debias_jpeg", 96),
              **{f"jpeg {q}": augment.Perturbation("jpeg", q) for q in (65, 80, 95)}}
GOALS = (("plain", "accuracy", 0.90), ("plain", "ap", 0.95), ("jpeg 65", "accuracy", 0.85),
         ("jpeg 80", "accuracy", 0.85), ("jpeg 95", "accuracy", 0.85))


def flags():
  p = sc.parser(__doc__, "aligned")
  p.add_argument("--points", default=",".join(POINTS), help="Points to run: " + ", ".join(POINTS))
  return p


def point_config(args, point):
  file, arg = POINTS[point]
  c = defaults.from_file(os.path.join(CONFIGS, file), arg)
  c.data.cache_dir = args.data_cache
  if args.quick:
    sc.set_keys(c, {**sc.TINY_PHOTO, "model.width": 0.125, "data.image_size": 24, "batch_size": 16,
                    "total_steps": 2, "eval_every_steps": 2, "log_every_steps": 1})
  sc.set_keys(c, sc.parse_sets(args.set))
  if c.model.name == "spectral":  # The spectrum of the whole crop the model sees.
    c.model.spectrum_size = c.data.image_size
  return c


def _score(study, run, dataset, point, seed):
  families = [f for f in sc.sources_of(dataset) if f in photo.FAMILIES]
  sets = [sc.test_set(dataset, "test", f, (f,)) for f in families]
  for cond, pert in CONDITIONS.items():
    rows = sc.score(run, dataset, sets, run.view("whole"), perturbation=pert)
    study.add_rows(rows, {"mean": families}, seed=seed, point=point, condition=cond)
  return families


def main(argv=None):
  args = sc.parse(flags(), argv)
  args.benchmark = "photo"
  sc.setup(args)
  study = sc.Study(args, "aligned", "Study 7: aligned training data (AlignedForensics, DDA) on the photo benchmark")
  points = [p for p in args.points.split(",") if p]
  unknown = set(points) - set(POINTS)
  if unknown:
    raise cli.UserError(f"unknown points {sorted(unknown)}; known: {', '.join(POINTS)}")
  families = []
  for seed in study.seeds:
    for point in points:
      config = point_config(args, point)
      run = runs.Run(study.train(config, point, seed))
      families = _score(study, run, study.dataset(config), point, seed)
  return study.finish(_sections(study, points, families), {"points": points, "families": families})


def _sections(study, points, families):
  table = lambda cond, metric: sc.md_table(
      ["trained on"] + families + ["mean"],
      [[p] + [sc.pm(study.values(metric, point=p, condition=cond, set=s)) for s in families + ["mean"]]
       for p in points])
  sections = [(f"{cond}: {metric}", table(cond, metric)) for cond in CONDITIONS
              for metric in ("accuracy", "ap", "real_acc") if cond == "plain" or metric != "ap"]
  goals = [f"- {cond} mean {metric} >= {bar}: {p} {sc.pm(v)} -> **{'met' if v and min(v) >= bar else 'missed'}**"
           for p in points for cond, metric, bar in GOALS
           for v in [study.values(metric, point=p, condition=cond, set="mean")]]
  fpr = [f"- reals called fake at 0.5, {p}, {cond}: at most "
         f"{1 - min(study.values('real_acc', point=p, condition=cond, set='mean') or [1]):.3f} of a family's reals"
         for p in points for cond in CONDITIONS]
  verdicts = []
  for pair in (pair for pair in ABLATIONS if set(pair) <= set(points)):
    for cond in ("plain", "debiased"):
      for metric in ("accuracy", "ap"):
        a, b = (study.values(metric, point=p, condition=cond, set="mean") for p in pair)
        verdicts.append(f"- {cond} mean {metric}, {pair[0]} vs {pair[1]}: {sc.pm(a)} vs {sc.pm(b)} -> "
                        f"**{sc.word(sc.differs(a, b))}**.")
  path = os.path.join(study.out, "fig_7_accuracy.png")
  groups = families + ["mean"]
  sc.plot_bars(path, groups, points, {(g, p): study.values("accuracy", point=p, condition="plain", set=g)
                                      for g in groups for p in points},
               "accuracy at 0.5 (mean ± std over seeds)", "Trained on the aligned family, tested on unseen ones",
               ylim=(0.3, 1.02), hline=(0.5, "chance"))
  return sections + [("Goals (issue 34)", "\n".join(goals + fpr)), ("Alignment", "\n".join(verdicts)
                                                                     or "(no ablation pair run)"),
                     ("Figure", f"![accuracy]({os.path.basename(path)})")]


if __name__ == "__main__":
  sc.entry(main)
