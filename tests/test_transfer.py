"""Transfer modes from pretrained weights: what must stay frozen stays bitwise unchanged."""

import json
import os

import numpy as np
import pytest

from fakejax import checkpoint
from fakejax import training


def _is_bn_stat(k):
  return k.endswith(("/mean", "/var"))  # Only BatchNorm layers have these.


@pytest.fixture(scope="module")
def pretrained(tiny_run, tmp_path_factory):
  """The tiny run's model written as a converted-weights folder (as `fakejax.convert` does)."""
  weights = checkpoint.load_run_weights(tiny_run)
  path = str(tmp_path_factory.mktemp("weights") / "xception")
  checkpoint.save_weights(path, weights, {"origin": "keras", "model": "xception", "preprocess": "unit"})
  return path, weights


def _train(make_config, tmp_path, init_from, **kw):
  config = make_config(total_steps=3, eval_every_steps=3, **{"model.init_from": init_from}, **kw)
  workdir = str(tmp_path / "run")
  training.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  return checkpoint.load_run_weights(workdir, "latest"), saved


def _changed(before, after, keys):
  return {k for k in keys if not np.array_equal(before[k], after[k])}


def test_linear_probe_trains_only_the_head(make_config, tmp_path, pretrained):
  path, before = pretrained
  after, saved = _train(make_config, tmp_path, path, **{"model.transfer": "linear_probe"})
  assert set(after) == set(before)
  backbone = [k for k in before if not k.startswith("head/")]
  assert any(_is_bn_stat(k) for k in backbone)
  assert _changed(before, after, backbone) == set()  # Parameters and BatchNorm statistics.
  assert _changed(before, after, ["head/kernel", "head/bias"]) == {"head/kernel", "head/bias"}
  assert saved["model"]["preprocess"] == "unit"  # 'auto' follows the weights' origin.


def test_freeze_bn_keeps_statistics_and_trains_the_rest(make_config, tmp_path, pretrained):
  path, before = pretrained
  after, _ = _train(make_config, tmp_path, path, **{"model.transfer": "freeze_bn"})
  stats = [k for k in before if _is_bn_stat(k)]
  assert _changed(before, after, stats) == set()
  kernels = [k for k in before if k.endswith("kernel")]
  assert _changed(before, after, kernels) == set(kernels)


def test_finetune_with_frozen_backbone_lr_moves_statistics_not_weights(make_config, tmp_path, tiny_run):
  """backbone_lr=0 with SGD: backbone weights bitwise fixed, head trained, BN statistics updated.

  Starts from the run's own workdir (the second step of 'linear probe, then fine-tune').
  """
  before = checkpoint.load_run_weights(tiny_run)
  after, _ = _train(make_config, tmp_path, tiny_run, **{"model.backbone_lr": 0.0, "optim.name": "sgd",
                                                         "optim.momentum": 0.0})
  params = [k for k in before if not _is_bn_stat(k) and not k.startswith("head/")]
  assert _changed(before, after, params) == set()
  assert _changed(before, after, ["head/kernel"]) == {"head/kernel"}
  stats = [k for k in before if _is_bn_stat(k)]
  assert _changed(before, after, stats) == set(stats)


def test_finetune_changes_everything(make_config, tmp_path, pretrained):
  path, before = pretrained
  after, _ = _train(make_config, tmp_path, path)
  assert _changed(before, after, before) == set(before)


def test_init_from_a_mismatched_model_names_parameters(make_config, tmp_path, pretrained):
  path, _ = pretrained
  config = make_config(**{"model.init_from": path, "model.middle_blocks": 2})
  with pytest.raises(checkpoint.MismatchError, match="middle/1/bns/0/mean: checkpoint missing"):
    training.train_and_evaluate(config, str(tmp_path / "run"))
