"""The 'diffusion' task through the command line: a tiny DDPM prior trains, logs its loss terms, evaluates
a held-out eps-loss, writes its sample grid, and its run directory is a DiffLoss prior."""

import os

import jax
import numpy as np
import pytest

from restorejax import checkpoint, tasks
from restorejax.data import images
from restorejax.losses import diffloss
from restorejax.tasks import diffusion
from conftest import read_metrics, read_summary, run_main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("prior"))
  run_main(workdir, "--config.total_steps=10", "--config.eval_every=10", "--config.log_every=5",
           "--config.checkpoint_every=10", config="configs/diffusion_prior.py:tiny")
  return workdir


def test_trains_and_reports(run):
  s = read_summary(run)
  assert s["steps"] == 10 and np.isfinite(s["eval/loss"]) and 0 < s["eval/loss"] < 2
  eps, vb = read_metrics(run, "train/loss/eps"), read_metrics(run, "train/loss/vb")  # learned sigma: hybrid
  assert sorted(eps) == [5, 10] and sorted(vb) == [5, 10]
  total = read_metrics(run, "train/loss")
  np.testing.assert_allclose(total[10], eps[10] + vb[10], rtol=1e-5)
  grid = images.read(os.path.join(run, "samples.png")).pixels
  assert grid.shape == (64, 64, 3)  # 4 samples of 32x32 in a 2x2 grid
  assert grid.std() > 0


def test_run_directory_is_a_diffloss_prior(run):
  spec = diffloss.read_prior(run)
  assert (spec.schedule, spec.num_steps, spec.image_size) == ("linear", 1000, 32)
  aux = diffloss.build_aux(prior=run)
  ema = checkpoint.load_params(run)
  for a, b in zip(jax.tree_util.tree_leaves(aux["params"]), jax.tree_util.tree_leaves(ema)):
    np.testing.assert_array_equal(a, b)


def test_held_out_loss_is_deterministic_and_sample_grid_layout(run):
  config = checkpoint.read_config(run)
  task = tasks.build(config)
  assert isinstance(task, diffusion.Diffusion)
  from restorejax import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.mesh(config)
  evaluator = task.evaluator(mesh, sharding.batch_sharding(config, mesh))
  params = checkpoint.load_params(run)
  first, second = evaluator(params)[0], evaluator(params)[0]
  assert first == second
  np.testing.assert_allclose(first["eval/loss"], read_summary(run)["eval/loss"], rtol=1e-5)
  tiles = np.stack([np.full((2, 3, 3), v, np.float32) for v in (0.0, 0.25, 0.5, 0.75, 1.0)])
  grid = diffusion.sample_grid(tiles)[0]
  assert grid.shape == (4, 9, 3)  # 5 samples: 3 columns, 2 rows, the last tile blank
  assert grid[0, 3, 0] == 64 and grid[2, 0, 0] == 191 and grid[2, 6, 0] == 0


def test_the_64_variant_builds():
  from configs import diffusion_prior  # pylint: disable=g-import-not-at-top
  config = diffusion_prior.get_config("64")
  task = tasks.build(config)
  params = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
  assert task.size == 64 and task.model.image_size == 64 and len(task.model.channel_mult) == 4
  assert sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)) > 1e6
  with pytest.raises(ValueError, match="unknown variant '128'"):
    diffusion_prior.get_config("128")
