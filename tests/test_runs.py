"""Whole runs through the command line: outputs, exact resume after SIGKILL and SIGTERM, 8 devices,
two processes, and the one-line errors of user mistakes.

All runs use configs/default.py:tiny with the same overrides, so they share one compiled step through
the persistent compilation cache and can be compared with one uninterrupted reference run.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, read_metrics, read_summary, run_main

RUN = ("--config.total_steps=80", "--config.checkpoint_every=20", "--config.eval_every=40",
       "--config.log_every=10")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference"))
  run_main(workdir, *RUN)
  return workdir


def _start(workdir, *extra, cwd=ROOT):
  cmd = [sys.executable, "-m", "restorejax.main", f"--config={ROOT}/configs/default.py:tiny",
         f"--workdir={workdir}", *RUN, *extra]
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH"))))}
  return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc, workdir, step, timeout=600):
  path = os.path.join(workdir, "checkpoints", str(step))
  start = time.time()
  while not os.path.isdir(path):
    if proc.poll() is not None:
      raise AssertionError(f"run ended before checkpoint {step}:\n{proc.stderr.read()[-3000:]}")
    if time.time() - start > timeout:
      proc.kill()
      raise AssertionError(f"no checkpoint {step} after {timeout}s")
    time.sleep(0.02)


def test_run_writes_the_promised_outputs(reference):
  s = read_summary(reference)
  for key in ("eval/psnr", "eval/ssim", "eval/input_psnr", "eval/input_ssim", "steps", "wall_time_s",
              "images_per_s", "params_fingerprint"):
    assert key in s, key
  assert s["steps"] == 80 and s["images_per_s"] > 0 and len(s["params_fingerprint"]) == 64
  assert np.isfinite(s["eval/psnr"]) and 0 < s["eval/ssim"] <= 1
  loss = read_metrics(reference, "train/loss")
  assert sorted(loss) == list(range(10, 81, 10))
  assert set(read_metrics(reference, "train/loss/l1")) == set(loss)
  assert sorted(read_metrics(reference, "eval/psnr")) == [40, 80]
  assert "train/images_per_s_per_device" in open(os.path.join(reference, "metrics.jsonl")).read()
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(reference))
  with open(os.path.join(reference, "config.json")) as f:
    assert json.load(f)["total_steps"] == 80
  assert sorted(os.listdir(os.path.join(reference, "checkpoints"))) == ["60", "80"]  # keep 2


def test_resume_after_sigkill_is_exact(reference, tmp_path):
  # Started with a relative --workdir, as the README's command is (orbax's async saves need absolute
  # paths; a relative one once crashed the first save), resumed with the absolute one.
  workdir = str(tmp_path / "run")
  proc = _start("run", cwd=tmp_path)
  _wait_for_checkpoint(proc, workdir, 20)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, "summary.json")), "the run ended before the kill"
  run_main(workdir, *RUN)
  s = read_summary(workdir)
  assert s["resumed_from_step"] >= 20
  assert s["params_fingerprint"] == read_summary(reference)["params_fingerprint"]
  assert s["ema_params_fingerprint"] == read_summary(reference)["ema_params_fingerprint"]


def test_sigterm_saves_exits_cleanly_and_resumes_exactly(reference, tmp_path):
  workdir = str(tmp_path)
  proc = _start(workdir)
  _wait_for_checkpoint(proc, workdir, 20)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  assert "Preempted (SIGTERM)" in stderr
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps[-1] > 20 or steps == [20]
  run_main(workdir, *RUN)
  s = read_summary(workdir)
  assert s["resumed_from_step"] == steps[-1]
  assert s["params_fingerprint"] == read_summary(reference)["params_fingerprint"]


def _assert_same_curve(workdir, reference, rtol):
  ref, got = read_metrics(reference, "train/loss"), read_metrics(workdir, "train/loss")
  assert sorted(got) == sorted(ref)
  np.testing.assert_allclose([got[k] for k in sorted(got)], [ref[k] for k in sorted(ref)], rtol=rtol)
  np.testing.assert_allclose(read_summary(workdir)["eval/psnr"], read_summary(reference)["eval/psnr"],
                             atol=1e-3)


def test_eight_devices_with_fsdp_follow_the_one_device_curve(reference, tmp_path):
  workdir = str(tmp_path)
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  run_main(workdir, *RUN, "--config.mesh=(('data', 4), ('fsdp', 2))", "--config.sharding.fsdp_min_size=0",
           env=env)
  assert read_summary(workdir)["devices"] == 8
  _assert_same_curve(workdir, reference, rtol=1e-4)


def test_two_processes_preempted_and_resumed_agree_with_one(reference, tmp_path):
  """launch/local.sh: SIGTERM reaches both processes, which save the same step (JAX's preemption sync
  point) and exit cleanly; relaunching resumes; the loss curve is the one-process curve."""
  workdir = str(tmp_path)
  cmd = [os.path.join(ROOT, "launch", "local.sh"), "2", f"--config={ROOT}/configs/default.py:tiny",
         f"--workdir={workdir}", *RUN]
  env = {**os.environ, "PYTHON": sys.executable}
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(proc, workdir, 20)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=600)
  assert proc.returncode == 0, stderr[-4000:]
  assert stderr.count("Preempted (SIGTERM): saved step") == 2, stderr[-4000:]
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  s = read_summary(workdir)
  assert s["processes"] == 2 and s["steps"] == 80 and s["resumed_from_step"] >= 20
  _assert_same_curve(workdir, reference, rtol=1e-4)


def test_importing_the_trainer_and_loading_configs_starts_no_jax_backend():
  """jax.distributed.initialize() must come before any backend use, and main.py imports the trainer and
  loads the config first: no module may compute with JAX at import (a module-level jnp.array once did)."""
  code = ("import importlib.util, sys\n"
          "from jax._src import xla_bridge\n"
          "import restorejax.train, restorejax.evaluate, restorejax.restore, restorejax.sweep\n"
          "for name in ('default', 'diffusion_prior', 'diffloss_nafnet', 'gir'):\n"
          "  spec = importlib.util.spec_from_file_location(name, f'configs/{name}.py')\n"
          "  module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
          "  module.get_config()\n"
          "sys.exit(3 if xla_bridge.backends_are_initialized() else 0)\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("args, message", [
    (("--config.optim.lrr=0.1",), "optim.lrr"),
    (("--config.model.name=unet3000",), "config.model.name: unknown model 'unet3000'"),
    (("--config.data.degrade.name=fog",), "config.data.degrade.name: unknown degradation 'fog'"),
    (("--config.task=colourise",), "config.task: unknown task 'colourise'"),
])
def test_user_mistakes_give_one_line_errors(tmp_path, args, message):
  proc = run_main(str(tmp_path / "w"), *args, check=False, timeout=300)
  _assert_one_line_error(proc, message)


def _config_file(tmp_path, name, body):
  """A config file deriving from configs/default.py:tiny; `body` edits `c` (unlocked)."""
  path = tmp_path / f"{name}.py"
  path.write_text(
      "from configs import default\n"
      "def get_config():\n  c = default.get_config('tiny')\n  with c.unlocked():\n    %s\n  return c\n"
      % body)
  return str(path)


def test_unknown_loss_in_a_config_file_is_named(tmp_path):
  cfg = _config_file(tmp_path, "bad_loss", "c.losses.perceptule = {'weight': 1.0}")  # misspelt
  proc = subprocess.run([sys.executable, "-m", "restorejax.main", f"--config={cfg}",
                         f"--workdir={tmp_path / 'w'}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  _assert_one_line_error(proc, "config.losses: unknown loss term 'perceptule'")


def test_malformed_degradation_range_is_named(tmp_path):
  proc = run_main(str(tmp_path / "w"), "--config.data.degrade.noise_sigma=(nan, nan)", check=False,
                  timeout=300)
  _assert_one_line_error(proc, "config.data.degrade: invalid options for 'blur_noise'")


def test_unwritable_workdir_is_named(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  proc = run_main(str(blocker / "run"), check=False, timeout=300)
  _assert_one_line_error(proc, f"--workdir={blocker / 'run'} is not writable")
  proc = run_main("gs://bucket/run", check=False, timeout=300)
  _assert_one_line_error(proc, "--workdir=gs://bucket/run: URL work directories are not supported yet")
  assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_run_that_keeps_failing_stops_with_a_clear_message(tmp_path):
  cfg = _config_file(tmp_path, "nan_noise", "c.data.degrade.noise_sigma = (float('nan'), float('nan'))")
  proc = subprocess.run([sys.executable, "-m", "restorejax.main", f"--config={cfg}",
                         f"--workdir={tmp_path / 'w'}", "--config.max_nonfinite_steps=5",
                         "--config.log_every=5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  _assert_one_line_error(proc, "consecutive steps up to step 5 had a non-finite loss or gradient")


def _assert_one_line_error(proc, message):
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("restorejax: error:") and message in last, last
