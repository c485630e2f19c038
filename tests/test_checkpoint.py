"""Run directories: exported parameters load back, warm starts take them, mismatches are named."""

import functools

import jax
import numpy as np
import pytest

from restorejax import checkpoint, optim, sharding, tasks, train
from conftest import tiny_config


@pytest.fixture(scope="module")
def tiny():
  config = tiny_config()
  task = tasks.build(config)
  tx, _ = optim.build(config.optim, config.total_steps)
  mesh = sharding.mesh(config)
  init_fn, _, state_sh = train.abstract_state(task, tx, config, mesh)
  state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.PRNGKey(0))
  return config, task, tx, state, state_sh


def _equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_export_then_load_round_trips(tiny, tmp_path):
  config, _, _, state, _ = tiny
  checkpoint.export_params(str(tmp_path), config, state.params)
  assert _equal(checkpoint.load_params(str(tmp_path)), state.params)
  assert checkpoint.read_config(str(tmp_path)).model.width == config.model.width


def test_warm_start_takes_the_parameters_and_resets_the_optimizer(tiny, tmp_path):
  config, _, _, state, state_sh = tiny
  other = jax.tree_util.tree_map(lambda x: np.asarray(x) + 1.0, state.params)
  checkpoint.export_params(str(tmp_path), config, other)
  warm = train._warm_start(state, str(tmp_path), state_sh.params)
  assert _equal(warm.params, other) and _equal(warm.ema_params, other)
  assert _equal(warm.opt_state, state.opt_state) and int(warm.step) == 0


def test_warm_start_from_another_architecture_names_the_mismatch(tiny, tmp_path):
  config, _, _, state, state_sh = tiny
  wide = tiny_config(**{"model.width": 16})
  wide_params = tasks.build(wide).init_params(jax.random.PRNGKey(0))
  checkpoint.export_params(str(tmp_path), wide, wide_params)
  with pytest.raises(ValueError, match=r"config.init_from=.*do not fit the model: decoders_0/beta has shape \(1, 32\), the model expects \(1, 16\)"):
    train._warm_start(state, str(tmp_path), state_sh.params)


def test_missing_or_foreign_directories_are_named(tmp_path):
  with pytest.raises(ValueError, match="no such run directory"):
    checkpoint.load_params(str(tmp_path / "nope"))
  with pytest.raises(ValueError, match="neither checkpoints/ nor params/"):
    checkpoint.load_params(str(tmp_path))
  with pytest.raises(ValueError, match="no config.json"):
    checkpoint.read_config(str(tmp_path))
