"""The benchmark commands run and print the figures BENCHMARKS.md records (their values are not tested:
benchmarks measure, tests check behaviour)."""

import json
import math
import subprocess
import sys

from conftest import ROOT


def test_data_bench_measures_both_epochs_the_device_transforms_and_the_step_alongside(tmp_path):
  out = tmp_path / "data.json"
  # The tiny config: 64 images, batch 8, so the second epoch starts after 8 batches.
  tiny = f"{ROOT}/configs/default.py:tiny"
  command = ["-m", "restorejax.bench", "data", f"--config={tiny}", "--steps=2", "--warmup=1", f"--json={out}"]
  proc = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  figures = json.loads(out.read_text())
  for key in ("host_triples_per_s", "host_triples_per_s_second_epoch", "degrade_triples_per_s",
              "prior_triples_per_s", "step_images_per_s", "step_ms", "host_over_step_first_epoch",
              "host_over_step_second_epoch"):
    assert figures[key] > 0, key
  ratio = figures["host_triples_per_s"] / figures["step_images_per_s"]
  assert math.isclose(figures["host_over_step_first_epoch"], ratio)
  assert figures["batch_keys"] == ["index", "target"] and figures["batch_size"] == 8
  assert json.loads(proc.stdout[proc.stdout.index("{"):]) == figures


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
