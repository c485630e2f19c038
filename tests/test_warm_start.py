"""Warm start: fine-tuning a converted official checkpoint trains, resumes exactly after SIGKILL, and a
backbone's weights start a network with prior fusion.

The checkpoint is an official-format NAFNet state dict (official key names, PyTorch layouts) written as
.safetensors by the test, converted with `python -m restorejax.convert`, then fine-tuned with
configs/finetune.py:tiny. The runs share one compiled step (persistent cache) and compile without XLA's
CPU optimisation passes: they are a few dozen steps of a 4-channel network.
"""

import importlib
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, read_metrics, read_summary, run_main, tiny_config
from test_convert import TINY, state_dict, write_safetensors
from test_runs import _wait_for_checkpoint
from restorejax import checkpoint, optim, sharding, tasks, train

RUN = ("--config.total_steps=30", "--config.checkpoint_every=10", "--config.eval_every=30",
       "--config.log_every=10")
FAST_COMPILE = {"XLA_FLAGS": " ".join(filter(None, (
    os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true")))}
# Initialisation runs once: XLA's cheapest compilation (a fifth of the compile time).
FAST_INIT = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """A run directory of converted official-format NAFNet weights (the tiny NAFNet of test_convert)."""
  tmp = tmp_path_factory.mktemp("official")
  src, out = str(tmp / "NAFNet-tiny.safetensors"), str(tmp / "converted")
  write_safetensors(src, state_dict("nafnet"))
  sets = [f"--set={k}={tuple(v) if isinstance(v, tuple) else v}" for k, v in TINY["nafnet"][0].items()]
  cli = importlib.import_module("restorejax.convert.__main__")
  assert cli.main(["--arch=nafnet", "--preset=sidd-width32", *sets, f"--src={src}", f"--out={out}"]) == 0
  return out


def _config(converted):
  return f"configs/finetune.py:tiny,init_from={converted}"


@pytest.fixture(scope="module")
def fine_tuned(converted, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("fine_tuned"))
  run_main(workdir, *RUN, config=_config(converted), env=FAST_COMPILE)
  return workdir


def test_fine_tuning_a_converted_checkpoint_trains(converted, fine_tuned):
  s = read_summary(fine_tuned)
  assert s["steps"] == 30 and s["nonfinite_steps"] == 0 and np.isfinite(s["eval/psnr"])
  loss = read_metrics(fine_tuned, "train/loss")
  assert sorted(loss) == [10, 20, 30] and all(np.isfinite(v) for v in loss.values())
  assert checkpoint.read_config(fine_tuned).model.width == TINY["nafnet"][0]["width"]
  start = _leaves(checkpoint.load_params(converted))
  params = _leaves(checkpoint.load_params(fine_tuned, prefer_ema=False))
  ema = _leaves(checkpoint.load_params(fine_tuned))
  moved = [np.abs(p - s0).max() for p, s0 in zip(params, start)]
  # Started from the converted weights (lr 1e-4 for 30 steps moves each by ~3e-3 at most; a random
  # init would be ~0.1 away), and every parameter moved.
  assert max(moved) < 0.02 and min(moved) > 0, moved
  assert s["ema_params_fingerprint"] != s["params_fingerprint"]
  assert any(not np.array_equal(e, p) for e, p in zip(ema, params))
  assert any(not np.array_equal(e, s0) for e, s0 in zip(ema, start))


def test_warm_started_run_resumes_exactly_after_sigkill(converted, fine_tuned, tmp_path):
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "restorejax.main", f"--config={os.path.join(ROOT, _config(converted))}",
         f"--workdir={workdir}", *RUN]
  proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **FAST_COMPILE}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(proc, workdir, 10)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, "summary.json")), "the run ended before the kill"
  run_main(workdir, *RUN, config=_config(converted), env=FAST_COMPILE)
  s, ref = read_summary(workdir), read_summary(fine_tuned)
  assert s["resumed_from_step"] >= 10
  assert s["params_fingerprint"] == ref["params_fingerprint"]
  assert s["ema_params_fingerprint"] == ref["ema_params_fingerprint"]


@pytest.mark.parametrize("mode", ["concat", "sft"])
def test_backbone_weights_start_a_fused_network(tmp_path, mode):
  config = tiny_config(**{"model.fusion": mode})
  task = tasks.build(config)
  tx, _ = optim.build(config.optim, config.total_steps)
  init_fn, _, state_sh = train.abstract_state(task, tx, config, sharding.mesh(config))
  state = jax.jit(init_fn, out_shardings=state_sh, compiler_options=FAST_INIT)(jax.random.PRNGKey(0))
  # The same network without fusion, other values: the fused one's parameters less the fusion ones.
  backbone = {k: jax.tree_util.tree_map(lambda x: np.asarray(x) + 1.0, v)
              for k, v in sharding.to_host(state.params).items() if not k.startswith("fusion_")}
  backbone["intro"]["kernel"] = backbone["intro"]["kernel"][:, :, :3]
  checkpoint.export_params(str(tmp_path), tiny_config(), backbone)
  warm = train._warm_start(state, str(tmp_path), state_sh.params, mode)  # pylint: disable=protected-access
  got, fresh = sharding.to_host(warm.params), sharding.to_host(state.params)
  for name, tree in got.items():
    if name.startswith("fusion_"):  # the fusion layers as initialised
      assert all(np.array_equal(a, b) for a, b in zip(_leaves(tree), _leaves(fresh[name])))
    elif name == "intro" and mode == "concat":  # the first conv: zero weights for [prior, presence]
      kernel = tree["kernel"]
      np.testing.assert_array_equal(kernel[:, :, :3], backbone["intro"]["kernel"])
      assert kernel.shape[2] == 3 + 4 and not kernel[:, :, 3:].any()
    else:
      assert all(np.array_equal(a, b) for a, b in zip(_leaves(tree), _leaves(backbone[name]))), name
  assert any(n.startswith("fusion_") for n in got) == (mode == "sft")
  # The EMA is a copy of its own: the train step donates both trees, so no buffer may be in both.
  pointers = lambda t: {x.unsafe_buffer_pointer() for x in jax.tree_util.tree_leaves(t)}
  assert not pointers(warm.params) & pointers(warm.ema_params)
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(warm.params), _leaves(warm.ema_params)))
