"""The GIR suite: 100 stable tasks, a deterministic build that is `degrade.compose` with the documented
keys, harder ranges that are harder, and the report of a run against two references."""

import json
import os
import re
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from restorejax import checkpoint, gir_report, models
from restorejax.data import degrade, images
from restorejax.evaluation import gir_suite


def _psnr(a, b):
  return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def _read(path):
  return images.read(str(path)).pixels


def test_the_suite_has_100_stable_tasks():
  tasks = gir_suite.suite(0)
  names = [t.name for t in tasks]
  assert len(set(names)) == 100 and gir_suite.suite(0) == tasks
  sizes = [len(t.ops) for t in tasks]
  assert (sizes.count(1), sizes.count(2), sizes.count(3)) == (15, 56, 29)
  for t in tasks:
    assert re.fullmatch(r"[a-z]+(\+[a-z]+){0,2}@(train|harder)", t.name)
    task_id = sum(1 << degrade.OPS.index(o) for o in t.ops)
    assert t.name == f"{degrade.task_name(task_id)}@{t.ranges}"  # ops named in application order
  assert "downup@harder" not in names and "downup@train" in names  # its harder range is its training one
  other = gir_suite.suite(1)
  assert [t.name for t in other[:71]] == names[:71] and [t.name for t in other[71:]] != names[71:]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("gir")
  real = root / "real"
  rng = np.random.default_rng(0)
  for i in range(3):
    t = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    images.write_png(str(real / "gt" / f"r{i}.png"), t)
    images.write_png(str(real / "deg" / f"r{i}.png"),
                     np.clip(t.astype(int) + rng.integers(-20, 20, t.shape), 0, 255).astype(np.uint8))
  sets = [gir_suite.RealSet("streets", str(real / "deg"), str(real / "gt"))]
  suite_dir = str(root / "suite")
  manifest = gir_suite.build("default", suite_dir, seed=0, real=sets, default_images=8, default_size=32)
  return root, suite_dir, manifest, sets


def test_build_is_compose_with_the_documented_keys_and_deterministic(built, tmp_path):
  root, suite_dir, manifest, sets = built
  assert len(manifest["tasks"]) == 100 and len(manifest["gt"]["images"]) == 8
  tasks = {t.name: t for t in gir_suite.suite(0)}
  task = tasks["blur+noise@harder"]
  gt = _read(os.path.join(suite_dir, "gt", "dl003.png"))
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), zlib.crc32(task.name.encode())), 3)
  applied = jnp.asarray([o in task.ops for o in degrade.OPS])
  expected = degrade.compose(key, jnp.asarray(gt, jnp.float32) / 255.0, applied, ops=task.ops,
                             ranges="harder")
  expected = np.round(np.asarray(expected) * 255.0)
  got = _read(os.path.join(suite_dir, "tasks", task.name, "dl003.png"))
  assert np.abs(got - expected).max() <= 1 and np.mean(got == expected) > 0.99
  # Rebuilding a few tasks elsewhere gives the same bytes; the same suite dir is reused as it is.
  subset = [tasks["jpeg@train"], tasks["haze+rain+lowlight@harder"]]
  gir_suite.build("default", str(tmp_path / "again"), seed=0, tasks=subset, default_images=8, default_size=32)
  for t in subset:
    for stem in manifest["gt"]["images"]:
      a = open(os.path.join(suite_dir, "tasks", t.name, f"{stem}.png"), "rb").read()
      assert a == open(tmp_path / "again" / "tasks" / t.name / f"{stem}.png", "rb").read()
  again = gir_suite.build("default", suite_dir, seed=0, real=sets, default_images=8, default_size=32)
  assert again == manifest
  with pytest.raises(ValueError, match="holds another GIR suite"):
    gir_suite.build("default", suite_dir, seed=1, real=sets, default_images=8, default_size=32)


def test_harder_ranges_are_harder(built):
  _, suite_dir, manifest, _ = built
  gts = {s: _read(os.path.join(suite_dir, "gt", f"{s}.png")) for s in manifest["gt"]["images"]}
  def mse(task):
    return np.mean([np.mean((_read(os.path.join(suite_dir, "tasks", task, f"{s}.png")) - g.astype(float))
                            ** 2) for s, g in gts.items()])
  for op in degrade.OPS:
    if op != "downup":
      assert mse(f"{op}@harder") > mse(f"{op}@train"), op


def _run_dir(path, residual_scale):
  config = tiny_config()
  model = models.build(config.model)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: np.full(v.shape, residual_scale, np.float32)
      if jax.tree_util.keystr(p).endswith(("['beta']", "['gamma']")) else v, params)
  checkpoint.export_params(str(path), config, params)
  return model, params


def test_report_of_a_run_against_two_references(built, tmp_path):
  root, suite_dir, _, sets = built
  model, params = _run_dir(tmp_path / "model", 0.05)
  _run_dir(tmp_path / "weak", 0.2)
  out = str(tmp_path / "report")
  # References as scores files (what a report keeps): the weak run scored here, a strong one 0.5 dB /
  # 0.02 SSIM above it. The model run is scored inside, like a reference run directory would be.
  weak = {"model": "weak", "scores": gir_report.score_run(str(tmp_path / "weak"), suite_dir)}
  strong = {"model": "strong", "scores": {t: {"psnr": s["psnr"] + 0.5, "ssim": s["ssim"] + 0.02}
                                          for t, s in weak["scores"].items()}}
  (tmp_path / "weak.json").write_text(json.dumps(weak))
  (tmp_path / "strong.json").write_text(json.dumps(strong))
  result = gir_report.gir_report(str(tmp_path / "model"), out, weak=str(tmp_path / "weak.json"),
                                 strong=str(tmp_path / "strong.json"), suite_dir=suite_dir,
                                 real=tuple(f"{s.name}={s.degraded},{s.target}" for s in sets),
                                 default_images=8, default_size=32)
  saved = json.load(open(os.path.join(out, "scores", "model_model.json")))
  assert saved["metric_convention"] == "BasicSR" and len(saved["scores"]) == 101
  ours = saved["scores"]
  assert ours["real:streets"]["input_psnr"] > 0
  for metric in ("psnr", "ssim"):
    r = result["metrics"][metric]
    assert r["n"] == 101 and r["dropped"] == 0
    assert r["ar"] == np.mean([ours[t][metric] >= weak["scores"][t][metric] for t in ours])
    assert r["er"] == np.mean([ours[t][metric] >= strong["scores"][t][metric] for t in ours])
  # A task's score is the mean over its images of the model's output restored alone.
  stems = sorted(os.listdir(os.path.join(suite_dir, "gt")))
  alone = []
  for stem in stems:
    deg = _read(os.path.join(suite_dir, "tasks", "rain@train", stem))
    out_img = np.asarray(model.apply({"params": params}, deg[None].astype(np.float32) / 255.0))[0]
    alone.append(_psnr(np.round(np.clip(out_img, 0, 1) * 255), _read(os.path.join(suite_dir, "gt", stem))))
  assert ours["rain@train"]["psnr"] == pytest.approx(np.mean(alone), abs=1e-3)
  md = open(os.path.join(out, "gir_report.md")).read()
  assert "| real:streets |" in md and "| haze+rain@harder |" in md
  assert os.path.getsize(os.path.join(out, "gir_report.png")) > 1000

  (tmp_path / "lines.json").write_text(json.dumps({"lines": {"blur@train": {
      "psnr": {"acceptance": 1.0, "excellence": 2.0}}}}))
  with pytest.raises(ValueError, match="the lines do not match the suite's tasks"):
    gir_report.gir_report(str(tmp_path / "model"), out, lines=str(tmp_path / "lines.json"), suite_dir=suite_dir,
                          real=tuple(f"{s.name}={s.degraded},{s.target}" for s in sets),
                          default_images=8, default_size=32)


def test_cli_mistakes_are_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "restorejax.gir_report", f"--workdir={tmp_path}",
                         f"--weak={tmp_path}", f"--strong={tmp_path}", "--gt=/nonexistent/gt",
                         f"--out={tmp_path / 'r'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == \
      "restorejax: error: --gt=/nonexistent/gt: no such directory (or 'default')"


def test_perceptual_scores_are_lower_is_better_metrics_of_the_report(built, tmp_path):
  """--perceptual: every task gets LPIPS (NIQE only where its images are large enough: absent, not NaN,
  elsewhere), and the report scores LPIPS against its lines with lower as better."""
  _, suite_dir, _, sets = built
  _run_dir(tmp_path / "model", 0.05)
  # Lines every LPIPS in [0, 1) passes at acceptance (1.0) and none at excellence (0.0).
  lines = {t: {"lpips": {"acceptance": 1.0, "excellence": 0.0}} for t in gir_suite.examples(suite_dir)}
  (tmp_path / "lines.json").write_text(json.dumps({"lines": lines}))
  out = str(tmp_path / "report")
  result = gir_report.gir_report(str(tmp_path / "model"), out, lines=str(tmp_path / "lines.json"),
                                 suite_dir=suite_dir, default_images=8, default_size=32, perceptual=True,
                                 real=tuple(f"{s.name}={s.degraded},{s.target}" for s in sets))
  scores = json.load(open(os.path.join(out, "scores", "model_model.json")))["scores"]
  assert len(scores) == len(lines) == 101
  assert all(0.0 <= s["lpips"] < 1.0 and np.isfinite(s.get("niqe", 0.0)) for s in scores.values())
  r = result["metrics"]["lpips"]
  assert r["n"] == 101 and r["ar"] == 1.0 and r["er"] == 0.0
  assert r["rpr"] == pytest.approx(np.mean([1 / (1 + np.exp(-(1.0 - s["lpips"]))) for s in scores.values()]))
  assert "| lpips (lower is better) | 101 |" in open(os.path.join(out, "gir_report.md")).read()
