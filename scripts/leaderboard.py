r"""The leaderboard: recipes x training family -> the field's per-generator table.

  python scripts/leaderboard.py --benchmark photo                    # photo benchmark, CPU size
  python scripts/leaderboard.py --benchmark photo --set data.photo.postprocess="'jpeg:65-100'"
  python scripts/leaderboard.py                                      # synthetic benchmark
  python scripts/leaderboard.py --data /data/fj/cnndetection --train_family progan   # real data
  python scripts/leaderboard.py --benchmark photo --debias           # also format-debiased
  python scripts/leaderboard.py --quick                              # smoke run (tests)

Each recipe is trained on one family (per seed) and scored on every generator of the test split,
each against its own reals: accuracy at 0.5, AP, real_acc, fake_acc, and the unweighted mean over
the generators not trained on (the field's "mean" row, here without the training family),
mean +- std over seeds. Each recipe is also scored at a threshold calibrated on reals only: the
one that calls 95 % of the val split's reals real (cal_accuracy, cal_real_acc); never a threshold
chosen on test labels. With --debias every test set is also scored format-debiased (DDA's
protocol: the fakes alone JPEG'd at 96, the reals as they are; columns 'debiased mean unseen').
Writes OUT/results.md (the table, a verdict, the figure), results.json
and leaderboard_FAMILY.png (with --debias also leaderboard_FAMILY_debiased.png: each recipe's mean
unseen accuracy, plain beside debiased).

The recipes (their configs, at the benchmark's size):
  xception         the seeds' Xception (configs/quick.py's narrow one at CPU size)
  cnndet_p0.5      CNNDetection (Wang et al. 2020; configs/cnndetection.py): ResNet-50, blur + JPEG
                   each with p 0.5
  cnndet_p0.1      the same with p 0.1
  patch_xception   Xception on 32 px patches, majority vote over the grid (Chai et al. 2020)
  deepfd           DeepFD: contrastive D1, then D2 (configs/deepfd.py)
  npr              NPR (configs/npr.py): its truncated ResNet on the up-sampling residual
  safe             SAFE (configs/safe.py): its truncated ResNet on the bior1.3 HH band
  safe_vote        SAFE's runs scored by patch voting (Chai et al.): a grid of 16 px patches, the
                   image fake when at least half of them are
  npr+safe         the two together: the mean of NPR's and SAFE's p(fake) for each image (the
                   same seed's runs)
  spectral         logistic regression on the log-spectrum of the high-pass residual
                   (configs/spectral.py: scikit-learn's, fitted on 2,000 training images)

At CPU size (no --data) every neural recipe trains --steps steps (default 500) of batch 32 at
64 px with its own model, input, augmentation, loss and optimiser; the from-scratch ResNet-50 and
Xception are narrowed (model.width 0.25) like the studies' runs, NPR's and SAFE's networks are
used whole (1.44M parameters); CNNDetection starts from scratch here (theirs from ImageNet) with
two logits and Adam 1e-3 instead of their one and 1e-4 (configs/cnndetection.py:0.5_cpu); SAFE's
lr follows its rule, 1e-2 x batch / 256. Everything is
scored with the 'full' view (the 64 px image).
"""

import os


import numpy as np

from fakejax import augment
from fakejax import runs
from fakejax import studies as sc
from fakejax import cli
from fakejax import defaults
from fakejax import metrics as metrics_lib
from fakejax import scoring

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
RECIPES = ("xception", "cnndet_p0.5", "cnndet_p0.1", "patch_xception", "deepfd", "npr", "safe", "safe_vote",
           "npr+safe", "spectral")
COLUMNS = ("accuracy", "ap", "real_acc", "fake_acc", "cal_accuracy", "cal_real_acc")
TARGET_REAL_ACC = 0.95  # The calibrated threshold calls this share of the val reals real.
# --debias: DDA's format-debiased protocol, the fakes alone JPEG'd at 96 (the reals as they are).
DEBIAS = augment.Perturbation("debias_jpeg", 96)
DEBIASED = "debiased "  # The prefix of the debiased sets' names.
DEBIASED_COLUMNS = ("accuracy", "ap", "real_acc")


def flags():
  p = sc.parser(__doc__, "leaderboard")
  p.add_argument("--recipes", default=",".join(RECIPES), help="Comma-separated subset of: " + ", ".join(RECIPES))
  p.add_argument("--debias", action="store_true", help="Also score every test set format-debiased (the "
                 "fakes alone JPEG'd at 96, DDA's protocol): columns 'debiased mean unseen'.")
  p.add_argument("--train_family", default="", help="Comma-separated families trained on, one table each "
                 "(default: the benchmark's training family, tconv on synthetic and nn_conv on photo; with "
                 "--data the first generator of the train split). On the photo benchmark another family "
                 "sets data.photo.train_all.")
  return p


def _from_file(name, arg=None):
  return defaults.from_file(os.path.join(CONFIGS, name), arg)


def recipe_config(name, base, args):
  """The config of recipe `name` with the benchmark's data and size from `base`."""
  if name == "xception":
    c = base.copy_and_resolve_references()
  elif name.startswith("cnndet_p"):
    c = _from_file("cnndetection.py", f"{name[len('cnndet_p'):]}_cpu")
  elif name == "patch_xception":
    c = _from_file("patch_xception.py")
  elif name == "deepfd":
    c = _from_file("deepfd.py")
  elif name in ("npr", "safe"):
    c = _from_file(f"{name}.py", "photo")
  elif name == "spectral":
    c = _from_file("spectral.py")
  else:
    raise cli.UserError(f"Unknown recipe {name!r}; known: {', '.join(RECIPES)}")
  c.data = base.data.copy_and_resolve_references()
  if name == "spectral":  # Fitted on a seeded draw of the training images, on the whole image's spectrum.
    c.model.spectrum_size = c.data.image_size
    c.probe.max_records = sc.sizes(args, 2000, 16)
    c.data.workers = 0
    return c
  if name == "patch_xception":
    c.data.patches_per_image, c.data.patch_size = 8, base.data.image_size // 2
    c.data.image_size = c.data.patch_size
    c.batch_size = base.batch_size * 8
  if name in ("npr", "safe"):
    c.batch_size = base.batch_size
    if name == "safe":  # SAFE's rule: lr = blr (1e-2) x batch / 256.
      c.optim.lr = 1e-2 * c.batch_size / 256
  elif not args.data:  # The studies' CPU width for the large from-scratch networks.
    c.model.width = base.model.width
    if name != "deepfd":
      c.model.middle_blocks = base.model.middle_blocks
  if not args.data:
    steps = args.steps or (2 if args.quick else 500)
    if name == "deepfd":
      c.deepfd.stage1_steps = c.deepfd.stage2_steps = max(steps // 2, 1)
    c.total_steps = steps
    c.eval_every_steps = max(steps // 4, 1)
    c.log_every_steps = max(steps // 10, 1)
  c.data.workers = 0
  return c


def val_reals(dataset):
  """The reals of the val split: where every recipe's threshold is calibrated."""
  return np.flatnonzero(dataset.index("val")["label"] == 0)


def neural_scores(study, recipe, base, args, source, seed, dataset, sets):
  """Trains (or reuses) one recipe's run: ({set: (labels, p_fake)}, p_fake of the val reals)."""
  trained = "safe" if recipe == "safe_vote" else recipe  # Scored otherwise, trained the same.
  config = recipe_config(trained, base, args)
  run = runs.Run(study.train(config, f"{trained}_{source}", seed))
  if recipe == "patch_xception":
    view = run.view("grid", patch_size=config.data.patch_size)
  elif recipe == "safe_vote":
    view = run.view("grid", patch_size=16)
  else:
    view = run.view("full")
  res = sc.forward_sets(run, dataset, sets, view)
  if args.debias:
    debiased = sc.forward_sets(run, dataset, sets, view, perturbation=DEBIAS)
    res.update({f"{DEBIASED}{name}": scored for name, scored in debiased.items()})
  reals = sc.forward_sets(run, dataset, [("val reals", val_reals(dataset))], view, split="val")["val reals"][0]
  return {name: (labels, runs.p_fake(results)) for name, (results, labels) in res.items()}, runs.p_fake(reals)


def main(argv=None):
  args = sc.parse(flags(), argv)
  sc.setup(args)
  study = sc.Study(args, "leaderboard", "Leaderboard: recipes trained on one family, tested on every generator",
                   script="leaderboard.py")
  base = sc.base_config(args)
  recipes = [r for r in args.recipes.split(",") if r]
  unknown = set(recipes) - set(RECIPES)
  if unknown:
    raise cli.UserError(f"Unknown recipes {sorted(unknown)}; known: {', '.join(RECIPES)}")
  photo = base.data.dir == "photo"
  families = [f for f in args.train_family.split(",") if f] or [None]
  for fam in families:
    if photo and fam not in (None, base.data.photo.families[0]):
      base.data.photo.train_all = True
  tables = []
  for fam in families:
    dataset = study.dataset(base)
    source = fam or sc.train_source(args, base, dataset)
    base.data.train_sources = (source,)
    gens = sc.sources_of(dataset)
    sets = [sc.test_set(dataset, "test", g, (g,)) for g in gens]
    unseen = [g for g in gens if g != source]
    scored = {}  # (recipe, seed) -> ({set: (labels, p_fake)}, p_fake of the val reals)
    for recipe in recipes:
      for seed in study.seeds:
        if recipe == "npr+safe":
          parts = [scored.get((r, seed)) or neural_scores(study, r, base, args, source, seed, dataset, sets)
                   for r in ("npr", "safe")]
          scored[recipe, seed] = ({g: (parts[0][0][g][0], (parts[0][0][g][1] + parts[1][0][g][1]) / 2)
                                   for g in parts[0][0]}, (parts[0][1] + parts[1][1]) / 2)
        else:
          scored[recipe, seed] = neural_scores(study, recipe, base, args, source, seed, dataset, sets)
        by_set, reals_p = scored[recipe, seed]
        t, _ = scoring.reals_threshold(reals_p, TARGET_REAL_ACC)
        rows = {g: {"test_set": g, **metrics_lib.binary(lab, p, 0.5)} for g, (lab, p) in by_set.items()}
        scoring.add_calibrated(rows.values(), by_set, t)  # cal_* at t, as evaluate --calibrate.
        means = {"mean unseen": unseen, f"{DEBIASED}mean unseen": [f"{DEBIASED}{g}" for g in unseen]}
        study.add_rows(rows, {m: s for m, s in means.items() if s and s[0] in rows} or None, recipe=recipe,
                       family=source, seed=seed, threshold=t)
    debiased = [f"{DEBIASED}mean unseen {m}" for m in DEBIASED_COLUMNS] if args.debias else []
    header = ["recipe"] + [f"{g}{' (trained)' if g == source else ''} acc / AP" for g in gens] + [
        f"mean unseen {m}" for m in COLUMNS] + debiased
    body = []
    for recipe in recipes:
      v = lambda s, m: study.values(m, recipe=recipe, family=source, set=s)
      body.append([recipe] + [f"{sc.pm(v(g, 'accuracy'))} / {sc.pm(v(g, 'ap'))}" for g in gens]
                  + [sc.pm(v("mean unseen", m)) for m in COLUMNS]
                  + [sc.pm(v(f"{DEBIASED}mean unseen", m)) for m in DEBIASED_COLUMNS if args.debias])
    best = max(recipes, key=lambda r: sc.mean_std(study.values("accuracy", recipe=r, family=source,
                                                               set="mean unseen"))[0])
    acc = study.values("accuracy", recipe=best, family=source, set="mean unseen")
    ap = study.values("ap", recipe=best, family=source, set="mean unseen")
    others = [r for r in recipes if r != best and
              sc.differs(acc, study.values("accuracy", recipe=r, family=source, set="mean unseen")) == 0]
    verdict = (f"Best mean accuracy on the unseen generators: **{best}** ({sc.pm(acc)}, AP {sc.pm(ap)})"
               + (f"; not different beyond the spread from {', '.join(others)}." if others else
                  "; ahead of every other recipe beyond the spread."))
    for m, what in (("ap", "AP"), ("cal_accuracy", f"accuracy at the threshold calibrated on val reals "
                                                   f"({TARGET_REAL_ACC:.0%} of them called real)")):
      top = max(recipes, key=lambda r, m=m: sc.mean_std(study.values(m, recipe=r, family=source,
                                                                     set="mean unseen"))[0])
      verdict += (f" Best mean {what} on the unseen generators: **{top}** "
                  f"({sc.pm(study.values(m, recipe=top, family=source, set='mean unseen'))}).")
    fig = os.path.join(study.out, f"leaderboard_{source}.png")
    sc.plot_bars(fig, unseen + ["mean unseen"], recipes,
                 {(g, r): study.values("accuracy", recipe=r, family=source, set=g)
                  for g in unseen + ["mean unseen"] for r in recipes},
                 "accuracy at 0.5 (mean ± std over seeds)", f"trained on {source}", hline=(0.5, "chance"))
    figures = f"![leaderboard]({os.path.basename(fig)})"
    if args.debias:  # Each recipe's mean unseen accuracy, plain beside debiased.
      fig = os.path.join(study.out, f"leaderboard_{source}_debiased.png")
      kinds = (("plain", "mean unseen"), ("debiased (fakes JPEG 96)", f"{DEBIASED}mean unseen"))
      sc.plot_bars(fig, recipes, [k for k, _ in kinds],
                   {(r, k): study.values("accuracy", recipe=r, family=source, set=s) for r in recipes for k, s in kinds},
                   "mean unseen accuracy at 0.5", f"trained on {source}: plain and format-debiased",
                   hline=(0.5, "chance"))
      figures += f"\n\n![plain and debiased]({os.path.basename(fig)})"
    tables.append((f"Trained on {source}", f"{sc.md_table(header, body)}\n\n{verdict}\n\n{figures}"))
  study.finish(tables, {"recipes": recipes})
  return study


if __name__ == "__main__":
  sc.entry(main)
