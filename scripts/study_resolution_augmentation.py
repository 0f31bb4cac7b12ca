r"""Study 4, input resolution and augmentation: native vs down-scaled input, Wang et al.'s
blur+JPEG, the study's geometric augmentation, rotation test-time augmentation.

  python scripts/study_resolution_augmentation.py             # synthetic benchmark, CPU size
  python scripts/study_resolution_augmentation.py --quick     # smoke run (seconds)
  python scripts/study_resolution_augmentation.py --data /data/fj/faces --train_source stylegan \
      --native 1024 --low 299 --models xception,resnet50 --set optim.accumulate_steps=8 \
      --set model.remat=True                                  # real data, the study's GPU size

The findings tested: (a) a detector fed the native resolution (the study: 1024 px faces)
generalises to unseen generators better than one fed images down-scaled to the network's usual
input (299 px); (b) Wang et al.'s training augmentation, Gaussian blur and JPEG re-compression
each with probability 0.1 or 0.5, narrows the gap between the training generator and unseen
ones; (c) rotation test-time augmentation (N random angles in +-15, 30 or 45 degrees, class
probabilities averaged) changes accuracy. The study's own geometric augmentation (rotation 45,
shift 0.15, zoom 0.5, flip) is trained as one more condition.

Runs: for each model, 'native' (no resize), 'low' (train and test images resized to --low,
aug.resize / data.eval_resize) and, at native resolution, 'blur+JPEG p=0.1', 'blur+JPEG p=0.5'
(blur sigma 0-3, JPEG quality 30-100) and 'geometric'. Every run is tested on the training
generator ('seen') and on each other generator (their mean: 'unseen'); the gap is seen - unseen.
Each test is repeated under --perturb degradations (a JPEG and a blur by default: the robustness
Wang et al.'s augmentation is for). TTA scores the native runs with --tta_ranges.
Optimisers as in the study: Xception Adam 1e-2 decaying to 1e-4, ResNet-50 SGD 3e-3 to 3e-7
(exponential).

The synthetic default: 64-px images of the benchmark's 3 default categories, 'low' = 32 px,
the narrow Xception of configs/quick.py, 120 steps of 32 images, trained on 'tconv'. About 20
minutes on a 2-core CPU.
"""

import os


from fakejax import runs
from fakejax import studies as sc
from fakejax import augment
from fakejax import cli

GPU = {"batch_size": 32, "num_epochs": 30}
OPTIM = {"xception": {"optim.name": "adam", "optim.lr": 1e-2, "optim.end_lr": 1e-4, "optim.schedule": "exponential"},
         "resnet50": {"optim.name": "sgd", "optim.lr": 3e-3, "optim.end_lr": 3e-7, "optim.schedule": "exponential",
                      "optim.momentum": 0.9}}
BLUR_JPEG = {"aug.blur_sig": (0.0, 3.0), "aug.jpg_qual": (30, 100)}
GEOMETRIC = {"aug.rotate": 45.0, "aug.shift": 0.15, "aug.zoom": 0.5, "aug.flip": 0.5}


def flags():
  p = sc.parser(__doc__, "resolution_augmentation")
  p.add_argument("--train_source", default="", help=sc.TRAIN_SOURCE_HELP)
  p.add_argument("--models", default="xception", help="Models (xception, resnet50).")
  p.add_argument("--native", type=int, default=0, help="Native input size (default: the data's: 64 px "
                 "synthetic, 32 with --quick).")
  p.add_argument("--low", type=int, default=0, help="Down-scaled input size (default: native / 2).")
  p.add_argument("--conditions", default="", help="Training conditions (default native,low,blur+JPEG p=0.1,"
                 "blur+JPEG p=0.5,geometric; --quick native,low).")
  p.add_argument("--perturb", action="append", default=None, help="Test-time degradations "
                 "(KIND:V1,V2; default jpeg:75 and blur:1).")
  p.add_argument("--tta_ranges", default="", help="Rotation ranges of the TTA in degrees (default "
                 "15,30,45; --quick 15).")
  p.add_argument("--tta_copies", type=int, default=0, help="Random angles per range (default 4; --quick 2).")
  return p


def condition_config(base, model, condition, native, low):
  """The config of one (model, training condition)."""
  c = base.copy_and_resolve_references()
  c.model.name = model
  sc.set_keys(c, OPTIM.get(model, {}))
  c.data.image_size = native
  if condition == "low":
    c.aug.resize = c.data.eval_resize = c.data.image_size = low
  elif condition.startswith("blur+JPEG p="):
    prob = float(condition.split("=")[1])
    sc.set_keys(c, {**BLUR_JPEG, "aug.blur_prob": prob, "aug.jpg_prob": prob})
  elif condition == "geometric":
    sc.set_keys(c, GEOMETRIC)
  elif condition != "native":
    raise cli.UserError(f"Unknown condition {condition!r}; known: native, low, blur+JPEG p=P, geometric")
  return c


def main(argv=None):
  args = sc.parse(flags(), argv)
  sc.setup(args)
  study = sc.Study(args, "resolution_augmentation", "Study 4: input resolution and augmentation")
  config = sc.base_config(args, GPU)
  if not args.data:
    config.total_steps = sc.sizes(args, 120, 2)
    config.eval_every_steps = sc.sizes(args, 40, 2)
  native = args.native or config.data.image_size
  low = args.low or native // 2
  conditions = (args.conditions or sc.sizes(args, "native,low,blur+JPEG p=0.1,blur+JPEG p=0.5,geometric",
                                            "native,low")).split(",")
  perturbs = augment.parse_perturbations(args.perturb if args.perturb is not None else ["jpeg:75", "blur:1"])
  ranges = [float(r) for r in (args.tta_ranges or sc.sizes(args, "15,30,45", "15")).split(",")]
  n_copies = args.tta_copies or sc.sizes(args, 4, 2)
  models = args.models.split(",")
  dataset = study.dataset(config)
  source = sc.train_source(args, config, dataset)
  others = [g for g in sc.sources_of(dataset) if g != source]
  config.data.train_sources = (source,)
  sets = [sc.test_set(dataset, "test", g, (g,)) for g in [source] + others]
  means = {"unseen": others} if others else None

  for seed in study.seeds:
    for model in models:
      for cond in conditions:
        run = runs.Run(study.train(condition_config(config, model, cond, native, low), f"{model}_{cond}", seed))
        view = run.view("full")
        keys = dict(seed=seed, model=model, condition=cond)
        study.add_rows({"seen" if n == source else n: r for n, r in sc.score(run, dataset, sets, view).items()},
                       means, **keys, test="clean")
        for pert in perturbs:
          rows = sc.score(run, dataset, sets, view, perturbation=pert)
          study.add_rows({"seen" if n == source else n: r for n, r in rows.items()}, means, **keys, test=pert.name)
        if cond == "native":
          for deg in ranges:
            copies = augment.tta_copies([f"rand={deg:g}:{n_copies}"], seed)
            rows = sc.score(run, dataset, sets, view, copies=copies)
            study.add_rows({"seen" if n == source else n: r for n, r in rows.items()}, means, **keys,
                           test=f"TTA ±{deg:g}°")

  sections, figures = [], {}
  tests = ["clean"] + [p.name for p in perturbs]
  for model in models:
    rows = []
    for cond in conditions:
      get = lambda s, t, m="accuracy": study.values(m, model=model, condition=cond, set=s, test=t)
      gap = [a - b for a, b in zip(get("seen", "clean"), get("unseen", "clean"))]
      rows.append([cond, sc.pm(get("seen", "clean")), sc.pm(get("unseen", "clean")), sc.pm(gap),
                   sc.pm(get("seen", "clean", "ap")), sc.pm(get("unseen", "clean", "ap"))]
                  + [sc.pm(get("seen", t)) for t in tests[1:]])
    table = sc.md_table(["condition", "seen acc", "unseen acc", "gap (seen - unseen)", "seen AP", "unseen AP"]
                        + [f"seen acc, {t}" for t in tests[1:]], rows)
    verdicts = []
    get = lambda cond, s="unseen", t="clean", m="accuracy": study.values(m, model=model, condition=cond, set=s, test=t)
    if "native" in conditions and "low" in conditions:
      for m in ("accuracy", "ap"):
        verdicts.append(f"- (a) unseen-generator {m}, native {native} px vs low {low} px: {sc.pm(get('native', m=m))} "
                        f"vs {sc.pm(get('low', m=m))} -> **{sc.word(sc.differs(get('native', m=m), get('low', m=m)), 'native higher', 'native lower')}**.")
    gap = lambda cond: [a - b for a, b in zip(get(cond, "seen"), get(cond))]
    for cond in conditions:
      if cond.startswith("blur+JPEG") and "native" in conditions:
        verdicts.append(f"- (b) gap with {cond} vs without: {sc.pm(gap(cond))} vs {sc.pm(gap('native'))} -> "
                        f"**{sc.word(-sc.differs(gap(cond), gap('native')), 'narrower', 'wider')}**; "
                        f"unseen accuracy {sc.word(sc.differs(get(cond), get('native')))}"
                        + "".join(f"; seen accuracy under {t}: {sc.word(sc.differs(get(cond, 'seen', t), get('native', 'seen', t)))}"
                                  for t in tests[1:]) + ".")
      if cond == "geometric" and "native" in conditions:
        verdicts.append(f"- geometric augmentation vs none, seen accuracy: {sc.pm(get(cond, 'seen'))} vs "
                        f"{sc.pm(get('native', 'seen'))} -> **{sc.word(sc.differs(get(cond, 'seen'), get('native', 'seen')))}**.")
    path = os.path.join(study.out, f"fig_4_{model}_conditions.png")
    sc.plot_bars(path, ["seen", "unseen"] + [f"seen, {t}" for t in tests[1:]], conditions,
                 {**{(s, c): get(c, s) for s in ("seen", "unseen") for c in conditions},
                  **{(f"seen, {t}", c): get(c, "seen", t) for t in tests[1:] for c in conditions}},
                 "accuracy (mean ± std over seeds)", f"{model}, trained on {source}", hline=(0.5, "chance"))
    figures[f"{model}_conditions"] = path
    if ranges and "native" in conditions:
      tta = [f"TTA ±{r:g}°" for r in ranges]
      rows = [[t] + [sc.pm(study.values("accuracy", model=model, condition="native", set=s, test=t))
                     for s in ("seen", "unseen")]
              + [sc.pm(study.values("plain_accuracy", model=model, condition="native", set=s, test=t))
                 for s in ("seen", "unseen")] for t in tta]
      table += "\n\nRotation TTA of the native runs (accuracy with the copies averaged; 'plain' = the " \
               f"identity copy, {n_copies} random angles per range):\n\n" + sc.md_table(
                   ["TTA", "seen acc", "unseen acc", "seen plain", "unseen plain"], rows)
      for t in tta:
        for s in ("seen", "unseen"):
          a = study.values("accuracy", model=model, condition="native", set=s, test=t)
          b = study.values("plain_accuracy", model=model, condition="native", set=s, test=t)
          verdicts.append(f"- (c) {t}, {s}: with vs without TTA {sc.pm(a)} vs {sc.pm(b)} -> **{sc.word(sc.differs(a, b))}**.")
      path = os.path.join(study.out, f"fig_4_{model}_tta.png")
      sc.plot_series(path, [(f"{s} (TTA)", ranges, [study.values("accuracy", model=model, condition="native", set=s,
                                                                 test=t) for t in tta]) for s in ("seen", "unseen")]
                     + [(f"{s} (no TTA)", ranges, [study.values("plain_accuracy", model=model, condition="native",
                                                                set=s, test=t) for t in tta]) for s in ("seen", "unseen")],
                     "rotation range of the TTA copies (± degrees)", "accuracy (mean ± std over seeds)",
                     f"{model} native: rotation TTA", hline=(0.5, "chance"))
      figures[f"{model}_tta"] = path
    sections.append((f"{model}", f"Trained on {source}; unseen = mean over {', '.join(others)}; native {native} px, "
                     f"low {low} px.\n\n{table}\n\n" + "\n".join(verdicts) + "\n\n"
                     + "\n".join(f"![{k}]({os.path.basename(p)})" for k, p in figures.items() if k.startswith(model))))
  study.finish(sections, {"figures": figures, "native": native, "low": low, "train_source": source})
  return study


if __name__ == "__main__":
  sc.entry(main)
