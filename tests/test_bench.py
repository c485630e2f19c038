"""The benchmark commands run and print the figures BENCHMARKS.md records (their values are not tested:
benchmarks measure, tests check behaviour)."""

import json
import os
import subprocess
import sys

from conftest import ROOT

from restorejax.data import bench as data_bench


def _tiny_config():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("default_config", os.path.join(ROOT, "configs", "default.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny")


def test_data_bench_measures_both_epochs_and_the_device_transforms():
  config = _tiny_config()   # 64 images, batch 8: the second epoch starts after 8 batches
  figures = data_bench.run(config, steps=2, warmup=1)
  for key in ("host_triples_per_s", "host_triples_per_s_second_epoch", "degrade_triples_per_s",
              "prior_triples_per_s"):
    assert figures[key] > 0, key
  assert figures["batch_keys"] == ["index", "target"] and figures["batch_size"] == 8


def test_step_bench_prints_figures_and_ratios_as_json(tmp_path):
  out = tmp_path / "step.json"
  tiny = f"{ROOT}/configs/default.py:tiny"
  proc = subprocess.run([sys.executable, "-m", "restorejax.bench", "step", f"--config={tiny}",
                         f"--baseline={tiny}", "--steps=2", "--rounds=1",
                         "--warmup=1", f"--json={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  figures = json.loads(out.read_text())
  for side in ("config", "baseline"):
    assert figures[side]["step_ms"] > 0 and figures[side]["images_per_s"] > 0
    assert figures[side]["gflops_per_step_per_device"] > 0
  # The same config on both sides (one compile, the second from the cache): the same FLOPs.
  ratios = figures["ratio_config_over_baseline"]
  assert abs(ratios["gflops_per_step_per_device"] - 1) < 1e-6 and ratios["step_ms"] > 0
  assert json.loads(proc.stdout[proc.stdout.index("{"):])["machine"]["devices"] == 1
