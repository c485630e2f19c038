"""Super-resolution as a task: on-device MATLAB bicubic LR inputs, LR/HR folders and records (DIV2K
names, mod crop, size report), aligned crops, SR evaluation with the bicubic baseline, the shipped SR
configs training end to end, and tiled SR restoration of unseen sizes."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging

from conftest import ROOT
from restorejax import restore, sharding, train
from restorejax.data import build, degrade, images, pipeline, matlab_resize
from restorejax.evaluation import datasets, scoring, metrics

logging.set_verbosity(logging.WARNING)


def _load_config(path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  name, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location(os.path.basename(name)[:-3], os.path.join(ROOT, name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _matlab_imresize_1d(x, scale):
  """MATLAB `imresize` (bicubic, antialiased) along axis 0, written after BasicSR's
  `calculate_weights_indices` with explicit loops and float64: the reference for the matrices."""
  in_len = x.shape[0]
  out_len = int(math.ceil(in_len * scale))
  kernel_width = 4.0 / scale if scale < 1 else 4.0

  def cubic(t):
    t = abs(t)
    if t <= 1:
      return 1.5 * t ** 3 - 2.5 * t ** 2 + 1
    if t <= 2:
      return -0.5 * t ** 3 + 2.5 * t ** 2 - 4 * t + 2
    return 0.0

  out = np.zeros((out_len,) + x.shape[1:])
  for i in range(1, out_len + 1):
    u = i / scale + 0.5 * (1 - 1 / scale)
    left = math.floor(u - kernel_width / 2)
    taps = range(left, left + math.ceil(kernel_width) + 2)
    w = np.array([scale * cubic((u - j) * scale) if scale < 1 else cubic(u - j) for j in taps])
    w /= w.sum()
    for wj, j in zip(w, taps):
      k = j - 1
      while not 0 <= k < in_len:  # symmetric reflection
        k = -k - 1 if k < 0 else 2 * in_len - k - 1
      out[i - 1] += wj * x[k]
  return out


def test_bicubic_downsample_on_device_matches_matlab_reference():
  rng = np.random.default_rng(0)
  hr = rng.random((24, 36, 3))
  for scale in (2, 3, 4):
    want = _matlab_imresize_1d(_matlab_imresize_1d(hr, 1 / scale).swapaxes(0, 1), 1 / scale).swapaxes(0, 1)
    got = jax.jit(lambda x, s=scale: degrade.bicubic_downsample(x, s))(jnp.asarray(hr, jnp.float32))
    assert got.shape == (24 // scale, 36 // scale, 3)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-6)
  up = _matlab_imresize_1d(_matlab_imresize_1d(hr[:6, :5], 4).swapaxes(0, 1), 4).swapaxes(0, 1)
  lr8 = np.round(hr[:6, :5] * 255).astype(np.uint8)
  up8 = _matlab_imresize_1d(_matlab_imresize_1d(lr8 / 255.0, 4).swapaxes(0, 1), 4).swapaxes(0, 1)
  np.testing.assert_array_equal(scoring.bicubic_upsample(lr8, 4), np.round(np.clip(up8, 0, 1) * 255))
  assert up.shape == (24, 20, 3)
  with pytest.raises(ValueError, match="multiples"):
    degrade.bicubic_downsample(jnp.zeros((10, 12, 3)), 4)


def test_sr_recipe_orders_and_config_errors():
  hr = jnp.asarray(np.random.default_rng(1).random((32, 32, 3)), jnp.float32)
  key = jax.random.key(0)
  plain = degrade.from_config({"name": "sr"}, 4)
  lr = plain(key, hr)
  assert lr.shape == (8, 8, 3)
  np.testing.assert_allclose(lr, degrade.quantize(degrade.bicubic_downsample(hr, 4)), atol=1e-7)
  opts = {"name": "sr", "blur_sigma": (1.0, 2.0), "noise_sigma": (5.0, 10.0), "jpeg_quality": (40, 60)}
  classical = degrade.from_config_with_task(opts, 2)(key, hr)
  real = degrade.from_config_with_task({**opts, "order": "realworld"}, 2)(key, hr)
  assert classical[0].shape == real[0].shape == (16, 16, 3)
  assert float(jnp.abs(classical[0] - real[0]).max()) > 0.01
  assert degrade.task_name(int(classical[1])) == "blur+downup+noise+jpeg"
  with pytest.raises(ValueError, match="config.data.degrade.scale: set config.data.scale"):
    degrade.from_config({"name": "sr", "scale": 2}, 2)
  with pytest.raises(ValueError, match="order"):
    degrade.from_config({"name": "sr", "order": "other"}, 2)
  same_size = degrade.from_config(degrade.default_config(), 4)  # fine until something needs an LR input
  with pytest.raises(ValueError, match="--config.data.degrade.name=sr"):
    same_size(key, hr)


def test_crops_stay_aligned_and_flip_together():
  rng = np.random.default_rng(2)
  hr = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
  lr = hr[::4, ::4].copy()  # any LR whose pixel (i, j) belongs to HR block (4i, 4j)
  crop = pipeline.CropAndAugment(patch=16, seed=0, scale=4)
  for index in range(12):
    out = crop.map({"index": index, "target": hr, "degraded": lr})
    assert out["degraded"].shape == (4, 4, 3) and out["target"].shape == (16, 16, 3)
    # after any flip / rotation the LR pixel sits at the top-left corner of its block or another corner
    blocks = out["target"].reshape(4, 4, 4, 4, 3)
    corners = [blocks[:, a, :, b] for a in (0, 3) for b in (0, 3)]
    assert any(np.array_equal(out["degraded"], c) for c in corners), index
  with pytest.raises(ValueError, match="expected 10x14"):
    crop.map({"index": 0, "target": hr, "degraded": lr[:9]})


def _write(path, array):
  images.write_png(path, array)


@pytest.fixture(scope="module")
def sr_folders(tmp_path_factory):
  """HR images and LR images at 1/4: a plain pair, a DIV2K-named pair with an HR to mod-crop, and an LR
  of a wrong size."""
  root = tmp_path_factory.mktemp("sr_folders")
  hr_dir, lr_dir = root / "hr", root / "lr"
  hr_dir.mkdir()
  lr_dir.mkdir()
  rng = np.random.default_rng(3)
  lr_of = lambda x: np.round(np.asarray(degrade.bicubic_downsample(jnp.asarray(x / 255.0, jnp.float32), 4))
                             .clip(0, 1) * 255).astype(np.uint8)
  smooth = lambda h, w: (np.asarray(jax.image.resize(jnp.asarray(rng.random((h // 8, w // 8, 3))), (h, w, 3),
                                                     "cubic")).clip(0, 1) * 255).astype(np.uint8)
  a = smooth(48, 64)
  _write(str(hr_dir / "a.png"), a)
  _write(str(lr_dir / "a.png"), lr_of(a))
  b = smooth(50, 67)  # mod-cropped to 48x64
  _write(str(hr_dir / "0002.png"), b)
  _write(str(lr_dir / "0002x4.png"), lr_of(b[:48, :64]))
  c = smooth(48, 48)
  _write(str(hr_dir / "c.png"), c)
  _write(str(lr_dir / "c.png"), lr_of(c)[:, :11])  # 12x11: not 1/4 of 48x48
  return str(lr_dir), str(hr_dir), root


def test_lr_folders_build_pair_mod_crop_and_report(sr_folders):
  lr_dir, hr_dir, root = sr_folders
  out = str(root / "records")
  report = build.build({"degraded": lr_dir, "target": hr_dir}, out, scale=4)
  assert report["written"] == 2 and report["info"]["scale"] == 4
  on_disk = json.load(open(os.path.join(out, "report.json")))
  skipped = {s["file"]: s["reason"] for s in on_disk["skipped"]}
  assert set(skipped) == {os.path.join(lr_dir, "c.png"), os.path.join(hr_dir, "c.png")}
  reasons = list(skipped.values())
  assert all("LR/HR size mismatch for scale 4" in r and "12x11" in r and "needs degraded 12x12"
                                   in r for r in reasons)
  converted = {os.path.basename(c["file"]): c["changes"] for c in on_disk["converted"]}
  assert converted == {"0002.png": ["mod-cropped 50x67 -> 48x64 (multiple of scale 4)"]}
  from restorejax.data import records  # pylint: disable=g-import-not-at-top
  src = records.TripleSource(out)
  assert src.scale == 4
  for i in range(len(src)):
    ex = src[i]
    assert ex["target"].shape == (48, 64, 3) and ex["degraded"].shape == (12, 16, 3)
  # The evaluation folders pair the same way (DIV2K names, mod crop) and name the wrong size.
  with pytest.raises(ValueError, match="c.png: LR/HR size mismatch for scale 4"):
    datasets.folder(lr_dir, hr_dir, scale=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sr_folders):
  """The :tiny variants of both SR configs, a few steps each: SwinIR x2 on procedural images, RRDBNet x4
  on the LR/HR records built from folders (evaluated on the same records)."""
  lr_dir, hr_dir, root = sr_folders
  records_dir = str(root / "records_train")
  build.build({"degraded": lr_dir, "target": hr_dir}, records_dir, scale=4)
  runs = {}
  c = _load_config("configs/swinir_sr.py:tiny")
  with c.unlocked():
    c.update(total_steps=3, eval_every=3, checkpoint_every=3, log_every=1)
    c.data.procedural.update(num_images=8, eval_num_images=2)
  runs["swinir"] = (str(tmp_path_factory.mktemp("swinir")), c)
  c = _load_config("configs/rrdbnet.py:tiny")
  with c.unlocked():
    c.update(total_steps=3, eval_every=3, checkpoint_every=3, log_every=1)
    c.data.update(source="records", patch_size=32, batch_size=2)
    c.data.records.update(path=records_dir, eval_path=records_dir)
    c.eval.batch_size = 2
  runs["rrdbnet"] = (str(tmp_path_factory.mktemp("rrdbnet")), c)
  return {name: (workdir, train.train_and_evaluate(config, workdir)) for name, (workdir, config) in runs.items()}


@pytest.mark.parametrize("name", ["swinir", "rrdbnet"])
def test_sr_configs_train_end_to_end(trained, name):
  workdir, summary = trained[name]
  assert summary["steps"] == 3 and summary["nonfinite_steps"] == 0
  for key in ("eval/psnr", "eval/bicubic_psnr", "eval/bicubic_ssim"):
    assert np.isfinite(summary[key]), key
  assert summary["eval/bicubic_psnr"] == summary["eval/input_psnr"]
  assert summary["eval/bicubic_psnr"] > 15  # bicubic of smooth images, Y, cropped: far from noise


def test_sr_evaluator_scores_the_model_and_the_bicubic_baseline():
  """Nearest-neighbour 'SR' on two sizes (two canvases, padding): every score equals the direct metric."""
  rng = np.random.default_rng(5)
  examples = []
  for name, (h, w) in (("p", (24, 32)), ("q", (20, 28))):
    target = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    examples.append({"name": name, "target": target, "degraded": target[::2, ::2].copy()})
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  bs = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  nearest = lambda params, x, prior: jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  ev = scoring.Evaluator(nearest, mesh, bs, examples, batch_size=2, multiple=8, crop_border=2,
                           test_y_channel=True, scale=2)
  result = ev({})
  for row, e in zip(result.per_image, examples):
    up = e["degraded"].repeat(2, 0).repeat(2, 1)
    assert row["psnr"] == pytest.approx(float(metrics.psnr(up, e["target"], crop_border=2, test_y_channel=True)),
                                        abs=1e-4)
    bic = scoring.bicubic_upsample(e["degraded"], 2)
    assert row["bicubic_psnr"] == pytest.approx(
        float(metrics.psnr(bic, e["target"], crop_border=2, test_y_channel=True)), abs=1e-4)
  assert result.grid.shape[1:] == (20, 3 * 28, 3)  # bicubic | restored | target, all at HR size


def test_sr_model_restores_an_unseen_size_tiled(trained):
  workdir, _ = trained["rrdbnet"]
  image = images.Image(np.random.default_rng(6).integers(0, 256, (37, 53, 3), dtype=np.uint8), 8, "RGB")
  r = restore.Restore(workdir, tile=16, overlap=4, tile_batch=2)
  out = r(image)
  assert r.scale == 4 and out.shape == (148, 212, 3) and out.dtype == np.uint8
  whole = restore.Restore(workdir, tile=64, overlap=4)(image)  # one tile covers it
  assert whole.shape == out.shape
  # a small convolutional net: tiles with a wide enough overlap give nearly the whole-image result
  assert np.abs(out.astype(int) - whole.astype(int)).mean() < 2.0


def test_evaluate_command_uses_sr_conventions_and_reports_bicubic(trained, sr_folders, tmp_path):
  from restorejax import evaluate  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  lr_dir, hr_dir, _ = sr_folders
  (tmp_path / "lr").mkdir()
  (tmp_path / "hr").mkdir()
  for lr, hr in (("a.png", "a.png"), ("0002x4.png", "0002.png")):  # DIV2K name, HR mod-cropped
    shutil.copy(os.path.join(lr_dir, lr), tmp_path / "lr" / lr)
    shutil.copy(os.path.join(hr_dir, hr), tmp_path / "hr" / hr)
  workdir, _ = trained["rrdbnet"]
  report = evaluate.evaluate_run(workdir, f"folder:{tmp_path / 'lr'},{tmp_path / 'hr'}", batch_size=2)
  assert report["crop_border"] == 4 and report["test_y_channel"] and report["scale"] == 4
  assert [(r["name"], r["height"], r["width"]) for r in report["per_image"]] == [("0002", 48, 64), ("a", 48, 64)]
  assert np.isfinite(report["means"]["bicubic_psnr"]) and "bicubic upsampling" in evaluate.markdown(report)
