r"""Train on each generator family, test on all: the cross-GAN matrix.

  python scripts/cross_gan_matrix.py [--config configs/quick.py] [--out runs/cross_gan]
  python scripts/cross_gan_matrix.py --data photo --out runs/cross_gan_photo

Trains one run per family (a finished run is reused, a crashed one resumes), evaluates each on
every family's test set (each generator's fakes against its own reals, the 'full' view) and
writes OUT/matrix.{md,json,png}. `--data photo` uses the photo benchmark with every family in
its train split (data.photo.train_all). On a 2-core CPU with the quick config: about a minute
per synthetic family.
"""

import argparse
import json
import os

import numpy as np

from fakejax import cli
from fakejax import datasets
from fakejax import defaults
from fakejax import report
from fakejax import runs
from fakejax import studies
from fakejax import training


def flags():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/quick.py", help="Config file of every run.")
  p.add_argument("--data", default="synthetic", choices=("synthetic", "photo"), help="The embedded benchmark.")
  p.add_argument("--out", default="runs/cross_gan", help="Output folder.")
  p.add_argument("--metric", default="accuracy", help="Metric shown in the matrix.")
  return p


def family_config(args, fam):
  """The config of the run trained on `fam` (its fakes and the reals they pair with)."""
  config = defaults.from_file(args.config)
  if args.data == "photo":
    config.data.dir = "photo"
    config.data.photo.train_all = True
  config.data.train_sources = (fam,)
  return config


def matrix_md(matrix, families, metric):
  md = [f"{metric} (rows: trained on, columns: tested on)", "",
        "| trained on | " + " | ".join(families) + " | mean unseen |", "|---" * (len(families) + 2) + "|"]
  for i, fam in enumerate(families):
    unseen = np.mean([matrix[i, j] for j in range(len(families)) if j != i])
    md.append(f"| {fam} | " + " | ".join(f"{v:.3f}" for v in matrix[i]) + f" | {unseen:.3f} |")
  return "\n".join(md) + "\n"


def main(argv=None):
  args = flags().parse_args(argv)
  cli.set_process_defaults()
  base = family_config(args, "")
  families = list(base.data.photo.families if args.data == "photo" else base.data.synthetic.families)
  matrix = np.zeros((len(families), len(families)))
  rows = {}
  for i, fam in enumerate(families):
    config = family_config(args, fam)
    workdir = os.path.join(args.out, fam)
    training.train_and_evaluate(config, workdir)
    run = runs.Run(workdir)
    ds = datasets.open_dataset(config.data)
    sets = [(ds, name, idx) for name, idx in ds.test_sets("test", "source")]
    table, _, _ = run.protocol(sets, run.view("full"), "test")
    rows[fam] = {r["test_set"]: r for r in table}
    for name, r in rows[fam].items():
      matrix[i, families.index(name)] = r[args.metric]
  os.makedirs(args.out, exist_ok=True)
  report.plot_cross_matrix(matrix, families, families, os.path.join(args.out, "matrix.png"), args.metric)
  with open(os.path.join(args.out, "matrix.json"), "w") as f:
    json.dump({"families": families, "metric": args.metric, "matrix": matrix.tolist(),
               "config": args.config, "data": args.data, "rows": rows}, f, indent=2)
  md = matrix_md(matrix, families, args.metric)
  with open(os.path.join(args.out, "matrix.md"), "w") as f:
    f.write(md)
  print(md)


if __name__ == "__main__":
  studies.entry(main)
