"""restorejax.sr3_compare: SR3, a regression network and bicubic scored on the same held-out images.

Run directories are exported random parameters of tiny configs (no training): the comparison's plumbing,
not the models' quality, is under test.
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

from restorejax import cascade, checkpoint, models, restore, sr3_compare
from restorejax.evaluation import trained_restorer
from restorejax.models import lpips as lpips_net
from restorejax.tasks import sr3, sr3_cascade
from conftest import ROOT, randomize_params, with_updates


def load_config(path, arg="tiny", **updates):
  spec = importlib.util.spec_from_file_location("compare_test_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return with_updates(module.get_config(arg), updates)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A tiny x2 SR3 run, x2 and x4 tiny RRDBNet runs (random parameters, exported)."""
  root = tmp_path_factory.mktemp("compare")
  # 48x48 held-out images: LPIPS's AlexNet needs more than the tiny config's 16x16 (NaN below ~32 pixels).
  config = load_config("configs/sr3.py", **{"model.model_channels": 8, "model.norm_groups": 4,
                                            "data.procedural.eval_image_size": 48})
  stage_like = jax.eval_shape(sr3.SR3(config).init_params, jax.random.PRNGKey(0))
  checkpoint.export_params(str(root / "sr3"), config, randomize_params(stage_like, 0))
  for scale in (2, 4):
    reg = load_config("configs/rrdbnet.py", **{"model.scale": scale, "data.scale": scale})
    model = models.build(reg.model)
    like = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32)))
    checkpoint.export_params(str(root / f"rrdb_x{scale}"), reg, randomize_params(like["params"], scale))
  return root


def test_all_methods_are_scored_on_the_same_held_out_images(runs, tmp_path):
  report, outputs = sr3_compare.compare(str(runs / "sr3"), [str(runs / "rrdb_x2")], count=3, seed=1,
                                        sample_steps=2)
  config = checkpoint.read_config(str(runs / "sr3"))
  hr, lr = sr3.held_out(config, 2, 2, 3)  # what SR3's evaluator samples
  assert set(report["methods"]) == {"sr3", "bicubic", "rrdbnet"} and report["num_images"] == 3
  np.testing.assert_array_equal(outputs["target"], hr / np.float32(255.0))
  for name in ("sr3", "bicubic", "rrdbnet"):
    assert outputs[name].shape == hr.shape
    np.testing.assert_array_equal(np.round(outputs[name] * 255.0) / 255.0, outputs[name])  # 8-bit levels
    per = report["methods"][name]["per_image"]
    want = sr3.sr_scores(outputs[name], hr, lr, 2)
    for k in ("psnr", "ssim", "consistency"):
      assert len(per[k]) == 3
      np.testing.assert_allclose(np.mean(per[k]), want[k], rtol=1e-5)
      assert report["methods"][name]["means"][k] == pytest.approx(np.mean(per[k]))
    assert ("lpips" in report["methods"][name]["means"]) == lpips_net.available()
    if lpips_net.available():
      assert np.all(np.isfinite(per["lpips"])) and len(per["lpips"]) == 3
  # SR3's outputs are its sampler's for the seed's key; the regression network's its forward pass.
  stage = sr3_cascade.load_stage(str(runs / "sr3"))
  lr01 = lr.astype(np.float32) / 255.0
  np.testing.assert_array_equal(outputs["sr3"], sr3_cascade.run_stage(stage, lr01, jax.random.PRNGKey(1),
                                                                       sample_steps=2))
  run = trained_restorer.load(str(runs / "rrdb_x2"))
  direct = np.asarray(run.apply(run.params, lr01))
  np.testing.assert_allclose(outputs["rrdbnet"], np.round(np.clip(direct, 0, 1) * 255) / 255, atol=1 / 255 + 1e-6)
  # Bicubic upsampling is nearly consistent with its LR input (up to the resampling's loss); random networks are not.
  assert report["methods"]["bicubic"]["means"]["consistency"] < 5e-3
  assert report["methods"]["rrdbnet"]["means"]["consistency"] > report["methods"]["bicubic"]["means"]["consistency"]
  sr3_compare.write(report, outputs, str(tmp_path))
  table = (tmp_path / "comparison.md").read_text()
  assert all(f"| {name} |" in table for name in ("sr3", "bicubic", "rrdbnet"))
  assert json.loads((tmp_path / "comparison.json").read_text())["methods"]["sr3"]["means"] == \
      report["methods"]["sr3"]["means"]
  assert (tmp_path / "comparison.png").stat().st_size > 0


def test_the_target_scores_as_a_perfect_output():
  hr = np.stack([np.asarray(jax.random.uniform(jax.random.PRNGKey(i), (48, 48, 3)) * 255, np.uint8)
                 for i in range(2)])
  lr = np.round(np.clip(np.asarray(sr3.bicubic_down(hr / np.float32(255.0), 2)), 0, 1) * 255).astype(np.uint8)
  s = sr3_compare.scores(hr / np.float32(255.0), hr, lr, 2)
  assert np.allclose(s["ssim"], 1.0) and np.all(np.array(s["consistency"]) < 2e-5)
  if lpips_net.available():
    assert np.allclose(s["lpips"], 0.0, atol=1e-6)


def test_a_regression_run_of_another_scale_is_one_line(runs, tmp_path):
  cmd = [sys.executable, "-m", "restorejax.sr3_compare", f"--sr3={runs / 'sr3'}", f"--regression={runs / 'rrdb_x4'}",
         f"--out={tmp_path / 'o'}", "--images=2", "--sample_steps=2"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])})
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("restorejax.sr3_compare: error: ") and "x4 network" in last and "is x2" in last


def test_its_flags_coexist_with_the_sampling_commands():
  for module in (cascade, sr3_compare, restore, sr3_compare, cascade):
    module.define_flags()
  sr3_compare.define_flags()
  assert flags.FLAGS["images"].default == 16 and "regression" in flags.FLAGS and "stages" not in flags.FLAGS
