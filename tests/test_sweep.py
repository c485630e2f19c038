"""The shipped loss sweep end to end with tiny settings (8 variants x 10 steps), resuming, launch commands
for a cluster, and bad sweep files.

The DiffLoss variants use a random one-level toy prior (compiles fast) written the way the converter
writes one. Most of this test's time is eight processes compiling their train steps.
"""

import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from restorejax.convert import adm as convert_adm
from restorejax.data import images
from restorejax.models import adm_unet
from conftest import ROOT, read_metrics

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
NAMES = [f"{fusion}_{loss}" for fusion in ("none", "concat") for loss in ("pixel", "prior", "diffloss", "both")]


def sweep(workdir, *args, prior="", timeout=1800):
  cmd = [sys.executable, "-m", "restorejax.sweep", f"--config={ROOT}/configs/default.py:tiny",
         f"--sweep={ROOT}/configs/sweeps/losses.py:tiny,prior={prior}", f"--workdir={workdir}", *args]
  # Ten steps per variant: compiling is most of the time, and XLA compiles 2-2.5x faster without its CPU
  # optimisation passes (the steps then run about 2x slower).
  flags = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
  return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "XLA_FLAGS": flags}, capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
  cfg = adm_unet.default_config("tiny")
  cfg.update(model_channels=8, norm_groups=4, num_head_channels=8, channel_mult=(1,), attention_resolutions=())
  rng = np.random.default_rng(0)
  shapes = adm_unet.param_shapes(adm_unet.build(cfg))
  params = jax.tree_util.tree_map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
  path = str(tmp_path_factory.mktemp("prior"))
  convert_adm.export_prior(path, params, cfg)
  return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, prior):
  workdir = str(tmp_path_factory.mktemp("sweep"))
  proc = sweep(workdir, prior=prior)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return workdir, proc


def test_every_variant_trains_and_is_tabulated(finished):
  workdir, proc = finished
  assert "8/8 variants finished" in proc.stdout
  with open(os.path.join(workdir, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["variant"] for r in rows] == NAMES
  assert all(np.isfinite(float(r["eval/psnr"])) and int(r["steps"]) == 10 for r in rows)
  table = open(os.path.join(workdir, "results.md")).read()
  assert all(f"| {name} |" in table for name in NAMES) and "Input (degraded) PSNR" in table
  chart = images.read(os.path.join(workdir, "results.png")).pixels
  assert chart.shape[0] > 400 and chart.shape[1] > 400
  # The variants differ as the sweep says: terms logged, fusion and simulated priors in the configs.
  for name in NAMES:
    run = os.path.join(workdir, name)
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["model"]["fusion"] == name.split("_")[0] and config["data"]["simulated_prior"]["enabled"]
    logged = open(os.path.join(run, "metrics.jsonl")).read()
    assert ("train/loss/diffloss/nat" in logged) == name.endswith(("diffloss", "both")), name
    assert ("train/loss/prior_patch" in logged) == name.endswith(("prior", "both")), name
    assert read_metrics(run, "train/loss/l1")
  # Different losses give different parameters.
  prints = {json.load(open(os.path.join(workdir, n, "summary.json")))["params_fingerprint"] for n in NAMES}
  assert len(prints) == len(NAMES)


def test_a_finished_sweep_resumes_without_training(finished, prior):
  workdir, _ = finished
  proc = sweep(workdir, prior=prior, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.count("done before, skipped") == 8


def test_print_only_gives_one_launch_command_per_variant(tmp_path, prior):
  workdir = tmp_path / "cluster"
  proc = sweep(str(workdir), "--print_only", "--config.seed=3", prior=prior, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 8
  for name, line in zip(NAMES, lines):
    assert "-m restorejax.main" in line and f"--workdir={workdir}/{name}" in line and "--config.seed=3" in line
  assert not workdir.exists()  # nothing ran


def test_bad_sweep_files_are_named(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_sweeps():\n  return []\n")
  proc = subprocess.run([sys.executable, "-m", "restorejax.sweep", "--config=configs/default.py:tiny",
                         f"--sweep={bad}", f"--workdir={tmp_path / 'w'}"], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2 and f"{bad} defines no get_sweep(arg)" in proc.stderr
  bad.write_text("def get_sweep(arg=None):\n  return [('a', {}), ('a', {'seed': 1})]\n")
  proc = subprocess.run([sys.executable, "-m", "restorejax.sweep", "--config=configs/default.py:tiny",
                         f"--sweep={bad}", f"--workdir={tmp_path / 'w'}"], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2 and "variant name 'a' is empty, repeated" in proc.stderr


@pytest.mark.parametrize("spec, variant", [("losses.py", "tiny"), ("losses.py", ""), ("fusion.py", "tiny"),
                                           ("fusion.py", "")])
def test_shipped_sweeps_override_real_fields_of_the_default_config(spec, variant):
  """Every override of a shipped sweep names a field of configs/default.py (in the variant it is used
  with) and has its type; evaluation crops fit the held-out images."""
  from restorejax import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  module_spec = importlib.util.spec_from_file_location("default_config", os.path.join(ROOT, "configs", "default.py"))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  variants = sweep_lib.load_sweep(os.path.join(ROOT, "configs", "sweeps", spec) + (f":{variant}" if variant else ""))
  assert len(variants) >= 4
  for name, overrides in variants:
    config = module.get_config(variant or None)
    for key, value in overrides.items():
      *parents, field = key.split(".")
      node = config
      for part in parents:
        node = node[part]
      assert field in node, f"{spec}:{variant} {name}: {key} is not a config field"
      with config.unlocked():
        node[field] = value  # ConfigDict refuses a value of another type
    assert config.data.eval_crop <= config.data.procedural.eval_image_size, (name, config.data.eval_crop)
