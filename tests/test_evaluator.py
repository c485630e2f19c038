"""Full-image evaluation: region metrics, scores independent of padding and batch-mates, the trainer's
held-out set, paired folders, and the CLI on 2 processes x 4 devices against 1 device."""

import functools
import json
import os
import socket
import subprocess
import sys

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from restorejax import checkpoint, models, sharding
from restorejax.data import batches, degrade, images, pipeline
from restorejax.evaluation import datasets, scoring, metrics
from restorejax.tasks import restoration

# Different sizes; 30x31 shares the 32x32 canvas (stride 4) with three 32x32 images.
SIZES = [(32, 32), (27, 40), (30, 31), (20, 20), (32, 32), (32, 32)]


def _perturbed(params):
  """NAFNet initialises its residual scales to zero; random ones make every block (and the global
  channel attention, which sees padding) matter."""
  def f(path, v):
    if jax.tree_util.keystr(path).endswith(("['beta']", "['gamma']")):
      return np.random.default_rng(len(jax.tree_util.keystr(path))).normal(0, 0.5, v.shape).astype(np.float32)
    return v
  return jax.tree_util.tree_map_with_path(f, params)


@pytest.fixture(scope="module")
def net():
  config = tiny_config()
  model = models.build(config.model)
  params = _perturbed(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"])
  alone = jax.jit(lambda p, x: model.apply({"params": p}, x))
  return config, model, params, alone


def _psnr64(a, b):
  return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def _ssim64(a, b):
  """BasicSR's SSIM from its definition, float64: 11x11 Gaussian (1.5), valid windows, channel mean."""
  g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
  win = np.outer(g, g) / g.sum() ** 2
  filt = lambda v: np.einsum("hwij,ij->hw", np.lib.stride_tricks.sliding_window_view(v, (11, 11)), win)
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  values = []
  for c in range(3):
    x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx ** 2, filt(y * y) - my ** 2, filt(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    values.append(ssim_map.mean())
  return float(np.mean(values))


def _examples(seed=0, sizes=SIZES):
  rng = np.random.default_rng(seed)
  out = []
  for i, (h, w) in enumerate(sizes):
    t = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    d = np.clip(t.astype(int) + rng.integers(-30, 30, t.shape), 0, 255).astype(np.uint8)
    out.append({"name": f"im{i}", "degraded": d, "target": t})
  return out


def test_region_metrics_equal_metrics_of_the_cropped_images():
  rng = np.random.default_rng(1)
  a = rng.integers(0, 256, (3, 40, 36, 3), dtype=np.uint8)
  b = np.clip(a.astype(int) + rng.integers(-25, 25, a.shape), 0, 255).astype(np.uint8)
  hw = np.array([[40, 36], [31, 22], [17, 29]])
  b[1, 31:] = 0  # what lies outside a region must not count
  for cb, y in ((0, False), (3, True)):
    p = metrics.region_psnr(a, b, hw, crop_border=cb, test_y_channel=y)
    s = metrics.region_ssim(a, b, hw, crop_border=cb, test_y_channel=y)
    for i, (h, w) in enumerate(hw):
      ref = (a[i, :h, :w], b[i, :h, :w])
      conventions = {"crop_border": cb, "test_y_channel": y}
      assert float(p[i]) == pytest.approx(float(metrics.psnr(*ref, **conventions)), abs=1e-5)
      assert float(s[i]) == pytest.approx(float(metrics.ssim(*ref, **conventions)), abs=1e-6)


def test_each_image_scores_as_if_restored_alone(net, tmp_path):
  config, model, params, alone = net
  examples = _examples()
  mesh = sharding.mesh(config)
  apply = lambda p, x, prior: model.apply({"params": p}, x, prior)
  ev = scoring.Evaluator(apply, mesh, sharding.batch_sharding(config, mesh), examples, batch_size=4,
                           multiple=4, save_dir=str(tmp_path / "out"), grid_count=3)
  # One canvas per size rounded up to the stride: 30x31 joins the 32x32 images.
  assert ev.canvases == [(20, 20), (28, 40), (32, 32)]
  assert [len(b.rows) for b in ev.batches] == [4] * 3 and sum((b.rows >= 0).sum() for b in ev.batches) == 6
  result = ev(params)
  assert [r["name"] for r in result.per_image] == [e["name"] for e in examples]
  for e, row in zip(examples, result.per_image):
    restored = np.asarray(alone(params, e["degraded"][None].astype(np.float32) / 255.0))[0]
    levels = np.round(np.clip(restored, 0, 1) * 255).astype(np.uint8)
    saved = images.read(str(tmp_path / "out" / f"{e['name']}.png")).pixels
    # The output of restoring the image alone (a batch of 4 may round a rare float differently).
    diff = np.abs(saved.astype(int) - levels)
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.99
    assert (row["height"], row["width"]) == e["target"].shape[:2]
    assert row["psnr"] == pytest.approx(_psnr64(saved, e["target"]), abs=1e-4)  # scores of what was saved
    assert row["ssim"] == pytest.approx(_ssim64(saved, e["target"]), abs=1e-5)
    assert row["psnr"] == pytest.approx(_psnr64(levels, e["target"]), abs=0.01)
    assert row["input_psnr"] == pytest.approx(_psnr64(e["degraded"], e["target"]), abs=1e-4)
    assert row["input_ssim"] == pytest.approx(_ssim64(e["degraded"], e["target"]), abs=1e-5)
  for k in scoring.METRICS:
    assert result.means[k] == pytest.approx(np.mean([r[k] for r in result.per_image]))
  # Grid: 3 rows of degraded | restored | target centre-cropped to the smallest of them (27 x 31).
  assert result.grid.shape == (3, 27, 93, 3) and result.grid.dtype == np.uint8
  assert np.array_equal(result.grid[0, :, 62:], examples[0]["target"][2:29, :31])
  again = ev(params)  # cached batches and input scores: the same numbers
  assert again.per_image == result.per_image


def test_one_canvas_for_all_compiles_once(net):
  config, model, params, _ = net
  mesh = sharding.mesh(config)
  calls = []

  def apply(p, x, prior):
    calls.append(x.shape)  # runs once per trace
    return model.apply({"params": p}, x, prior)

  ev = scoring.Evaluator(apply, mesh, sharding.batch_sharding(config, mesh), _examples(), batch_size=4,
                           multiple=4, canvas="max", cache=False)
  result = ev(params)
  assert ev.canvases == [(32, 40)] and calls == [(4, 32, 40, 3)]
  assert all(np.isfinite(r["psnr"]) for r in result.per_image)


def test_examples_are_checked():
  config = tiny_config()
  mesh = sharding.mesh(config)
  bs = sharding.batch_sharding(config, mesh)
  ok = _examples(sizes=[(16, 16)])[0]
  make = lambda ex, **kw: scoring.Evaluator(lambda p, x, q: x, mesh, bs, ex, batch_size=1, multiple=1, **kw)
  with pytest.raises(ValueError, match="two examples are named 'im0'"):
    make([ok, ok])
  with pytest.raises(ValueError, match="'im0': prior is"):
    make([{**ok, "prior": np.zeros((8, 8, 3), np.uint8)}])
  with pytest.raises(ValueError, match="crop_border=3 needs at least 17x17"):
    make([ok], crop_border=3)
  with pytest.raises(ValueError, match="some examples have a prior and 'b' has none"):
    make([{**ok, "prior": ok["target"]}, {**ok, "name": "b"}])


def test_default_set_is_degraded_exactly_as_the_trainer_does(net):
  config = tiny_config(**{"eval.batch_size": 3})  # 8 images: the last batch is padded
  examples = datasets.procedural(config)
  _, model, params, _ = net
  mesh = sharding.mesh(config)
  batch_sh = sharding.batch_sharding(config, mesh)
  # The trainer's own preparation of the held-out set (pipeline.eval_examples + batches.prepare_batch).
  raw = pipeline.eval_examples(config)
  prep = jax.jit(functools.partial(batches.prepare_batch, degrade_fn=degrade.from_config(config.data.degrade),
                                   key=batches.data_key(config, "eval")))
  trainer = prep({"target": raw["target"], "index": raw["index"]})
  degraded, target = np.asarray(trainer["degraded"]), np.asarray(trainer["target"])
  assert len(examples) == 8
  # The trainer's inputs are 8-bit levels (every recipe quantizes last); XLA may divide by 255 as a
  # multiplication, so its floats can sit 1 ulp from level / 255: compare the levels.
  np.testing.assert_array_equal(np.stack([e["degraded"] for e in examples]), np.round(degraded * 255))
  np.testing.assert_array_equal(np.stack([e["target"] for e in examples]), np.round(target * 255))
  # In the trainer's interface, the same numbers as a dm-pix evaluation of the same images (float32
  # PSNR / SSIM with the same window and constants), computed another way.
  ours, grids = restoration.held_out_evaluator(config, model, mesh, batch_sh)(params)
  restored = degrade.quantize(model.apply({"params": params}, jnp.asarray(degraded)))
  theirs = {
      "eval/psnr": float(jnp.mean(dm_pix.psnr(restored, target))),
      "eval/ssim": float(jnp.mean(dm_pix.ssim(restored, target))),
      "eval/input_psnr": float(jnp.mean(dm_pix.psnr(jnp.asarray(degraded), target))),
      "eval/input_ssim": float(jnp.mean(dm_pix.ssim(jnp.asarray(degraded), target))),
  }
  assert set(ours) == set(theirs) and grids["eval/degraded_restored_target"].shape == (4, 32, 96, 3)
  for k in ours:
    assert ours[k] == pytest.approx(theirs[k], abs=1e-4), k  # measured: <= 6e-6


def test_paired_folders(tmp_path):
  rng = np.random.default_rng(0)
  for d in ("deg", "gt", "prior"):
    (tmp_path / d).mkdir()
  grey16 = rng.integers(0, 65536, (24, 20, 1), dtype=np.uint16)
  images.write_png(str(tmp_path / "deg" / "a.png"), grey16)                       # 16-bit grey
  images.write_png(str(tmp_path / "gt" / "a.png"), rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))
  images.write_png(str(tmp_path / "prior" / "a.png"), rng.integers(0, 256, (50, 41, 3), dtype=np.uint8))
  (tmp_path / "deg" / "notes.txt").write_text("not an image")                    # not an image extension
  examples = datasets.folder(str(tmp_path / "deg"), str(tmp_path / "gt"), str(tmp_path / "prior"))
  assert [(e.name, e.size, e.has_prior) for e in examples] == [("a", (24, 20), True)]
  loaded = examples[0].load()
  assert all(v.shape == (24, 20, 3) and v.dtype == np.uint8 for v in loaded.values())
  assert np.array_equal(loaded["degraded"][..., 0], loaded["degraded"][..., 2])   # grey -> RGB

  images.write_png(str(tmp_path / "gt" / "b.png"), np.zeros((24, 20, 3), np.uint8))
  with pytest.raises(ValueError, match=r"target folder .*gt: 1 image\(s\) without a partner in the "
                                       r"degraded folder .*: b.png"):
    datasets.folder(str(tmp_path / "deg"), str(tmp_path / "gt"))
  with pytest.raises(ValueError, match="degraded folder .*nowhere: no such directory"):
    datasets.folder(str(tmp_path / "nowhere"), str(tmp_path / "gt"))
  with pytest.raises(ValueError, match="unknown dataset kind 'records'"):
    datasets.parse("records:/x")
  assert datasets.name_of(f"folder:{tmp_path}/deg,{tmp_path}/gt") == os.path.basename(str(tmp_path))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _evaluate_cli(workdir, *args, env=None, extra=()):
  cmd = [sys.executable, "-m", "restorejax.evaluate", f"--workdir={workdir}", *args, *extra]
  return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def test_cli_two_processes_of_four_devices_match_one_device(net, tmp_path):
  """6 images of 4 sizes on one canvas (one compile), global batch 8 over 8 devices in 2 processes,
  against 1 device in-process."""
  from restorejax import evaluate  # pylint: disable=g-import-not-at-top
  config, _, params, _ = net
  run = str(tmp_path / "run")
  checkpoint.export_params(run, config, params)
  for e in _examples():
    images.write_png(str(tmp_path / "data" / "deg" / f"{e['name']}.png"), e["degraded"])
    images.write_png(str(tmp_path / "data" / "gt" / f"{e['name']}.png"), e["target"])
  spec = f"folder:{tmp_path}/data/deg,{tmp_path}/data/gt"
  port = _free_port()
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  procs = [_evaluate_cli(run, f"--dataset={spec}", "--save_outputs", "--batch_size=8", "--canvas=max",
                         "--name=multi",
                         env=env, extra=(f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                         f"--process_id={i}")) for i in range(2)]
  # Meanwhile, here: 1 device.
  one = evaluate.evaluate_run(run, spec, save_outputs=True, batch_size=8, canvas="max")
  logs = [p.communicate(timeout=600)[1] for p in procs]
  assert all(p.returncode == 0 for p in procs), logs[0][-3000:] + logs[1][-3000:]

  multi = json.load(open(os.path.join(run, "eval", "multi.json")))
  assert one["devices"] == 1 and multi["devices"] == 8 and multi["processes"] == 2
  assert multi["metric_convention"] == "BasicSR" and multi["crop_border"] == 0 and not multi["test_y_channel"]
  for a, b in zip(one["per_image"], multi["per_image"]):
    assert a["name"] == b["name"] and a["psnr"] == pytest.approx(b["psnr"], abs=1e-5)
    assert a["ssim"] == pytest.approx(b["ssim"], abs=1e-5)
    assert a["input_ssim"] == pytest.approx(b["input_ssim"], abs=1e-5)
    same = open(os.path.join(run, "eval", "data", a["name"] + ".png"), "rb").read()
    assert same == open(os.path.join(run, "eval", "multi", a["name"] + ".png"), "rb").read()
  # Each process read only the images of its own rows: rows 0-3 of the batch are on process 0's
  # devices, rows 4-5 (and 2 dummies) on process 1's.
  loaded = [int(log.split("loaded ")[1].split()[0]) for log in logs]
  assert loaded == [4, 2]
  md = open(os.path.join(run, "eval", "data.md")).read()
  assert "crop_border=0, test_y_channel=False" in md and "| im1 | 27x40 |" in md


@pytest.mark.parametrize("args, message", [
    (("--dataset=records:/x",), "unknown dataset kind 'records'"),
    (("--dataset=folder:/nonexistent/a,/nonexistent/b",),
     "degraded folder /nonexistent/a: no such directory"),
])
def test_cli_user_mistakes_are_one_line(net, tmp_path, args, message):
  config, _, params, _ = net
  run = str(tmp_path / "run")
  checkpoint.export_params(run, config, params)
  proc = _evaluate_cli(run, *args)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2 and "Traceback" not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith("restorejax: error:") and message in last, last


def test_missing_run_directory_is_named(tmp_path):
  from restorejax import evaluate  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="no config.json"):
    evaluate.evaluate_run(str(tmp_path))


def test_records_run_scores_whole_named_images_and_reports_of_namesake_folders_coexist(net, tmp_path):
  from restorejax import evaluate  # pylint: disable=g-import-not-at-top
  from restorejax.data import build  # pylint: disable=g-import-not-at-top
  config, _, params, _ = net
  rng = np.random.default_rng(7)
  for name, (h, w) in {"alpha": (40, 52), "beta": (38, 50)}.items():  # one canvas (stride 4), two sizes
    target = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for top in ("a", "b"):
      images.write_png(str(tmp_path / top / "test" / "deg" / f"{name}.png"), 255 - target)
      images.write_png(str(tmp_path / top / "test" / "gt" / f"{name}.png"), target)
  build.build({"degraded": str(tmp_path / "a/test/deg"), "target": str(tmp_path / "a/test/gt")},
              str(tmp_path / "ds"))
  run = str(tmp_path / "run")
  checkpoint.export_params(run, tiny_config(**{"data.source": "records", "data.eval_crop": 16,
                                               "data.records.path": str(tmp_path / "ds"),
                                               "data.records.eval_path": str(tmp_path / "ds")}), params)
  default = evaluate.evaluate_run(run)
  assert [(r["name"], r["height"], r["width"]) for r in default["per_image"]] == [("alpha", 40, 52),
                                                                                  ("beta", 38, 50)]
  # Two test sets whose folders share the parent name 'test': two reports, the same scores.
  specs = [f"folder:{tmp_path}/{top}/test/deg,{tmp_path}/{top}/test/gt" for top in ("a", "b")]
  a, b = (evaluate.evaluate_run(run, spec) for spec in specs)
  assert a["name"] == "test" and b["name"].startswith("test-") and len(b["name"]) == len("test-") + 8
  assert evaluate.evaluate_run(run, specs[0])["name"] == "test"  # the same folders again: the same report
  assert sorted(f for f in os.listdir(os.path.join(run, "eval")) if f.endswith(".json")) == \
      sorted(["default.json", "test.json", f"{b['name']}.json"])
  for r in (a, b):
    assert [x["psnr"] for x in r["per_image"]] == pytest.approx([x["psnr"] for x in default["per_image"]])
