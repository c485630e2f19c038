"""DiffLoss: zero for a perfect restoration, gradients into the restorer but not the target, eps channels
only, the prior frozen through training steps, prior directories (trained or converted) and their errors.

The prior is a toy ADM UNet with every parameter random (a fresh one's zero output convolution would
make the naturalness term vacuous), written as a run directory the way the converter writes one.
"""

import dataclasses
import functools
import json
import os
import re
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from restorejax import checkpoint, losses, optim, tasks, train
from restorejax.convert import adm as convert_adm
from restorejax.losses import diffloss
from restorejax.models import adm_unet
from conftest import randomize_params as _randomize, tiny_config

KEYS_FILE = os.path.join(os.path.dirname(__file__), "data", "adm_official_keys.json")


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
  """(directory, params) of a random 16-channel, 32x32, learned-sigma prior."""
  cfg = adm_unet.default_config("tiny")
  cfg.update(model_channels=16, norm_groups=8, num_head_channels=16)
  params = _randomize(adm_unet.param_shapes(adm_unet.build(cfg)), 0)
  path = str(tmp_path_factory.mktemp("prior"))
  convert_adm.export_prior(path, params, cfg)
  return path, params


def _aux(params, seed=0):
  return {"diffloss": {"params": params}, "rng": jax.random.PRNGKey(seed)}


@pytest.fixture(scope="module")
def probe(prior):
  """One compiled function for most tests: (value, parts) and the gradient of the value with respect to
  the restored image and the target, with the prior's parameters and the part weights as arguments."""
  path, _ = prior

  def value(restored, target, params, naturalness, semantic):
    return diffloss.diffloss(restored, {"target": target}, aux=_aux(params), prior=path, num_t=2,
                             naturalness=naturalness, semantic=semantic)

  return jax.jit(jax.value_and_grad(value, argnums=(0, 1), has_aux=True))


def _images(shape, seed):
  return np.random.default_rng(seed).random(shape).astype(np.float32)


X, Y = _images((2, 32, 32, 3), 1), _images((2, 32, 32, 3), 2)


def test_zero_when_restored_equals_target_and_not_otherwise(prior, probe):
  params = prior[1]
  (value, parts), _ = probe(Y, X, params, 1.0, 1e-3)
  assert float(parts["nat"]) > 1e-2 and float(parts["sem"]) > 1e-2
  np.testing.assert_allclose(value, parts["nat"] + 1e-3 * parts["sem"], rtol=1e-6)
  (value, parts), _ = probe(X, X, params, 1.0, 1e-3)
  # Both branches see the same x_t (same t, same eps): equal up to float rounding of fused kernels.
  assert abs(float(parts["nat"])) < 1e-9 and abs(float(parts["sem"])) < 1e-9


def test_gradients_reach_the_restored_image_and_never_the_target(prior, probe):
  params = prior[1]
  for weights in ((1.0, 0.0), (0.0, 1.0)):  # naturalness alone, semantic alone
    _, (g_restored, g_target) = probe(Y, X, params, *weights)
    assert float(jnp.max(jnp.abs(g_restored))) > 0 and bool(jnp.isfinite(g_restored).all()), weights
    assert float(jnp.max(jnp.abs(g_target))) == 0.0, weights


def test_naturalness_reads_the_eps_channels_only(prior, probe):
  params = prior[1]
  nat = lambda p: float(probe(Y, X, p, 1.0, 1e-3)[0][1]["nat"])
  base = nat(params)

  def shifted(channels):
    p = jax.tree_util.tree_map(np.array, params)
    p["out_conv"]["kernel"][..., channels] += 0.5
    p["out_conv"]["bias"][channels] += 0.5
    return p

  assert nat(shifted(slice(3, 6))) == base  # the variance channels change nothing
  assert nat(shifted(slice(0, 3))) != base


def test_resizes_to_the_prior_resolution(prior, probe):
  path, params = prior
  x, y = _images((2, 64, 64, 3), 3), _images((2, 64, 64, 3), 4)
  big = jax.jit(lambda r, t: diffloss.diffloss(r, {"target": t}, aux=_aux(params), prior=path, num_t=2)[0])
  # Area resizing 64 -> 32 equals feeding the 2x2 block means at 32.
  down = lambda a: a.reshape(2, 32, 2, 32, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(big(x, y), probe(down(x), down(y), params, 1.0, 1e-3)[0][0], rtol=1e-5)


def test_remat_and_bfloat16_compute_the_same_loss(prior, probe):
  path, params = prior
  (value, _), (grad, _) = probe(Y, X, params, 1.0, 1e-3)

  def with_options(**options):
    fn = lambda r: diffloss.diffloss(r, {"target": X}, aux=_aux(params), prior=path, num_t=2, **options)[0]
    return jax.jit(jax.value_and_grad(fn))(Y)

  remat_value, remat_grad = with_options(remat=True)
  np.testing.assert_allclose(remat_value, value, rtol=1e-5)
  np.testing.assert_allclose(remat_grad, grad, rtol=1e-4, atol=1e-6 * float(jnp.abs(grad).max()))
  bf16 = jax.jit(lambda r: diffloss.diffloss(r, {"target": X}, aux=_aux(params), prior=path, num_t=2,
                                             dtype="bfloat16")[0])(Y)
  np.testing.assert_allclose(bf16, value, rtol=0.05)


def test_prior_stays_frozen_through_train_steps(prior):
  path, params = prior
  # DiffLoss alone: the restorer learns only if its gradients pass through the frozen UNet.
  config = tiny_config(**{"losses.l1.weight": 0.0, "losses.diffloss.weight": 1.0,
                          "losses.diffloss.prior": path, "optim.warmup_steps": 0})
  task = tasks.build(config)
  for a, b in zip(jax.tree_util.tree_leaves(task.aux["diffloss"]["params"]), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(a, b)
  before = jax.tree_util.tree_map(np.array, task.aux)
  tx, lr = optim.build(config.optim, 10)
  state = jax.jit(functools.partial(train.init_state, task, tx))(jax.random.PRNGKey(0))
  assert "diffloss" not in state.params and not any(
      "diffloss" in jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(state)[0])
  step = jax.jit(train.make_train_step(task, tx, lr, config))
  batch = {"target": np.asarray(_images((2, 32, 32, 3), 8) * 255, np.uint8), "index": np.arange(2)}
  aux = jax.device_put(task.aux)
  new, metrics = step(state, batch, aux)
  new, metrics = step(new, batch, aux)
  for name in ("train/loss/diffloss", "train/loss/diffloss/nat", "train/loss/diffloss/sem"):
    assert np.isfinite(float(metrics[name])) and float(metrics[name]) > 0, name
  assert float(metrics["train/grad_norm"]) > 0
  for a, b in zip(jax.tree_util.tree_leaves(aux), jax.tree_util.tree_leaves(before)):
    np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(new.params),
                                                      jax.tree_util.tree_leaves(state.params)))


def test_config_rules_shard_the_prior_like_adm():
  from configs import diffloss_nafnet  # pylint: disable=g-import-not-at-top
  config = diffloss_nafnet.get_config("tiny,prior=/nowhere")
  assert config.losses.diffloss.prior == "/nowhere" and config.losses.diffloss.weight == 1e-3
  shapes = adm_unet.param_shapes(adm_unet.build("tiny"))
  for path, leaf in flax.traverse_util.flatten_dict({"diffloss": {"params": shapes}}, sep="/").items():
    first = next(spec for pattern, spec in config.sharding.rules if re.search(pattern, path))
    assert (first == "fsdp") == (leaf.ndim > 1), path
    assert first == "fsdp" or len(first) == leaf.ndim, path


def test_prior_directory_errors(prior, tmp_path):
  path, params = prior
  with pytest.raises(ValueError, match="config.losses.diffloss.prior is empty"):
    losses.build({"diffloss": {"weight": 1.0}})
  with pytest.raises(ValueError, match="no such directory"):
    diffloss.read_prior(str(tmp_path / "nowhere"))
  restoration = tmp_path / "restoration"
  checkpoint.export_params(str(restoration), tiny_config(), {"w": np.zeros(2, np.float32)})
  with pytest.raises(ValueError, match="not a diffusion prior"):
    diffloss.read_prior(str(restoration))
  wrong = tmp_path / "wrong"
  cfg = json.loads(open(os.path.join(path, "config.json")).read())
  cfg["model"]["model_channels"] = 32
  checkpoint.export_params(str(wrong), checkpoint.read_config(path), params)
  (wrong / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match=r"config.losses.diffloss.prior=.*parameters do not fit the model"):
    diffloss.build_aux(prior=str(wrong))
  with pytest.raises(ValueError, match="t_min=5, t_max=2"):
    diffloss.diffloss(X, {"target": X}, aux=_aux(params), prior=path, t_min=5, t_max=2)


def test_converted_official_checkpoint_is_a_prior(tmp_path, monkeypatch):
  with open(KEYS_FILE) as f:
    entry = json.load(f)["tiny"]
  rng = np.random.default_rng(0)
  sd = {k: rng.standard_normal(s).astype(np.float32) for k, s in entry["state_dict_shapes"].items()}
  monkeypatch.setattr(convert_adm, "load_state_dict", lambda path: sd)  # no torch here
  out = str(tmp_path / "official")
  convert_adm.main(["--checkpoint", "unused.pt", "--preset", "tiny", "--out", out])
  spec = diffloss.read_prior(out)
  assert (spec.schedule, spec.num_steps, spec.image_size) == ("linear", 1000, 32)
  aux = diffloss.build_aux(prior=out)
  np.testing.assert_array_equal(aux["params"]["out_conv"]["kernel"], sd["out.2.weight"].transpose(2, 3, 1, 0))
  assert len(jax.tree_util.tree_leaves(aux)) == len(sd)
  # The unified command line writes the same directory from an .npz state dict.
  from restorejax.convert import __main__ as cli  # pylint: disable=g-import-not-at-top
  np.savez(tmp_path / "official.npz", **sd)
  out2 = str(tmp_path / "official2")
  assert cli.main(["--arch", "adm", "--preset", "tiny", "--src", str(tmp_path / "official.npz"), "--out", out2]) == 0
  assert diffloss.read_prior(out2) == dataclasses.replace(spec, path=out2)
  jax.tree_util.tree_map(np.testing.assert_array_equal, diffloss.build_aux(prior=out2), aux)


def test_prior_directory_may_be_relative(prior, monkeypatch):
  path, params = prior
  monkeypatch.chdir(os.path.dirname(path))  # e.g. the default runs/diffusion_prior
  aux = diffloss.build_aux(prior=os.path.basename(path))
  np.testing.assert_array_equal(aux["params"]["out_conv"]["kernel"], params["out_conv"]["kernel"])


def test_diffusion_run_is_the_option_and_prior_its_old_name(prior, monkeypatch):
  path, params = prior
  aux = diffloss.build_aux(diffusion_run=path)
  np.testing.assert_array_equal(aux["params"]["out_conv"]["kernel"], params["out_conv"]["kernel"])
  # Either spelling sets the one value: an old config, override or sweep keeps working.
  assert tiny_config(**{"losses.diffloss.prior": path}).losses.diffloss.diffusion_run == path
  assert tiny_config(**{"losses.diffloss.diffusion_run": path}).losses.diffloss.prior == path
  losses.build({"diffloss": {"weight": 1.0, "prior": path}})  # a config.json written before the rename
  with pytest.raises(ValueError, match=r"diffusion_run=/a and its old name config.losses.diffloss.prior=/b "
                                       "differ"):
    diffloss.build_aux(diffusion_run="/a", prior="/b")
  with pytest.raises(ValueError, match="config.losses.diffloss.diffusion_run=/nowhere: no such directory"):
    diffloss.build_aux(diffusion_run="/nowhere")


def test_losses_import_no_converter_or_task_and_the_converter_no_task():
  code = """
import sys
above = lambda *names: sorted(m for m in sys.modules if m.startswith(names))
import restorejax.losses
print(above("restorejax.convert", "restorejax.tasks", "restorejax.train"))
import restorejax.convert.adm
print(above("restorejax.tasks", "restorejax.train"))
"""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                        env={**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split("\n")[-3:] == ["[]", "[]", ""], proc.stdout
