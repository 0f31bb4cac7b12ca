r"""Study 2, patch-wise detection: patch size, voting rules, unseen content and generators.

  python scripts/study_patches.py                              # synthetic benchmark, CPU size
  python scripts/study_patches.py --quick                      # smoke run (seconds)
  python scripts/study_patches.py --data /data/fj/faces --train_source stylegan2 \
      --patch_sizes 256,128,64,32,16 --heldout church          # real data, the study's GPU size

The finding tested: Xception trained on smaller patches, with image-level decisions by voting
over patches, detects better than whole-image detection; keeping only confident patches
raises accuracy further; patches help most on unseen content and unseen generators.

One model per patch size P (the largest, the image size, is whole-image detection), trained on
K random PxP patches per image (data.patches_per_image). Every validation checkpoint is kept and
scored on the test split under each image-level rule (fakejax.scoring):
  Tab. 1  patch-level validation accuracy (the centre PxP patch of each validation image);
  Tab. 2  non-overlapping grid patches, majority vote (a tie is fake);
  Tab. 3  K random patches, majority vote (odd K);
  Tab. 4  confident patches: vote among those with |p_fake - p_real| >= theta;
  Tab. 5-6 the same on unseen content and unseen generators, against whole-image detection.
Each with the study's three indicators over the checkpoints: best (top-1), mean of the 5 best,
mean of all. The random-K and confident rules re-decide the stored per-patch logits of one
random (largest K) and one grid pass (study_common.revote), exactly as separate passes would.

Test sets: 'seen' (the training generator, training categories), 'unseen content' (the training
generator on the held-out category) and 'unseen generators' (every other generator on the
training categories, and their mean). The held-out category rotates with the seed.

The synthetic default: the benchmark's 3 default categories, 64-px images, patches 32 and 16
(and the 64-px whole image), K=4 patches per image, 32 images per step, 120 steps with an
evaluation every 20, the narrow Xception of configs/quick.py, trained on 'tconv'. With --data:
full Xception at 256 px, patches 128/64/32/16, 30 epochs. About 20 minutes on a 2-core CPU.
"""

import os


import numpy as np

from fakejax import runs
from fakejax import studies as sc
from fakejax import cli
from fakejax import report

GPU = {"data.image_size": 256, "batch_size": 64, "num_epochs": 30, "optim.lr": 1e-3}
SETS = ("seen", "unseen content", "unseen generators")
INDICATORS = ("best", "mean of 5 best", "mean of all")
KEEP = ("accuracy", "ap", "patch_acc")


def flags():
  p = sc.parser(__doc__, "patches")
  p.add_argument("--train_source", default="", help=sc.TRAIN_SOURCE_HELP)
  p.add_argument("--heldout", default="", help="Held-out content category (default: rotates with the seed).")
  p.add_argument("--patch_sizes", default="", help="Patch sizes, the image size first = whole-image "
                 "detection (default 64,32,16; --quick 32,16).")
  p.add_argument("--patches_per_image", type=int, default=4, help="K random patches per training image.")
  p.add_argument("--random_k", default="1,3,5,9", help="Odd K of the random-patch rule.")
  p.add_argument("--thetas", default="0.5,0.8,0.95,0.99", help="Confidence margins of the confident rule.")
  return p


def indicators(values):
  """The study's three indicators of a run's per-checkpoint values."""
  v = sorted(values, reverse=True)
  return {"best": v[0], "mean of 5 best": float(np.mean(v[:5])), "mean of all": float(np.mean(v))}


def score_checkpoint(run, dataset, sets, p, size, ks, thetas):
  """{rule: {set: report row}} of the run's current checkpoint."""
  out = {}
  full = run.view("full")
  out["whole image" if p == size else "centre patch"] = sc.score(run, dataset, sets, full)
  if p == size:
    return out
  out["whole image"] = sc.score(run, dataset, sets, run.view("whole"))
  grid_view = run.view("grid", patch_size=p)
  grid = sc.forward_sets(run, dataset, sets, grid_view)
  out["grid vote"] = {n: sc.metrics_of(run, grid_view, r, l) for n, (r, l) in grid.items()}
  for theta in thetas:
    v = run.view("confident", patch_size=p, theta=theta)
    out[f"confident θ={theta:g}"] = {n: sc.metrics_of(run, v, sc.revote(r, v, run.config.threshold), l)
                                     for n, (r, l) in grid.items()}
  v = run.view("mean_logit", patch_size=p)
  out["mean logit"] = {n: sc.metrics_of(run, v, sc.revote(r, v, run.config.threshold), l)
                       for n, (r, l) in grid.items()}
  rand = sc.forward_sets(run, dataset, sets, run.view("random", patch_size=p, k=max(ks)))
  for k in ks:
    v = run.view("random", patch_size=p, k=k)
    out[f"random K={k}"] = {n: sc.metrics_of(run, v, sc.revote(r, v, run.config.threshold), l)
                            for n, (r, l) in rand.items()}
  return out


def main(argv=None):
  args = sc.parse(flags(), argv)
  sc.setup(args)
  study = sc.Study(args, "patches", "Study 2: patch-wise detection")
  config = sc.base_config(args, GPU)
  size = config.data.image_size
  patch_sizes = [int(p) for p in (args.patch_sizes or sc.sizes(args, "64,32,16", "32,16", "256,128,64,32,16"))
                 .split(",")]
  if patch_sizes[0] != size:
    raise cli.UserError(f"--patch_sizes must start with the image size {size} (whole-image detection)")
  ks = [int(k) for k in args.random_k.split(",")]
  thetas = [float(t) for t in args.thetas.split(",")]
  if not args.data:
    config.total_steps = sc.sizes(args, 120, 2)
    config.eval_every_steps = sc.sizes(args, 20, 2)
    config.keep_checkpoints = config.total_steps // config.eval_every_steps + 1
  else:
    config.keep_checkpoints = config.num_epochs + 1
  dataset = study.dataset(config)
  source = sc.train_source(args, config, dataset)
  others = [g for g in sc.sources_of(dataset) if g != source]
  categories = sc.categories_of(dataset, "train")
  config.data.train_sources = (source,)
  images_per_step = config.batch_size

  for seed in study.seeds:
    held = args.heldout or categories[seed % len(categories)]
    seen = [c for c in categories if c != held]
    sets = [sc.test_set(dataset, "test", "seen", (source,), seen),
            sc.test_set(dataset, "test", "unseen content", (source,), (held,))]
    sets += [sc.test_set(dataset, "test", g, (g,), seen) for g in others]
    for p in patch_sizes:
      c = config.copy_and_resolve_references()
      c.data.exclude_categories = (held,)
      if p != size:
        c.data.patches_per_image = args.patches_per_image
        c.data.patch_size = p
        c.data.image_size = p  # Validation scores the centre patch.
        c.batch_size = images_per_step * args.patches_per_image
      workdir = study.train(c, f"p{p}", seed)
      keys = dict(seed=seed, P=p, held_out=held)
      for step, ind in indicator_rows(workdir):
        study.add(**keys, table="val", step=step, **ind)
      run = runs.Run(workdir)
      for step in sc.eval_steps(workdir):
        sc.load_step(run, step)
        for rule, rows in score_checkpoint(run, dataset, sets, p, size, ks, thetas).items():
          for name, row in rows.items():
            study.add(**keys, step=step, rule=rule, set=name, **{k: row[k] for k in KEEP if k in row})
          study.add(**keys, step=step, rule=rule, set="unseen generators",
                    **{k: float(np.mean([rows[g][k] for g in others])) for k in KEEP if k in rows[others[0]]})
  sections, figures = report_sections(study, patch_sizes, size, ks, thetas, source, others)
  study.finish(sections, {"figures": figures, "train_source": source})
  return study


def indicator_rows(workdir):
  """[(step, {'val_patch_accuracy': ...})] of the run's validation history."""
  rows = report.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return [(r["step"], {"val_patch_accuracy": r["accuracy"]}) for r in rows if r["kind"] == "val"]


def per_seed_indicators(study, metric="accuracy", **match):
  """[indicators dict per seed] of the records matching `match` (one value per checkpoint)."""
  out = []
  for seed in study.seeds:
    vals = study.values(metric, seed=seed, **match)
    if vals:
      out.append(indicators(vals))
  return out


def cell(study, ind, **match):
  return sc.pm([d[ind] for d in per_seed_indicators(study, **match)])


def report_sections(study, patch_sizes, size, ks, thetas, source, others):
  """The Markdown sections, figures and verdicts of the study."""
  sections, figures = [], {}
  # Tab. 1: patch-level validation accuracy.
  rows = [[("whole image " if p == size else "") + f"{p}"] +
          [sc.pm([d[i] for d in per_seed_indicators(study, "val_patch_accuracy", table="val", P=p)])
           for i in INDICATORS] for p in patch_sizes]
  sections.append(("Tab. 1: patch-level validation accuracy",
                   "Centre PxP patch of each validation image (training generator, training categories).\n\n"
                   + sc.md_table(["patch size P"] + list(INDICATORS), rows)))
  rules = lambda p: (["whole image"] if p == size else
                     ["centre patch", "whole image", "grid vote"] + [f"random K={k}" for k in ks]
                     + [f"confident θ={t:g}" for t in thetas] + ["mean logit"])
  for s in SETS:
    rows = []
    for p in patch_sizes:
      for rule in rules(p):
        rows.append([p, rule] + [cell(study, i, P=p, rule=rule, set=s) for i in INDICATORS])
    what = {"seen": f"{source} on the training categories (Tab. 2-4)",
            "unseen content": f"{source} on the held-out category (Tab. 5)",
            "unseen generators": f"mean over {', '.join(others)} on the training categories (Tab. 6)"}[s]
    sections.append((f"Image-level accuracy, {s}", f"{what}; 'whole image' at P={size} is the "
                     f"whole-image detector, at smaller P the patch model run on the whole image.\n\n"
                     + sc.md_table(["P", "rule"] + list(INDICATORS), rows)))
  # Figures and verdicts on the 'mean of all' indicator (the least selection-biased one).
  ind = "mean of all"
  get = lambda **m: [d[ind] for d in per_seed_indicators(study, **m)]
  main_rule = lambda p: "whole image" if p == size else "grid vote"
  small = min(patch_sizes)
  path = os.path.join(study.out, "fig_2_patch_size.png")
  sc.plot_series(path, [(s, patch_sizes, [get(P=p, rule=main_rule(p), set=s) for p in patch_sizes])
                        for s in SETS],
                 "patch size P (largest = whole-image detection)", f"accuracy, {ind} checkpoints",
                 f"grid vote vs patch size (trained on {source})", logx=True, hline=(0.5, "chance"))
  figures["patch_size"] = path
  path = os.path.join(study.out, "fig_2_confident.png")
  sc.plot_series(path, [(s, [0.0] + thetas, [get(P=small, rule="grid vote", set=s)]
                         + [get(P=small, rule=f"confident θ={t:g}", set=s) for t in thetas]) for s in SETS],
                 "confidence margin θ (0 = every grid patch votes)", f"accuracy, {ind} checkpoints",
                 f"confident-patch voting, P={small}", hline=(0.5, "chance"))
  figures["confident"] = path
  path = os.path.join(study.out, "fig_2_random.png")
  sc.plot_series(path, [(s, ks, [get(P=small, rule=f"random K={k}", set=s) for k in ks]) for s in SETS],
                 "K random patches (majority vote)", f"accuracy, {ind} checkpoints",
                 f"random-patch voting, P={small}", hline=(0.5, "chance"))
  figures["random"] = path
  verdicts = []
  for s in SETS:
    whole = get(P=size, rule="whole image", set=s)
    for p in patch_sizes[1:]:
      grid = get(P=p, rule="grid vote", set=s)
      verdicts.append(f"- {s}, P={p} grid vote vs whole-image detection: {sc.pm(grid)} vs {sc.pm(whole)} "
                      f"-> **{sc.word(sc.differs(grid, whole))}**.")
    best_t = max(thetas, key=lambda t: sc.mean_std(get(P=small, rule=f"confident θ={t:g}", set=s))[0])
    conf, grid = get(P=small, rule=f"confident θ={best_t:g}", set=s), get(P=small, rule="grid vote", set=s)
    verdicts.append(f"- {s}, P={small} confident θ={best_t:g} (best θ) vs grid vote: {sc.pm(conf)} vs "
                    f"{sc.pm(grid)} -> **{sc.word(sc.differs(conf, grid))}**.")
  gains = {s: [g - w for g, w in zip(get(P=small, rule="grid vote", set=s), get(P=size, rule="whole image", set=s))]
           for s in SETS}
  verdicts.append("- Gain of P=%d grid voting over whole-image detection (per seed, paired): %s." % (
      small, "; ".join(f"{s} {sc.pm(g)}" for s, g in gains.items())) + " Patches help most on unseen data: **"
      + ("yes" if all(sc.differs(gains[u], gains["seen"]) > 0 for u in SETS[1:]) else "not shown") + "**.")
  sections.append(("Verdicts (indicator: mean of all checkpoints)", "\n".join(verdicts) + "\n\n"
                   + "\n".join(f"![{k}]({os.path.basename(p)})" for k, p in figures.items())))
  return sections, figures


if __name__ == "__main__":
  sc.entry(main)
