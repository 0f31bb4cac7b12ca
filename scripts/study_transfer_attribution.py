r"""Study 3, transfer and attribution: ImageNet-initialised binary detectors, 4-GAN attribution,
Grad-CAM per class.

  python scripts/study_transfer_attribution.py                 # synthetic benchmark, CPU size
  python scripts/study_transfer_attribution.py --quick         # smoke run (seconds)
  python scripts/study_transfer_attribution.py --data /data/fj/cnndetection --train_source progan \
      --attribution_data /data/fj/attribution \
      --weights resnet50=weights/resnet50 --weights mobilenet_v2=weights/mobilenet_v2

The findings tested: (a) from ImageNet weights, a ResNet-50 with only its linear classifier
trained detects fakes worse than a fine-tuned one, and a fine-tuned MobileNetV2 is competitive;
(b) telling 4 GANs (and real images) apart is near-perfect with ResNet-50/101 and Xception;
(c) Grad-CAM at Xception's 12th block differs between the classes (per-class mean maps).

No ImageNet or BiT weight files are available where the default runs were made: without
--weights every model starts from scratch (the architecture's reference initialisers), so part
(a) compares a linear probe on *random* features with full training, not the study's transfer
setting. A weights folder from `python -m fakejax.convert` (or 'torchvision:FILE', 'keras:FILE.h5')
switches that model to its full width, the probe to the ImageNet features, and fine-tuning to
init_from the weights with the backbone at a tenth of the head's rate (configs/resnet50_imagenet.py).
Add bit_resnet50 (BiT-M R50x1, `fakejax.convert --from bit`) with
--transfer_models resnet50:linear_probe,resnet50:finetune,bit_resnet50:finetune.

Part (a) trains on one generator and tests on it and on the others; part (b) trains one class per
generator plus 'real' (data.task='attribution', balanced), Adam 1e-2 decaying to 1e-4 as in the
attribution study, and draws each model's confusion matrix (summed over seeds); part (c) runs
fakejax.explain's Grad-CAM on the seed-0 attribution Xception (--gradcam_layer, default its
CAM_LAYER 'block12'), per class over --gradcam_per_class test images.

The synthetic default: 64-px images of the benchmark's 3 default categories, width-0.25 models
(Xception with 2 middle blocks), 32 images per step; part (a) 120 steps on 'tconv', part (b) 150
steps on all 4 generators. About 25 minutes on a 2-core CPU.
"""

import functools
import os


import numpy as np

from fakejax import runs
from fakejax import studies as sc
from fakejax import cli
from fakejax import datasets
from fakejax import defaults
from fakejax import explain
from fakejax import metrics as metrics_lib
from fakejax import report

GPU = {"data.image_size": 224, "batch_size": 64, "num_epochs": 20, "optim.lr": 1e-3, "model.dropout": 0.0}
FULL = {"model.width": 1.0, "model.middle_blocks": 8}  # Pretrained weights need the published shape.


def flags():
  p = sc.parser(__doc__, "transfer_attribution")
  p.add_argument("--parts", default="a,b,c", help="Parts to run: a (transfer), b (attribution), "
                 "c (Grad-CAM of b's Xception).")
  p.add_argument("--train_source", default="", help="Part (a): " + sc.TRAIN_SOURCE_HELP)
  p.add_argument("--transfer_models", default="", help="MODEL:TRANSFER pairs of part (a) (default "
                 "resnet50:linear_probe,resnet50:finetune,mobilenet_v2:finetune; --quick xception:linear_probe).")
  p.add_argument("--attribution_models", default="", help="Models of part (b) (default "
                 "resnet50,resnet101,xception; --quick xception).")
  p.add_argument("--attribution_data", default="", help="Prepared 'attribution' dataset of part (b) "
                 "(default: the --data dataset, or the synthetic benchmark).")
  p.add_argument("--weights", action="append", default=[], metavar="MODEL=PATH",
                 help="Pretrained weights of a model (a convert folder, torchvision:FILE, keras:FILE.h5).")
  p.add_argument("--gradcam_layer", default="", help="Grad-CAM layer (default: the model's CAM_LAYER).")
  p.add_argument("--gradcam_per_class", type=int, default=0, help="Test images per class for the "
                 "mean maps (default 48; --quick 2).")
  return p


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# What part (b) takes of configs/attribution.py; the model, sizes and steps are the study's.
ATTRIBUTION_KEYS = ("data.task", "data.train_sources", "data.balance", "best_metric", "model.dropout",
                    "optim.name", "optim.lr", "optim.end_lr", "optim.schedule")


def transfer_config(base, model, transfer, weights):
  """The part-(a) config of one model and transfer mode (from scratch without weights)."""
  c = base.copy_and_resolve_references()
  c.model.name = model
  c.model.dropout = 0.0
  c.model.transfer = transfer
  if weights:
    sc.set_keys(c, FULL)
    c.model.init_from = weights
    if transfer == "finetune":  # As configs/resnet50_imagenet.py:finetune, from the weights.
      c.model.backbone_lr = 0.1
      c.optim.lr = 1e-4
  return c


def main(argv=None):
  args = sc.parse(flags(), argv)
  sc.setup(args)
  study = sc.Study(args, "transfer_attribution", "Study 3: transfer from ImageNet weights, GAN attribution, "
                   "Grad-CAM")
  parts = args.parts.split(",")
  weights = dict(w.split("=", 1) for w in args.weights)
  config = sc.base_config(args, GPU)
  if not args.data:
    config.total_steps = sc.sizes(args, 120, 2)
    config.eval_every_steps = sc.sizes(args, 40, 2)
  sections, figures = [], {}

  # --- (a) binary detection: linear probe vs fine-tuning ---------------------------------------
  if "a" in parts:
    dataset = study.dataset(config)
    source = sc.train_source(args, config, dataset)
    others = [g for g in sc.sources_of(dataset) if g != source]
    config.data.train_sources = (source,)
    pairs = [tuple(m.split(":")) for m in (args.transfer_models or sc.sizes(
        args, "resnet50:linear_probe,resnet50:finetune,mobilenet_v2:finetune",
        "xception:linear_probe")).split(",")]
    sets = [sc.test_set(dataset, "test", g, (g,)) for g in [source] + others]
    for seed in study.seeds:
      for model, transfer in pairs:
        c = transfer_config(config, model, transfer, weights.get(model))
        run = runs.Run(study.train(c, f"a_{model}_{transfer}", seed))
        rows = sc.score(run, dataset, sets, run.view("full"))
        study.add_rows(rows, {"unseen generators": others} if others else None, part="a", seed=seed,
                       model=f"{model} {transfer}", start="weights" if model in weights else "scratch")
    names = [f"{m} {t}" for m, t in pairs]
    cols = [source] + (["unseen generators"] if others else [])
    rows = [[n, "ImageNet weights" if n.split()[0] in weights else "scratch"]
            + [sc.pm(study.values(m, part="a", model=n, set=s)) for s in cols for m in ("accuracy", "ap")]
            for n in names]
    table = sc.md_table(["model", "start"] + [f"{s} {m}" for s in cols for m in ("acc", "AP")], rows)
    verdicts = []
    for i, a in enumerate(names):
      for b in names[i + 1:]:
        for s in cols:
          d = sc.differs(study.values("accuracy", part="a", model=a, set=s),
                         study.values("accuracy", part="a", model=b, set=s))
          verdicts.append(f"- {s} accuracy, {a} vs {b}: **{sc.word(d)}**.")
    path = os.path.join(study.out, "fig_3a_transfer.png")
    sc.plot_bars(path, [source] + others, names, {(s, n): study.values("accuracy", part="a", model=n, set=s)
                                                  for s in [source] + others for n in names},
                 "accuracy (mean ± std over seeds)", f"(a) binary, trained on {source}", hline=(0.5, "chance"))
    figures["3a"] = path
    start = ("from ImageNet weights: " + ", ".join(weights) if weights else
             "**from scratch** (no ImageNet weight files here): the linear probe trains a classifier on "
             "random features")
    sections.append(("(a) Binary detection: linear probe vs fine-tuning", f"Start: {start}.\n\n{table}\n\n"
                     + "\n".join(verdicts) + f"\n\n![3a]({os.path.basename(path)})"))

  # --- (b) attribution --------------------------------------------------------------------------
  attr_runs = {}
  if "b" in parts or "c" in parts:
    # The recipe's task, loss and schedule keys from configs/attribution.py, at the study's size.
    recipe = defaults.from_file(os.path.join(CONFIGS, "attribution.py"))
    ac = config.copy_and_resolve_references()
    if args.attribution_data:
      ac.data.dir = args.attribution_data
    sc.set_keys(ac, {k: functools.reduce(lambda node, key: node[key], k.split("."), recipe) for k in ATTRIBUTION_KEYS})
    ac.data.photo.train_all = ac.data.dir == "photo"  # Every family in train, not only the first.
    if not args.data and not args.attribution_data:
      ac.total_steps = sc.sizes(args, 150, 2)
      ac.eval_every_steps = sc.sizes(args, 50, 2)
    adata = study.dataset(ac)
    models = (args.attribution_models or sc.sizes(args, "resnet50,resnet101,xception", "xception")).split(",")
    if "b" not in parts:
      models = ["xception"]
    if "c" in parts and "xception" not in models:
      models.append("xception")
    for seed in study.seeds:
      for model in models:
        c = ac.copy_and_resolve_references()
        c.model.name = model
        if model in weights:
          sc.set_keys(c, FULL)
          c.model.init_from = weights[model]
          imagenet = defaults.from_file(os.path.join(CONFIGS, "attribution.py"), "imagenet")
          c.optim.lr, c.optim.end_lr = imagenet.optim.lr, imagenet.optim.end_lr
        workdir = study.train(c, f"b_{model}", seed)
        attr_runs[(model, seed)] = workdir
        run = runs.Run(workdir)
        rows = sc.score(run, adata, [("all", adata.select("test"))], run.view("full"))
        row = rows["all"]
        study.add(part="b", seed=seed, model=model, set="all", top1=row["top1"], confusion=row["confusion"],
                  classes=row["classes"], accuracy=row.get("accuracy"), ap=row.get("ap"))
    if "b" in parts:
      rows, classes = [], adata.class_names
      for model in models:
        recs = study.select(part="b", model=model)
        cm = np.sum([r["confusion"] for r in recs], 0)
        _, rec = metrics_lib.precision_recall(cm)
        rows.append([model, "ImageNet weights" if model in weights else "scratch",
                     sc.pm([r["top1"] for r in recs]), sc.pm([r["accuracy"] for r in recs])]
                    + [f"{x:.3f}" for x in rec])
        path = os.path.join(study.out, f"fig_3b_confusion_{model}.png")
        report.plot_confusion(cm, classes, path, title=f"{model}: test, summed over {len(recs)} seed(s)")
        figures[f"3b_{model}"] = path
      table = sc.md_table(["model", "start", "top-1", "real vs fake acc"] + [f"recall {c}" for c in classes], rows)
      sections.append(("(b) Attribution: which generator (or real) made the image",
                       f"{len(classes)} classes ({', '.join(classes)}), balanced training; recall per class from "
                       f"the confusion matrix summed over seeds; real vs fake accuracy calls an image fake when "
                       f"1 - p(real) >= 0.5, so a model that never puts p(real) above 0.5 scores the share of fakes "
                       f"in the test set while its top-1 still counts argmax-real answers.\n\n{table}\n\n"
                       + "\n".join(f"- {m}: top-1 {sc.pm(study.values('top1', part='b', model=m))} -> near-perfect "
                                   f"(>= 0.95 at every seed): **"
                                   + ("yes" if min(study.values("top1", part="b", model=m)) >= 0.95 else "no")
                                   + "**." for m in models)
                       + "\n\n" + "\n".join(f"![{k}]({os.path.basename(p)})" for k, p in figures.items()
                                            if k.startswith("3b"))))

  # --- (c) Grad-CAM per class ---------------------------------------------------------------------
  if "c" in parts:
    run = runs.Run(attr_runs[("xception", 0)])
    ev, layer = explain.gradcam_evaluator(run, args.gradcam_layer or None)
    out = os.path.join(study.out, "gradcam")
    os.makedirs(out, exist_ok=True)
    n = args.gradcam_per_class or sc.sizes(args, 48, 2)
    explain.explain_dataset(run, ev, layer, run.view("full"), datasets.Dataset(run.info["dataset"]), "test",
                            per_class=n, out=out, per_png=4)
    with np.load(os.path.join(out, "gradcam_mean.npz")) as z:
      classes, maps = [str(c) for c in z["classes"]], z["maps"]
      layer_maps = z["layer_maps"] if "layer_maps" in z.files else None
    # How far each class's mean map is from the mean over classes (what is particular to it).
    overall = maps.mean(0)
    rows = [[c, f"{float(m.mean()):.3f}", f"{float(np.abs(m - overall).mean()):.3f}"] for c, m in zip(classes, maps)]
    shape = "x".join(str(s) for s in layer_maps.shape[1:]) if layer_maps is not None else "?"
    figures["3c"] = os.path.join(out, "gradcam_mean.png")
    sections.append(("(c) Grad-CAM per class (attribution Xception, seed 0)",
                     f"Layer {layer} ({shape} at {run.config.data.image_size} px), {n} test images per class, "
                     "maps scaled to a maximum of 1 per image.\n\n"
                     + sc.md_table(["class", "mean map value", "mean abs. difference from the mean over classes"], rows)
                     + "\n\n![3c](gradcam/gradcam_mean.png)"))
  if not sections:
    raise cli.UserError(f"--parts {args.parts!r} names no part; known: a, b, c")
  study.finish(sections, {"figures": figures, "weights": weights})
  return study


if __name__ == "__main__":
  sc.entry(main)
