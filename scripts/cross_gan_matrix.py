r"""Train on each synthetic generator family, test on all: the cross-GAN matrix.

  python scripts/cross_gan_matrix.py [--config configs/quick.py] [--out runs/cross_gan]

Trains one run per family (resuming any that exist), evaluates each on every
family's test set, and writes OUT/matrix.{md,json,png}. On a 2-core CPU with
the quick config: about 2 minutes per family.
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
from fakejax import inference  # pylint: disable=g-import-not-at-top
from fakejax import report  # pylint: disable=g-import-not-at-top
from fakejax import train  # pylint: disable=g-import-not-at-top

_CONFIG = flags.DEFINE_string("config", "configs/quick.py", "Config file of every run.")
_OUT = flags.DEFINE_string("out", "runs/cross_gan", "Output folder.")
_METRIC = flags.DEFINE_string("metric", "accuracy", "Metric shown in the matrix.")


def main(argv):
  del argv
  base = defaults.from_file(_CONFIG.value)
  families = list(base.data.synthetic.families)
  matrix = np.zeros((len(families), len(families)))
  rows = {}
  for i, fam in enumerate(families):
    config = defaults.from_file(_CONFIG.value)
    config.data.train_sources = (fam,)
    workdir = os.path.join(_OUT.value, fam)
    train.train_and_evaluate(config, workdir)
    run = inference.Run(workdir)
    ds = datasets.Dataset(run.info["dataset"])
    rows[fam] = {}
    for name, idx in evaluate.test_sets(ds, "test", "source"):
      row, _, _ = evaluate.evaluate_set(run, inference.View("full"), ds, "test", idx,
                                        config.threshold, 0.0)
      rows[fam][name] = row
      matrix[i, families.index(name)] = row[_METRIC.value]
  os.makedirs(_OUT.value, exist_ok=True)
  report.plot_cross_matrix(matrix, families, families, os.path.join(_OUT.value, "matrix.png"),
                           _METRIC.value)
  with open(os.path.join(_OUT.value, "matrix.json"), "w") as f:
    json.dump({"families": families, "metric": _METRIC.value, "matrix": matrix.tolist(),
               "rows": rows}, f, indent=2)
  md = [f"{_METRIC.value} (rows: trained on, columns: tested on)", "",
        "| trained on | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
  md += [f"| {fam} | " + " | ".join(f"{v:.3f}" for v in matrix[i]) + " |"
         for i, fam in enumerate(families)]
  with open(os.path.join(_OUT.value, "matrix.md"), "w") as f:
    f.write("\n".join(md) + "\n")
  print("\n".join(md))


if __name__ == "__main__":
  cli.run(main)
