"""SR3 and cascades: the conditional loss trains, samples are scale x the LR and deterministic, a sharded
sampler equals one device, tiled sampling blends without seams, conditioning augmentation is training only,
and a two-stage cascade runs end to end from run directories."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags

from restorejax import cascade, checkpoint, restore, sharding, tasks
from restorejax.data import images, procedural
from restorejax.diffusion import conditioning, tiled
from restorejax.tasks import sr3, sr3_cascade
from conftest import ROOT, with_updates


def load_config(path="configs/sr3.py", arg="tiny", **updates):
  spec = importlib.util.spec_from_file_location("sr3_test_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return with_updates(module.get_config(arg), updates)


SMALL = {"model.model_channels": 8, "model.norm_groups": 4}


def hr_lr(n=4, size=16, scale=2):
  """Dead-leaves HR images in [0, 1] and their 8-bit MATLAB-bicubic LR images, as the data path makes them."""
  hr = np.stack([procedural._cached(0, size, i) for i in range(n)]).astype(np.float32) / 255.0
  lr = np.round(np.clip(np.asarray(sr3.bicubic_down(jnp.asarray(hr), scale)), 0, 1) * 255.0) / 255.0
  return hr, lr.astype(np.float32)


@pytest.fixture(scope="module")
def task():
  return tasks.build(load_config(**SMALL))


def random_params(task, seed=0):
  """Parameters of the task's shapes without compiling its init (slow on XLA:CPU): fan-in scaled normal
  kernels, unit norm scales, zero biases."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = sharding.path_str(path).rsplit("/", 1)[-1]
    if name == "scale":
      return np.ones(leaf.shape, np.float32)
    if name == "bias":
      return np.zeros(leaf.shape, np.float32)
    return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(task.init_params, jax.random.PRNGKey(0)))


@pytest.fixture(scope="module")
def params(task):
  return random_params(task)


@pytest.fixture(scope="module")
def evaluator(task):
  mesh = sharding.mesh(task.config)
  return task.evaluator(mesh, sharding.batch_sharding(task.config, mesh))


def test_loss_trains(task, params):
  hr, lr = hr_lr()
  batch = {"target": jnp.asarray(hr), "degraded": jnp.asarray(lr)}
  tx = optax.adam(2e-3)

  @jax.jit
  def step(p, opt):
    (loss, terms), grads = jax.value_and_grad(
        lambda q: task.loss(q, batch, jax.random.PRNGKey(1), {}), has_aux=True)(p)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt, loss, terms["eps"], optax.global_norm(grads)

  p, opt, losses = params, tx.init(params), []
  for _ in range(6):
    p, opt, loss, eps, gnorm = step(p, opt)
    assert np.isfinite(float(loss)) and float(gnorm) > 0 and float(eps) == float(loss)
    losses.append(float(loss))
  assert losses[-1] < losses[0] - 0.01, losses  # same noise draw every step: the fit must improve


def test_loss_rejects_a_same_size_degraded(task, params):
  hr, _ = hr_lr()
  with pytest.raises(ValueError, match="1/config.data.scale=2"):
    jax.eval_shape(task.loss, params, {"target": hr, "degraded": hr}, jax.random.PRNGKey(0), {})


def test_samples_scale_consistency_and_determinism(task, params, evaluator):
  _, lr = hr_lr(n=2)
  fn = evaluator.sample  # the evaluator's jitted sampler: the same shapes, compiled once for both tests
  a = np.asarray(fn(params, lr, jax.random.PRNGKey(5)))
  assert a.shape == (2, 16, 16, 3) and a.min() >= 0 and a.max() <= 1
  np.testing.assert_array_equal(a, np.asarray(fn(params, lr, jax.random.PRNGKey(5))))
  assert not np.array_equal(a, np.asarray(fn(params, lr, jax.random.PRNGKey(6))))
  c = np.asarray(sr3.consistency(a, lr, 2))
  assert c.shape == (2,) and np.all(np.isfinite(c)) and np.all(c >= 0)
  # The bicubic baseline is far more consistent than an untrained model's samples: the measure sees it.
  bic = np.asarray(sr3.consistency(jnp.clip(sr3.bicubic_up(lr, (16, 16)), 0, 1), lr, 2))
  assert np.all(bic < c)
  ddim = jax.jit(sr3.make_sample_fn(task.model, task.config.sr3, 2, sampler="ddim", sample_steps=3))
  d = np.asarray(ddim(params, lr, jax.random.PRNGKey(5)))
  assert d.shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(d, np.asarray(ddim(params, lr, jax.random.PRNGKey(5))))


def test_evaluator_reports_sr_metrics_against_bicubic(params, evaluator):
  ev = evaluator
  scalars, imgs = ev(params)
  for name in ("psnr", "ssim", "consistency"):
    assert np.isfinite(scalars[f"eval/{name}"]) and np.isfinite(scalars[f"eval/bicubic_{name}"])
  assert np.isfinite(scalars["eval/loss"]) and scalars["eval/bicubic_psnr"] > scalars["eval/psnr"]
  assert imgs["eval/samples"].shape == (2, 16, 3 * 16, 3) and imgs["eval/samples"].dtype == np.uint8
  again, _ = ev(params)
  assert again == scalars  # fixed keys: successive evaluations of the same params agree


def test_sharded_sampler_on_8_devices_equals_one_device():
  script = textwrap.dedent(f"""
      import json, sys
      sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
      import jax, numpy as np
      from jax.sharding import NamedSharding, PartitionSpec as P
      from restorejax import sharding, tasks
      from test_sr3 import load_config, hr_lr, random_params, SMALL
      config = load_config(**SMALL)
      task = tasks.build(config)
      params = random_params(task)
      _, lr = hr_lr(n=8)
      key = jax.random.PRNGKey(3)
      one = np.asarray(jax.jit(task.sample_fn)(params, lr, key))
      mesh = sharding.mesh(config)
      batch_sh, repl = sharding.batch_sharding(config, mesh), sharding.replicated(mesh)
      fn = jax.jit(task.sample_fn, in_shardings=(repl, batch_sh, repl), out_shardings=batch_sh)
      out = fn(jax.device_put(params, repl), jax.device_put(lr, batch_sh), key)
      print(json.dumps({{"devices": len(out.sharding.device_set), "shards": len(out.addressable_shards),
                         "diff": float(np.abs(np.asarray(out) - one).max())}}))
  """)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8 and result["shards"] == 8
  assert result["diff"] <= 1e-5, result


@pytest.mark.parametrize("hw,tile,overlap", [((16, 16), (8, 8), (4, 4)), ((20, 36), (8, 16), (3, 6)),
                                             ((9, 8), (4, 8), (2, 0)), ((8, 8), (8, 8), (2, 2))])
def test_blend_weights_sum_to_one(hw, tile, overlap):
  boxes, weights = tiled.blend_weights(hw, tile, overlap)
  total = np.zeros(hw)
  for (y, x), w in zip(boxes, weights):
    total[y:y + tile[0], x:x + tile[1]] += w
  np.testing.assert_allclose(total, 1.0, atol=1e-6)
  assert (weights > 0).all()
  if len(boxes) == 1:
    np.testing.assert_array_equal(weights, 1.0)  # one tile: exactly the untiled prediction


def test_tiled_eps_equals_untiled_when_the_tile_covers_the_image(task, params):
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (2, 16, 16, 3))
  cond = jax.random.normal(jax.random.fold_in(key, 1), (2, 16, 16, 3))
  t = jnp.array([100.0, 900.0])
  net = lambda x, t, c: task.model.apply({"params": params}, x, t, cond=c)[0]
  # Exactly the image, and larger (clamped); one compile for all three.
  both = jax.jit(lambda x, t, c: (net(x, t, c), tiled.tiled_eps_fn(net, (16, 16), 16, 4)(x, t, c),
                                  tiled.tiled_eps_fn(net, (16, 16), 32, 4)(x, t, c)))
  full, exact, larger = (np.asarray(a) for a in both(x, t, cond))
  np.testing.assert_array_equal(exact, full)
  np.testing.assert_array_equal(larger, full)


class _Pointwise:
  """A stand-in network whose eps at a pixel depends only on that pixel: tiles must reassemble it exactly."""

  def __init__(self, constant: bool):
    self.constant = constant

  def apply(self, variables, x, t, cond):
    del variables
    if self.constant:
      return jnp.full_like(x, 0.25), None
    return 0.3 * x - 0.2 * cond[..., :3] + 1e-4 * t[:, None, None, None], None


@pytest.mark.parametrize("constant", [True, False])
def test_tiled_sampling_has_no_seams(constant):
  _, lr = hr_lr(n=2, size=24)  # 12x12 LR -> 24x24 HR in 8x8 tiles overlapping by 4: 5x5 tiles
  schedule = conditioning.sampling_schedule("linear", 1000, 10, "sqrt_abar")
  run = lambda tile: np.asarray(jax.jit(lambda lr, key: sr3.sample(
      _Pointwise(constant), None, lr, key, scale=2, schedule=schedule, tile=tile, overlap=4))(
          lr, jax.random.PRNGKey(2)))
  untiled, tiled_out = run(0), run(8)
  assert tiled_out.shape == (2, 24, 24, 3)
  np.testing.assert_allclose(tiled_out, untiled, atol=2e-6)
  # The blended eps of a constant model is that constant everywhere, tile borders included.
  blended = tiled.tiled_eps_fn(lambda x, t, c: _Pointwise(True).apply(None, x, t, c)[0], (24, 24), 8, 4)(
      jnp.zeros((1, 24, 24, 3)), jnp.zeros(1), jnp.zeros((1, 24, 24, 3)))
  np.testing.assert_allclose(np.asarray(blended), 0.25, atol=1e-7)


@pytest.mark.parametrize("variant,kind", [("16-32,tiny", "noise"), ("32-64,tiny", "blur")])
def test_conditioning_augmentation_is_training_only(monkeypatch, variant, kind):
  config = load_config("configs/sr3_cascade.py", variant, **SMALL)
  task = tasks.build(config)
  assert task.model.in_channels == 7 and config.sr3.augment == kind
  size = config.data.patch_size
  hr, lr = hr_lr(n=2, size=size)
  hw = (size, size)
  clean = np.asarray(sr3.clean_conditioning(lr, hw, augmented=True))
  trained = np.asarray(sr3.training_conditioning(jax.random.PRNGKey(1), lr, hw, kind, config.sr3.augment_max))
  assert trained.shape == clean.shape == (2, size, size, 4)  # upsampled LR + level; x_t makes 7
  assert np.abs(trained[..., :3] - clean[..., :3]).max() > 1e-3  # the training input is changed
  assert np.all(clean[..., 3] == 0) and np.all(trained[..., 3] > 0) and np.all(trained[..., 3] <= 1)
  assert np.ptp(trained[..., 3], axis=(1, 2)).max() == 0  # one level per example, as a constant plane

  calls = []
  real = conditioning.augment
  monkeypatch.setattr(conditioning, "augment", lambda *a, **k: calls.append(1) or real(*a, **k))
  params = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
  jax.eval_shape(task.loss, params, {"target": hr, "degraded": lr}, jax.random.PRNGKey(0), {})
  assert calls  # training calls it

  def forbidden(*args, **kwargs):
    raise AssertionError("conditioning augmentation called outside training")

  monkeypatch.setattr(conditioning, "augment", forbidden)
  jax.eval_shape(task.sample_fn, params, lr, jax.random.PRNGKey(0))
  jax.eval_shape(sr3.make_sample_fn(task.model, config.sr3, 2, sampler="ddim", tile=size // 2, tile_overlap=4),
                 params, lr, jax.random.PRNGKey(0))
  mesh = sharding.mesh(config)
  ev = task.evaluator(mesh, sharding.batch_sharding(config, mesh))
  jax.eval_shape(ev.sample, params, ev.batches[0]["lr"], jax.random.PRNGKey(0))
  jax.eval_shape(ev.loss_step, params, ev.batches[0])


def test_cascade_runs_two_stages_from_run_directories(tmp_path):
  dirs = []
  for i, variant in enumerate(("16-32,tiny", "32-64,tiny")):
    config = load_config("configs/sr3_cascade.py", variant, **SMALL)
    task = tasks.build(config)
    params = random_params(task, seed=i)
    checkpoint.export_params(str(tmp_path / f"stage{i}"), config, params)
    dirs.append(str(tmp_path / f"stage{i}"))
  image = procedural._cached(1, 12, 0)[:, :10]  # 12x10 LR: odd sizes pad inside and crop back
  images.write_png(str(tmp_path / "in.png"), image)
  out = tmp_path / "out"
  stages = [sr3_cascade.load_stage(d) for d in dirs]
  failures = cascade.cascade_files(stages, [str(tmp_path / "in.png")], str(out), seed=0, save_stages=True,
                                   sample_steps=2)
  assert failures == []
  first = images.to_rgb8(images.read(str(out / "in_stage0.png")))[0]
  final = images.to_rgb8(images.read(str(out / "in.png")))[0]
  assert first.shape == (24, 20, 3) and final.shape == (48, 40, 3)
  # The same stages and seed give the same images (stage keys come from the seed).
  lr = image[None].astype(np.float32) / 255.0
  a = sr3_cascade.run_cascade(stages, lr, jax.random.PRNGKey(0), sample_steps=2)
  b = sr3_cascade.run_cascade(stages, lr, jax.random.PRNGKey(0), sample_steps=2)
  np.testing.assert_array_equal(np.round(a[-1][0] * 255).astype(np.uint8), final)
  np.testing.assert_array_equal(a[-1], b[-1])
  # restorejax-restore on one SR3 run samples as the cascade's first stage does (same seed, same key), run
  # in this process after the cascade command defined its flags: each command has its own --out, --tile,
  # --seed, none is defined twice.
  cascade.define_flags()
  restore.define_flags()
  flags.FLAGS.unparse_flags()
  restore.main(restore.parse_flags(["restorejax-restore", f"--workdir={dirs[0]}", f"--out={tmp_path / 'restored'}",
                                    "--sample_steps=2", "--seed=0", str(tmp_path / "in.png")]))
  np.testing.assert_array_equal(images.to_rgb8(images.read(str(tmp_path / "restored" / "in.png")))[0], first)
  with pytest.raises(ValueError, match="an SR3 run takes no prior"):
    restore.restore_files(dirs[0], [str(tmp_path / "in.png")], str(tmp_path / "restored2"),
                          prior=str(tmp_path / "in.png"))
  with pytest.raises(ValueError, match="not 'sr3'"):
    other = tmp_path / "other"
    checkpoint.export_params(str(other), load_config("configs/diffusion_prior.py", "tiny"), {"w": np.zeros(1)})
    sr3_cascade.load_stage(str(other))


def test_cascade_command_names_a_bad_run_directory(tmp_path):
  cmd = [sys.executable, "-m", "restorejax.cascade", f"--stages={tmp_path / 'missing'}",
         f"--out={tmp_path / 'o'}", str(tmp_path / "in.png")]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])})
  assert proc.returncode == 2, proc.stderr[-2000:]
  want = f"restorejax: error: {tmp_path / 'missing'}: no config.json (is it a restorejax run directory?)"
  assert proc.stderr.strip().splitlines()[-1] == want
  assert not (tmp_path / "o").exists()  # nothing written when the stages cannot be loaded


FAST_XLA = {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0 "
                         "--xla_llvm_disable_expensive_passes=true".strip()}
SR3_RUN = ("--config.checkpoint_every=10",)  # a checkpoint mid-run, for the SIGKILL test


@pytest.fixture(scope="module")
def sr3_run(tmp_path_factory):
  """An uninterrupted configs/sr3.py:tiny run (20 steps, checkpoints at 10 and 20)."""
  from conftest import run_main  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("sr3") / "run")
  run_main(workdir, *SR3_RUN, config="configs/sr3.py:tiny", env=FAST_XLA)
  return workdir


def test_sr3_tiny_config_trains_through_the_trainer(sr3_run):
  """configs/sr3.py:tiny on the shared SR data path (data.scale, LR made on the device): the summary holds
  the SR3 evaluation (PSNR, consistency, the bicubic baseline) and the run writes its sample grid."""
  from conftest import read_summary  # pylint: disable=g-import-not-at-top
  workdir = sr3_run
  summary = read_summary(workdir)
  for key in ("eval/psnr", "eval/consistency", "eval/bicubic_psnr", "eval/bicubic_consistency"):
    assert np.isfinite(summary[key]), (key, summary)
  assert summary["steps"] == 20
  grid = images.to_rgb8(images.read(os.path.join(workdir, "samples.png")))[0]
  assert grid.shape[0] >= 16 and grid.shape[1] >= 3 * 16


def test_sr3_resume_after_sigkill_is_exact(sr3_run, tmp_path):
  """As for restoration (tests/test_runs.py): killed after its step-10 checkpoint and rerun, an SR3 run
  ends with the parameters of the uninterrupted one, bit for bit (the noise levels and timesteps each
  step draws come from the step's key, restored with the checkpoint)."""
  from conftest import read_summary, run_main  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "restorejax.main", f"--config={os.path.join(ROOT, 'configs/sr3.py:tiny')}",
         f"--workdir={workdir}", *SR3_RUN]
  proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **FAST_XLA}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  start = time.time()
  while not os.path.isdir(os.path.join(workdir, "checkpoints", "10")):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() - start < 600, "no checkpoint 10"
    time.sleep(0.01)
  proc.kill()
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, "summary.json")), "the run ended before the kill"
  run_main(workdir, *SR3_RUN, config="configs/sr3.py:tiny", env=FAST_XLA)
  resumed, reference = read_summary(workdir), read_summary(sr3_run)
  assert resumed["resumed_from_step"] >= 10
  assert resumed["params_fingerprint"] == reference["params_fingerprint"]
