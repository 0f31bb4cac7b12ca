"""Scoring: how every command turns images into per-image results and report rows.

  views    View and PRESETS: an image -> model inputs (full, whole, tiles, patches)
  rules    per-image decisions from the inputs' logits (mean, votes) and the verdict
  engine   Evaluator: plan -> load -> dispatch over the mesh; dataset and file readers
  forward  make_forward and Folder: the one jitted forward (BatchNorm folded)
  sets     score_sets (each image once), set_metrics, mean_row, calibration from reals

Training's validation, `evaluate`, `predict`, `explain`, `serve`, the studies and the
leaderboard all score through here; none of them loads, pads, batches or votes on its own.
"""

from fakejax.scoring.engine import dataset_reader
from fakejax.scoring.engine import debiased_reader
from fakejax.scoring.engine import Evaluator
from fakejax.scoring.engine import file_reader
from fakejax.scoring.engine import real_jpeg_qualities
from fakejax.scoring.engine import Result
from fakejax.scoring.forward import Folder
from fakejax.scoring.forward import make_forward
from fakejax.scoring.rules import decide
from fakejax.scoring.rules import verdict
from fakejax.scoring.sets import add_calibrated
from fakejax.scoring.sets import distinct_images
from fakejax.scoring.sets import mean_row
from fakejax.scoring.sets import MEAN_KEYS
from fakejax.scoring.sets import reals_threshold
from fakejax.scoring.sets import score_sets
from fakejax.scoring.sets import set_metrics
from fakejax.scoring.views import bucket_side
from fakejax.scoring.views import BUCKET_RELATIVE_BOUND
from fakejax.scoring.views import grid_patches
from fakejax.scoring.views import MIN_WHOLE
from fakejax.scoring.views import MODES
from fakejax.scoring.views import PRESETS
from fakejax.scoring.views import View
from fakejax.scoring.views import VOTING

__all__ = ["BUCKET_RELATIVE_BOUND", "Evaluator", "Folder", "MEAN_KEYS", "MIN_WHOLE", "MODES", "PRESETS",
           "Result", "VOTING", "View", "add_calibrated", "bucket_side", "dataset_reader", "debiased_reader",
           "decide", "distinct_images", "file_reader", "grid_patches", "make_forward", "mean_row",
           "real_jpeg_qualities", "reals_threshold", "score_sets",
           "set_metrics", "verdict"]
