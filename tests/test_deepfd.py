"""DeepFD: the contrastive loss by hand, the architecture, the two stages, exact resume."""

import os
import signal

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fakejax import defaults
from fakejax import models
from fakejax import runs
from fakejax import sharding
from fakejax import training
from fakejax.training import losses
from tests.conftest import ROOT
from tests.conftest import run_to_end
from tests.conftest import train_command
from tests.conftest import train_losses


def test_contrastive_loss_by_hand():
  # e0-e2 same label at distance 1; e1 differs: 5 from e0 (outside margin 4.5), sqrt(18) from e2 (inside).
  emb = jnp.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
  loss, d_same, d_other = losses.contrastive_loss(emb, jnp.array([0, 1, 0]), margin=4.5)
  inside = (4.5 - np.sqrt(18)) ** 2
  assert float(loss) == pytest.approx(0.5 * (1.0 + (0 + 0 + inside + inside) / 4), rel=1e-5)
  assert float(d_same) == pytest.approx(1.0, rel=1e-5)
  assert float(d_other) == pytest.approx((5 + 5 + 2 * np.sqrt(18)) / 4, rel=1e-5)
  # Same pair at distance 1; different pairs at 3 (outside margin 2.5) and 2 (inside: 0.5^2).
  loss, _, _ = losses.contrastive_loss(jnp.array([[0.0], [1.0], [3.0]]), jnp.array([0, 0, 1]), 2.5)
  assert float(loss) == pytest.approx(0.5 * (1.0 + (0 + 0 + 0.25 + 0.25) / 4), rel=1e-5)


def test_architecture_follows_table_one():
  model = nnx.eval_shape(lambda: models.create("deepfd", 2))
  p = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert p["d1"]["stem"]["conv"]["kernel"].shape == (7, 7, 3, 96)
  assert model.d1.stem.conv.strides == (4, 4)
  widths = [p["d1"]["blocks"][i]["conv2"]["conv"]["kernel"].shape[-1] for i in range(6)]
  assert widths == [96, 96, 128, 128, 256, 256]
  assert p["d1"]["embed"]["kernel"].shape == (256, 128)
  assert p["d2"]["conv"]["kernel"].shape == (3, 3, 256, 2)
  assert p["d2"]["head"]["kernel"].shape == (2, 2)
  attribution = nnx.eval_shape(lambda: models.create("deepfd", 5))
  assert nnx.state(attribution, nnx.Param)["d2"]["head"]["kernel"].shape == (5, 5)


def _deepfd_config(make_config, **kw):
  c = make_config(**{"model.name": "deepfd", "model.width": 0.25, "model.preprocess": "unit",
                     "deepfd.stage1_steps": 80, "deepfd.stage2_steps": 3, "optim.lr": 3e-3,
                     **kw})
  return c


def test_stage_one_is_the_contrastive_loss_on_d1_and_stage_two_leaves_d1_untouched(make_config, tiny_synthetic):
  """Stage 1's loss is the contrastive loss of D1's embeddings of the batch (computed here apart
  from the step) and moves D1 alone; stage 2 then leaves D1 bitwise as it was."""
  c = _deepfd_config(make_config)
  mesh = sharding.make_mesh()
  ts = training.TrainState.for_config(c, 2, 0, mesh)
  assert ts.total_steps == 83 and ts.stage_at(79) == 1 and ts.stage_at(80) == 2
  it = runs.train_iter(tiny_synthetic, c.data, c.aug, 16, seed=0)
  state = ts.init()
  step1, step2 = training.make_train_step(ts, 1), training.make_train_step(ts, 2)
  batch = next(it)
  model = nnx.merge(ts.model_def, state["model"])
  model.train()
  emb = model.embed(models.preprocess(jnp.asarray(batch["image"]), "unit"))
  expected, _, _ = losses.contrastive_loss(emb, jnp.asarray(batch["label"]), c.deepfd.margin)
  d1_start = jax.tree.map(np.array, nnx.to_pure_dict(state)["model"]["d1"])
  d2_start = jax.tree.map(np.array, nnx.to_pure_dict(state)["model"]["d2"])
  state, m = step1(state, sharding.to_global(mesh, batch))
  assert float(m["loss"]) == pytest.approx(float(expected), rel=1e-4)
  for _ in range(2):
    state, m = step1(state, sharding.to_global(mesh, next(it)))
  moved = nnx.to_pure_dict(state)["model"]
  assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(d1_start), jax.tree.leaves(moved["d1"])))
  for a, b in zip(jax.tree.leaves(d2_start), jax.tree.leaves(moved["d2"])):
    np.testing.assert_array_equal(a, np.asarray(b))

  d1_before = jax.tree.map(np.asarray, nnx.to_pure_dict(state)["model"]["d1"])
  d2_before = jax.tree.map(np.asarray, nnx.to_pure_dict(state)["model"]["d2"])
  for _ in range(3):
    state, m = step2(state, sharding.to_global(mesh, next(it)))
  after = nnx.to_pure_dict(state)["model"]
  for a, b in zip(jax.tree.leaves(d1_before), jax.tree.leaves(after["d1"])):
    np.testing.assert_array_equal(a, np.asarray(b))  # Parameters and BN statistics, bitwise.
  assert any(not np.array_equal(a, np.asarray(b))
             for a, b in zip(jax.tree.leaves(d2_before), jax.tree.leaves(after["d2"])))
  assert np.isfinite(float(m["loss"]))


def test_deepfd_config_trains_d1_then_d2_alone():
  """configs/deepfd.py trains in two stages: stage 1 updates D1's parameters only, stage 2 D2's
  only (D1 frozen, its BatchNorm in eval mode); unfrozen, stage 2 updates both."""
  c = defaults.from_file(os.path.join(ROOT, "configs", "deepfd.py"))
  strategy = training.strategies.for_config(c, 10)
  model = nnx.eval_shape(lambda: models.create("deepfd", 2))
  trained = lambda stage: set(nnx.to_pure_dict(nnx.state(model, strategy.wrt(stage))))
  assert trained(1) == {"d1"} and trained(2) == {"d2"}
  strategy.set_train_modes(model, 2)
  assert model.d1.stem.bn.use_running_average and not model.d2.dropout.deterministic
  c.deepfd.freeze_d1 = False
  assert set(nnx.to_pure_dict(nnx.state(model, training.strategies.for_config(c, 10).wrt(2)))) == {"d1", "d2"}


@pytest.mark.slow
def test_kill_and_resume_in_stage_two_is_exact(tiny_synthetic, data_root, tmp_path):
  del tiny_synthetic
  extra = ["--config.model.name=deepfd", "--config.model.width=0.25", "--config.model.preprocess=unit",
           "--config.deepfd.stage1_steps=6", "--config.deepfd.stage2_steps=10"]
  cmd = lambda w, **kw: train_command(data_root, w, **kw) + extra
  run = run_to_end
  ref = str(tmp_path / "ref")
  code, out = run(cmd(ref))
  assert code == 0, out[-3000:]
  expected = train_losses(ref)
  assert sorted(expected) == list(range(1, 17))
  # SIGKILL after step 10, in stage two (from step 7), past checkpoint 8: no chance to save.
  killed = str(tmp_path / "killed")
  code, out = run(cmd(killed, signal_at=(10, "SIGKILL")))
  assert code == -signal.SIGKILL, out[-3000:]
  assert max(train_losses(killed)) == 10
  code, out = run(cmd(killed))
  assert code == 0, out[-3000:]
  got = train_losses(killed)
  assert sorted(got) == sorted(expected)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)],
                             rtol=0, atol=1e-6)
