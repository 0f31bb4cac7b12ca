r"""Train on each generator family, test on all: the cross-GAN matrix.

  python scripts/cross_gan_matrix.py [--config configs/quick.py] [--out runs/cross_gan]
  python scripts/cross_gan_matrix.py --data photo --out runs/cross_gan_photo

Trains one run per family (a finished run is reused, a crashed one resumes), evaluates each on
every family's test set (each generator's fakes against its own reals, the 'full' view) and
writes OUT/matrix.{md,json,png}. `--data photo` uses the photo benchmark with every family in
its train split (data.photo.train_all). On a 2-core CPU with the quick config: about a minute
per synthetic family.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from fakejax import cli  # pylint: disable=g-import-not-at-top
from fakejax import datasets  # pylint: disable=g-import-not-at-top
from fakejax import defaults  # pylint: disable=g-import-not-at-top
from fakejax import evaluate  # pylint: disable=g-import-not-at-top
from fakejax import evaluator  # pylint: disable=g-import-not-at-top
from fakejax import report  # pylint: disable=g-import-not-at-top
from fakejax import train  # pylint: disable=g-import-not-at-top

_CONFIG = flags.DEFINE_string("config", "configs/quick.py", "Config file of every run.")
_DATA = flags.DEFINE_enum("data", "synthetic", ["synthetic", "photo"], "The embedded benchmark.")
_OUT = flags.DEFINE_string("out", "runs/cross_gan", "Output folder.")
_METRIC = flags.DEFINE_string("metric", "accuracy", "Metric shown in the matrix.")


def family_config(fam):
  """The config of the run trained on `fam` (its fakes and the reals they pair with)."""
  config = defaults.from_file(_CONFIG.value)
  if _DATA.value == "photo":
    config.data.dir = "photo"
    config.data.photo.train_all = True
  config.data.train_sources = (fam,)
  return config


def main(argv):
  del argv
  base = family_config("")
  families = list(base.data.photo.families if _DATA.value == "photo" else base.data.synthetic.families)
  matrix = np.zeros((len(families), len(families)))
  rows = {}
  for i, fam in enumerate(families):
    config = family_config(fam)
    workdir = os.path.join(_OUT.value, fam)
    train.train_and_evaluate(config, workdir)
    run = evaluator.Run(workdir)
    ds = datasets.open_dataset(config.data)
    sets = [(ds, name, idx) for name, idx in ds.test_sets("test", "source")]
    table, _, _ = evaluate.evaluate(run, sets, run.view("full"), "test", threshold=config.threshold,
                                    show_progress=False)
    rows[fam] = {r["test_set"]: r for r in table}
    for name, r in rows[fam].items():
      matrix[i, families.index(name)] = r[_METRIC.value]
  os.makedirs(_OUT.value, exist_ok=True)
  report.plot_cross_matrix(matrix, families, families, os.path.join(_OUT.value, "matrix.png"),
                           _METRIC.value)
  with open(os.path.join(_OUT.value, "matrix.json"), "w") as f:
    json.dump({"families": families, "metric": _METRIC.value, "matrix": matrix.tolist(),
               "config": _CONFIG.value, "data": _DATA.value, "rows": rows}, f, indent=2)
  md = [f"{_METRIC.value} (rows: trained on, columns: tested on)", "",
        "| trained on | " + " | ".join(families) + " | mean unseen |", "|---" * (len(families) + 2) + "|"]
  for i, fam in enumerate(families):
    unseen = np.mean([matrix[i, j] for j in range(len(families)) if j != i])
    md.append(f"| {fam} | " + " | ".join(f"{v:.3f}" for v in matrix[i]) + f" | {unseen:.3f} |")
  with open(os.path.join(_OUT.value, "matrix.md"), "w") as f:
    f.write("\n".join(md) + "\n")
  print("\n".join(md))


if __name__ == "__main__":
  cli.run(main)
