"""The benchmark commands run and print the figures BENCHMARKS.md records (their values are not tested:
benchmarks measure, tests check behaviour)."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

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


def test_step_bench_passes_its_compiler_options_to_xla():
  """StepBench(config, compiler_options=...) is how an XLA option is A/B'd on the whole step in one
  process: an option XLA does not know must fail the compile, so the options do reach it."""
  from configs import default
  from restorejax import bench
  with pytest.raises(Exception, match="xla_no_such_option"):
    bench.StepBench(default.get_config("tiny"), compiler_options={"xla_no_such_option": True})


def test_step_against_pytorch_alternates_rounds_and_prints_the_speed_ratio(tmp_path):
  pytest.importorskip("torch")
  out = tmp_path / "against.json"
  tiny = f"{ROOT}/configs/default.py:tiny"
  proc = subprocess.run([sys.executable, "-m", "restorejax.bench", "step", "--against=pytorch", f"--config={tiny}",
                         "--shapes=config", "--steps=1", "--rounds=2", "--warmup=0", f"--json={out}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  figures = json.loads(out.read_text())["config"]
  assert len(figures["rounds"]) == 2 and figures["model"]["width"] == 8 and figures["batch_size"] == 8
  ratio = figures["pytorch"]["step_ms"] / figures["restorejax"]["step_ms"]
  assert math.isclose(figures["speed_ratio_restorejax_over_pytorch"], ratio)
  assert "config round 2: restorejax" in proc.stderr
  bad = subprocess.run([sys.executable, "-m", "restorejax.bench", "step", "--against=pytorch", f"--config={tiny}",
                        "--shapes=huge"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert bad.returncode == 2 and "restorejax.bench: error: --shapes: unknown shape 'huge'" in bad.stderr


def test_pytorch_nafnet_port_computes_what_ours_computes():
  """The PyTorch port (`bench step --against=pytorch`, bench_gpu) is the same function: its state dict,
  converted as official checkpoints are, gives our NAFNet the same outputs."""
  torch = pytest.importorskip("torch")
  from restorejax import convert, models  # pylint: disable=g-import-not-at-top
  from restorejax.bench_torch import nafnet as torch_nafnet  # pylint: disable=g-import-not-at-top
  cfg = models.default_config("nafnet")
  cfg.update(width=8, enc_blocks=(1, 2), middle_blocks=1, dec_blocks=(1, 1))
  torch.manual_seed(0)
  net = torch_nafnet.from_config(cfg)
  with torch.no_grad():  # beta, gamma and the norms away from their identity init
    for name, p in net.named_parameters():
      if name.endswith(("beta", "gamma")) or "norm" in name:
        p.uniform_(-0.5, 1.0)
  params = convert.convert("nafnet", {k: v.numpy() for k, v in net.state_dict().items()}, cfg)
  x = np.random.default_rng(0).uniform(size=(2, 20, 24, 3)).astype(np.float32)  # padded to 4s inside
  ours = np.asarray(models.build(cfg).apply({"params": params}, x))
  theirs = net(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
  assert np.abs(theirs - x).max() > 0.1  # not the identity
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
  # The official hand-written LayerNorm backward equals autograd's.
  ln = torch_nafnet.LayerNorm2d(5)
  with torch.no_grad():
    ln.weight.uniform_(0.5, 1.5)
  h = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
  w, b = ln.weight.double().detach().requires_grad_(), ln.bias.double().detach().requires_grad_()
  assert torch.autograd.gradcheck(lambda h, w, b: torch_nafnet.LayerNormFunction.apply(h, w, b, 1e-6), (h, w, b))


def test_gpu_bench_dry_runs_the_nafnet_and_diffloss_cases_on_the_cpu(tmp_path):
  # Two of the four cases keep it cheap: the GoPro and Restormer cases differ from these in fields only.
  out = tmp_path / "gpu.json"
  proc = subprocess.run([sys.executable, "-m", "restorejax.bench_gpu", "--dry", f"--out={out}", "--steps=1",
                         "--warmup=0", "--cases=nafnet-default,diffloss"],
                        cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  figures = json.loads(out.read_text())
  assert figures["dry"] and figures["backend"] == "cpu"
  assert set(figures["cases"]) == {"nafnet-default", "diffloss"}
  for name, case in figures["cases"].items():
    assert case["restorejax"]["step_ms"] > 0 and case["gflops_per_step"] > 0, name
  # DiffLoss adds two prior forwards and a backward to the same NAFNet step.
  assert figures["cases"]["diffloss"]["gflops_per_step"] > 2 * figures["cases"]["nafnet-default"]["gflops_per_step"]
  if "torch" in figures:
    assert figures["cases"]["nafnet-default"]["pytorch"]["step_ms"] > 0
  assert "| diffloss | restorejax |" in proc.stdout and "no FLOP count" not in proc.stderr


def test_gpu_bench_without_a_gpu_says_so():
  from restorejax import bench_gpu  # pylint: disable=g-import-not-at-top
  assert bench_gpu.main(["--out=/nonexistent/x.json"]) == 2


def test_fusion_bench_counts_each_mode_and_registration_lowers_the_priors_error(tmp_path):
  """`bench fusion` on the tiny config (32x32 held-out crops): 'none' is the unit, 'match' costs more than
  'concat', the parameter counts are those of the initialised networks, and registering the prior brings it
  closer to the target at severity 0.4 while an aligned prior (severity 0) stays where it is."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from restorejax import models  # pylint: disable=g-import-not-at-top
  from restorejax.models import fusion  # pylint: disable=g-import-not-at-top
  out = tmp_path / "fusion.json"
  tiny = f"{ROOT}/configs/default.py:tiny"
  proc = subprocess.run([sys.executable, "-m", "restorejax.bench", "fusion", f"--config={tiny}", "--crop=32",
                         f"--json={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  figures = json.loads(out.read_text())
  assert json.loads(proc.stdout[proc.stdout.index("{"):]) == figures
  assert "| none | " in proc.stdout and "| 0.4 | " in proc.stdout  # the readable tables
  modes = figures["modes"]
  assert set(modes) == set(fusion.FUSIONS)
  assert modes["none"]["ratio_vs_none"] == 1.0 and modes["none"]["ratio_forward_vs_none"] == 1.0
  assert modes["match"]["ratio_vs_none"] > modes["concat"]["ratio_vs_none"] > 1.0
  for mode, f in modes.items():
    assert f["gflops_forward_backward"] > 2 * f["gflops_forward"] > 0, mode
  config = default.get_config("tiny")
  x = np.zeros((8, 64, 64, 3), np.float32)
  for mode in fusion.FUSIONS:
    cfg = config.model.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.fusion = mode
    params = models.build(cfg).init(jax.random.key(0), x, x)["params"]
    assert modes[mode]["params"] == sum(leaf.size for leaf in jax.tree.leaves(params)), mode
  reg = figures["registration"]
  assert reg["images"] == 8 and reg["crop"] == 32 and "z(x)_c" in reg["definition"]
  errors = reg["severities"]
  assert list(errors) == ["0", "0.2", "0.4", "0.6"]
  assert errors["0"]["prior"] < 1e-6 and errors["0"]["registered"] < 0.02
  assert errors["0.4"]["registered"] < 0.75 * errors["0.4"]["prior"]
  assert errors["0.2"]["prior"] < errors["0.4"]["prior"] < errors["0.6"]["prior"]
  assert len({round(e["input"], 9) for e in errors.values()}) == 1 and errors["0"]["input"] > 0.05


def test_fusion_bench_normalised_error_ignores_tone_and_counts_misplacement():
  from restorejax.evaluation import registration  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  t = rng.uniform(size=(2, 16, 16, 3))
  np.testing.assert_allclose(registration.normalised_error(0.5 * t + 0.2, t), 0.0, atol=1e-12)
  shifted = np.roll(t, 3, axis=2)
  rho = np.mean([np.corrcoef(shifted[0, ..., c].ravel(), t[0, ..., c].ravel())[0, 1] for c in range(3)])
  assert registration.normalised_error(shifted, t)[0] == pytest.approx(2 * (1 - rho))
  flat = np.full_like(t, 0.3)  # a flat channel counts as uncorrelated: z = 0, error = mean(z(t)^2) = 1
  np.testing.assert_allclose(registration.normalised_error(flat, t), 1.0)
