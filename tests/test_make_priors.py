"""Generated priors: SDEdit starts at the chosen noise level and lands where the network says; the command
writes one prior per degraded file (right size, deterministic from the seed, not the input), the builder
pairs them into triples, the generator never receives a target, and bad input is one line.

The diffusion run is a toy ADM UNet (16 channels, 32x32) with random parameters, written as a run
directory the way the converter writes one; sampling runs 2 of 4 DDIM steps on 30x44 images (two tiles).
"""

import inspect
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from restorejax import make_priors as command
from restorejax.convert import adm as convert_adm
from restorejax.data import build, images
from restorejax.diffusion import samplers, schedules, sdedit
from restorejax.models import adm_unet
from restorejax.tasks import prior_generator
from conftest import ROOT, randomize_params

H, W = 30, 44
STEPS = 4


def _scene(seed):
  """A smooth colour gradient with a few flat rectangles, uint8 (H, W, 3)."""
  rng = np.random.default_rng(seed)
  ys, xs = np.mgrid[0:H, 0:W] / np.array([H, W])[:, None, None]
  img = np.stack([ys, xs, 1 - ys], -1) * rng.uniform(0.3, 1.0, 3)
  for _ in range(3):
    y, x = rng.integers(0, H - 8), rng.integers(0, W - 8)
    img[y:y + 8, x:x + 10] = rng.uniform(0, 1, 3)
  return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(run dir, degraded dir, target dir, generator) with 3 degraded/target pairs."""
  root = tmp_path_factory.mktemp("genprior")
  cfg = adm_unet.default_config("tiny")
  cfg.update(model_channels=16, norm_groups=8, num_head_channels=16)
  run = str(root / "run")
  convert_adm.export_prior(run, randomize_params(convert_adm.param_shapes(adm_unet.build(cfg)), 0), cfg)
  for side in ("degraded", "target"):
    os.makedirs(root / side)
  rng = np.random.default_rng(1)
  for i in range(3):
    target = _scene(i)
    noisy = np.clip(target + rng.normal(0, 25, target.shape), 0, 255).astype(np.uint8)
    images.write_png(str(root / "target" / f"im{i}.png"), target)
    images.write_png(str(root / "degraded" / f"im{i}.png"), noisy)
  gen = prior_generator.load(run, sample_steps=STEPS)
  return run, str(root / "degraded"), str(root / "target"), gen


def _files(folder):
  return images.files_in([folder])


def _read(path):
  return images.read(path).pixels


# ---------------------------------------------------------------------------------------------------
# SDEdit itself (no network: closed-form eps functions).
# ---------------------------------------------------------------------------------------------------

def test_sdedit_starts_at_the_strength_and_follows_the_network():
  betas = schedules.beta_schedule("linear", 1000)
  chain = schedules.respace(betas, schedules.space_timesteps(1000, "10"))
  abar = np.cumprod(1.0 - betas)
  x = jnp.full((1, 32, 32, 3), 0.5)
  key = jax.random.PRNGKey(0)
  for strength in (0.1, 0.2):  # small: the final clip to [0, 1] barely acts
    k = sdedit.steps_run(10, strength)
    # eps = 0: DDIM rescales x_k back by 1/sqrt(abar_k), so the output is x + sqrt((1 - abar_k)/abar_k) noise
    out = sdedit.sdedit(lambda x_t, t: jnp.zeros_like(x_t), key, x, chain, strength=strength, clip_denoised=False)
    a = abar[int(chain.timesteps[k - 1])]
    spread = float(jnp.std(2.0 * (out - x)))
    assert abs(spread / np.sqrt((1 - a) / a) - 1) < 0.05, (strength, spread)
  # a network that knows the clean image y: every start lands on y (the sampler follows the network)
  y = jnp.asarray(np.random.default_rng(0).uniform(-0.9, 0.9, x.shape), jnp.float32)
  table = jnp.asarray(abar, jnp.float32)
  oracle = lambda x_t, t: (x_t - jnp.sqrt(table[t.astype(jnp.int32)])[:, None, None, None] * y) / \
      jnp.sqrt(1.0 - table[t.astype(jnp.int32)])[:, None, None, None]
  out = sdedit.sdedit(oracle, key, x, chain, strength=0.5)
  np.testing.assert_allclose(2.0 * out - 1.0, y, atol=1e-3)
  with pytest.raises(ValueError, match="strength"):
    sdedit.sdedit(oracle, key, x, chain, strength=0.0)


def test_the_generator_never_receives_a_target():
  """Structural: no function on the generated-prior path has a parameter for a ground truth."""
  fns = [sdedit.sdedit, prior_generator.generate, prior_generator.load, prior_generator.Generator.__call__,
         prior_generator.generated_prior, command.make_priors]
  for fn in fns:
    names = set(inspect.signature(fn).parameters)
    assert not names & {"target", "gt", "ground_truth", "clean", "hr", "batch"}, (fn.__qualname__, names)
  assert "degraded" in inspect.signature(prior_generator.generate).parameters


# ---------------------------------------------------------------------------------------------------
# The command's function and the builder.
# ---------------------------------------------------------------------------------------------------

def test_priors_have_the_right_size_are_seeded_and_pair_into_triples(setup, tmp_path):
  run, degraded, target, gen = setup
  assert gen.kind == "diffusion" and gen.settings["tile"] == 32 and gen.settings["downscale"] == 1
  out = str(tmp_path / "priors")
  assert command.make_priors(gen, _files(degraded), out, seed=0, severity=(0.3, 0.3)) == []
  names = sorted(os.listdir(out))
  assert names == ["im0.png", "im1.png", "im2.png"]
  for n in names:
    prior, deg = _read(os.path.join(out, n)), _read(os.path.join(degraded, n))
    assert prior.shape == deg.shape == (H, W, 3) and prior.dtype == np.uint8
    assert np.abs(prior.astype(int) - deg).mean() > 5  # a rewrite, not the input
  # same seed: the same bytes (also for one file alone); another seed: other priors
  again = str(tmp_path / "again")
  command.make_priors(gen, _files(degraded)[1:2], again, seed=0, severity=(0.3, 0.3))
  with open(os.path.join(out, "im1.png"), "rb") as a, open(os.path.join(again, "im1.png"), "rb") as b:
    assert a.read() == b.read()
  other = str(tmp_path / "other")
  command.make_priors(gen, _files(degraded)[1:2], other, seed=1, severity=(0.3, 0.3))
  assert not np.array_equal(_read(os.path.join(out, "im1.png")), _read(os.path.join(other, "im1.png")))

  report = build.main(["--degraded", degraded, "--target", target, "--prior", out,
                       "--out", str(tmp_path / "data")])
  assert report["written"] == 3 and not report["skipped"] and not report["without_prior"]
  with open(tmp_path / "data" / "dataset_info.json") as f:
    info = json.load(f)
  assert info["has_prior"] and info.get("prior_absent", 0) == 0


def test_severity_zero_is_the_rewrite_and_severity_changes_it(setup):
  _, degraded, _, gen = setup
  x = _read(_files(degraded)[0]).astype(np.float32) / 255.0
  key = jax.random.PRNGKey(3)
  rewrite = gen(x, jax.random.split(key)[0])
  np.testing.assert_allclose(prior_generator.generated_prior(gen, x, key, 0.0), rewrite, atol=2e-3)
  assert np.abs(prior_generator.generated_prior(gen, x, key, 0.6) - rewrite).mean() > 0.02


def test_a_prior_trained_on_downsized_patches_sees_images_at_its_scale(setup, tmp_path):
  """A run that learned 64-pixel patches at 32x32 (configs/diffusion_prior.py) works at half size."""
  run, degraded, _, _ = setup
  shutil.copytree(run, tmp_path / "run")
  with open(tmp_path / "run" / "config.json") as f:
    config = json.load(f)
  config["data"] = {"patch_size": 64}
  with open(tmp_path / "run" / "config.json", "w") as f:
    json.dump(config, f)
  gen = prior_generator.load(str(tmp_path / "run"), sample_steps=STEPS)
  assert gen.settings["downscale"] == 2
  x = _read(_files(degraded)[0]).astype(np.float32) / 255.0
  assert gen(x, jax.random.PRNGKey(0)).shape == (H, W, 3)


def test_a_bad_file_is_reported_and_the_others_are_written(setup, tmp_path, capsys):
  _, degraded, _, gen = setup
  broken = tmp_path / "broken.png"
  broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
  failures = command.make_priors(gen, [str(broken)] + _files(degraded)[:1], str(tmp_path / "out"), seed=0)
  assert [f for f, _ in failures] == [str(broken)]
  assert os.listdir(tmp_path / "out") == ["im0.png"]
  assert f"restorejax-make-priors: error: {broken}:" in capsys.readouterr().err


def test_run_directory_errors_name_it(setup, tmp_path):
  with pytest.raises(ValueError, match=f"^{tmp_path}: no config.json"):
    prior_generator.load(str(tmp_path))
  with pytest.raises(ValueError, match=r"^strength=1.5: need a value in \(0, 1\]"):
    prior_generator.load(setup[0], strength=1.5)
  with pytest.raises(ValueError, match=r"^tile=5: need 0 \(whole image\) or a positive multiple"):
    prior_generator.load(setup[0], tile=5)
  assert command.parse_severity("0.4") == (0.4, 0.4) and command.parse_severity("0.2:0.6") == (0.2, 0.6)
  with pytest.raises(ValueError, match="--severity=0.6:0.2"):
    command.parse_severity("0.6:0.2")


def test_an_sr3_run_generates_conditioned_priors_scale_times_larger(tmp_path):
  """A toy SR3 run (configs/sr3.py:tiny, x2, random parameters): the prior is 2x the degraded image, a
  function of it (conditioning), and seeded."""
  sys.path.insert(0, ROOT)
  from configs import sr3 as sr3_config  # pylint: disable=g-import-not-at-top  (configs/ is not a package)
  from restorejax import checkpoint  # pylint: disable=g-import-not-at-top
  from restorejax.tasks import sr3  # pylint: disable=g-import-not-at-top
  config = sr3_config.get_config("tiny")
  shapes = jax.eval_shape(sr3.SR3(config).init_params, jax.random.PRNGKey(0))
  checkpoint.export_params(str(tmp_path / "sr3"), config, randomize_params(shapes, 0))
  gen = prior_generator.load(str(tmp_path / "sr3"), sample_steps=2)
  assert gen.kind == "sr3" and gen.scale == 2 and gen.settings["strength"] == 1.0
  a, b = (np.random.default_rng(i).random((7, 10, 3)).astype(np.float32) for i in (0, 1))
  key = jax.random.PRNGKey(0)
  out = gen(a, key)
  assert out.shape == (14, 20, 3)
  np.testing.assert_array_equal(out, gen(a, key))
  assert np.abs(out - gen(b, key)).mean() > 1e-3  # strength 1 starts from noise: only the conditioning differs


# ---------------------------------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------------------------------

def _cli(*args):
  return subprocess.run([sys.executable, "-m", "restorejax.make_priors", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})


def test_command_line_writes_priors_and_fails_in_one_line(setup, tmp_path):
  run, degraded, _, gen = setup
  out = tmp_path / "priors"
  proc = _cli(f"--degraded={degraded}", f"--run={run}", f"--out={out}", f"--sample_steps={STEPS}", "--seed=2")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert sorted(os.listdir(out)) == ["im0.png", "im1.png", "im2.png"]
  # the same seed in this process gives the same bytes
  command.make_priors(gen, _files(degraded)[2:], str(tmp_path / "here"), seed=2)
  assert (tmp_path / "here" / "im2.png").read_bytes() == (out / "im2.png").read_bytes()
  # a user mistake (here --out onto the inputs) is one line, exit status 2, and nothing is written
  before = {n: open(os.path.join(degraded, n), "rb").read() for n in os.listdir(degraded)}
  proc = _cli(f"--degraded={degraded}", f"--run={run}", f"--out={degraded}")
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert "error: " in lines[0] and lines[0].endswith(
      f"--out={degraded} is the --degraded folder: priors would mix with or replace its files; choose "
      "another folder")
  assert {n: open(os.path.join(degraded, n), "rb").read() for n in os.listdir(degraded)} == before
