"""The restore command: tiled equals untiled within 0.1 dB, sizes / bit depths / colour modes kept, priors,
bad files reported and skipped with a non-zero exit status."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from restorejax import checkpoint, models, restore
from restorejax.data import degrade, images, procedural
from restorejax.evaluation import metrics


def _perturbed(params, scale=0.5):
  """Random residual scales (NAFNet starts them at zero) so every block and its channel attention act."""
  def f(path, v):
    if jax.tree_util.keystr(path).endswith(("['beta']", "['gamma']")):
      rng = np.random.default_rng(len(jax.tree_util.keystr(path)))
      return rng.normal(0, scale, v.shape).astype(np.float32)
    return v
  return jax.tree_util.tree_map_with_path(f, params)


def _make_run(workdir, **overrides):
  config = tiny_config(**overrides)
  model = models.build(config.model)
  params = _perturbed(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"])
  checkpoint.export_params(workdir, config, params)
  return model, params


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  model, params = _make_run(workdir)
  return workdir, model, params


@pytest.fixture(scope="module")
def degraded_pair():
  gt = procedural.dead_leaves(np.random.default_rng(3), 96)
  deg = degrade.blur_noise(jax.random.PRNGKey(0), jnp.asarray(gt, jnp.float32) / 255.0)
  return np.asarray(np.round(np.asarray(deg) * 255), np.uint8), gt


def test_tiled_is_within_a_tenth_of_a_db_of_untiled(run, degraded_pair):
  workdir, model, params = run
  deg, gt = degraded_pair
  untiled = np.asarray(model.apply({"params": params}, deg[None].astype(np.float32) / 255.0))[0]
  r = restore.Restore(workdir, tile=48, overlap=16, tile_batch=4)
  assert r.tiles_for(96, 96) == ((48, 48), (16, 16))  # 3 x 3 tiles of 48 stepping by 32
  tiled = r(images.Image(deg, 8, "RGB"))
  assert tiled.dtype == np.uint8 and tiled.shape == deg.shape
  gap = float(metrics.psnr(tiled, gt)) - float(metrics.psnr(untiled, gt))
  assert abs(gap) < 0.1, gap
  assert float(metrics.psnr(tiled, metrics.to_levels(untiled))) > 40  # and close pixel by pixel
  assert not np.array_equal(tiled, np.asarray(metrics.to_levels(untiled)))  # tiling did happen


def test_sizes_bit_depths_and_modes_are_kept(run, degraded_pair, tmp_path):
  workdir, _, _ = run
  deg, _ = degraded_pair
  rgb8 = deg[:50, :70]
  extra = np.random.default_rng(0).integers(0, 257, rgb8.shape).astype(np.uint16)
  rgb16 = rgb8.astype(np.uint16) * 257 + extra
  grey = deg[:40, :33, 1:2]
  alpha = np.random.default_rng(1).integers(0, 256, (37, 41, 1), dtype=np.uint8)
  files = {"rgb8": rgb8, "rgb16": rgb16, "grey": grey, "rgba": np.concatenate([deg[:37, :41], alpha], -1)}
  for name, px in files.items():
    images.write_png(str(tmp_path / "in" / f"{name}.png"), px)
  failures = restore.restore_files(workdir, [str(tmp_path / "in")], str(tmp_path / "out"), tile=32,
                                   overlap=8)
  assert failures == []
  out = {n: images.read(str(tmp_path / "out" / f"{n}.png")) for n in files}
  for name, px in files.items():
    assert out[name].pixels.shape == px.shape and out[name].pixels.dtype == px.dtype, name
  assert (out["rgb16"].bits, out["grey"].mode, out["rgba"].mode) == (16, "L", "RGBA")
  r = restore.Restore(workdir, tile=32, overlap=8)
  # 16-bit: scaled by 65535, not 255; the result is the 8-bit one to within the input's extra precision.
  assert np.abs(out["rgb16"].pixels / 257.0 - out["rgb8"].pixels).max() < 12
  # Grey: the luminance of restoring three equal channels.
  rgb = r(images.Image(np.repeat(grey, 3, -1), 8, "RGB")).astype(np.float64)
  luma = np.round(np.clip(rgb @ np.array(restore.LUMA) / 255.0, 0, 1) * 255)
  assert np.abs(out["grey"].pixels[..., 0] - luma).max() <= 1
  # RGBA: colour restored as RGB alone, alpha re-attached unchanged.
  assert np.array_equal(out["rgba"].pixels[..., 3:], alpha)
  assert np.array_equal(out["rgba"].pixels[..., :3], r(images.Image(deg[:37, :41], 8, "RGB")))


def test_priors_enter_the_network_and_are_resized(tmp_path, degraded_pair):
  workdir = str(tmp_path / "run")
  _make_run(workdir, **{"model.fusion": "concat"})
  deg, gt = degraded_pair
  images.write_png(str(tmp_path / "in" / "a.png"), deg[:40, :40])
  images.write_png(str(tmp_path / "in" / "b.png"), deg[40:80, 40:80])
  images.write_png(str(tmp_path / "priors" / "a.png"), gt[:60, :50])   # another size: resized
  images.write_png(str(tmp_path / "priors" / "b.png"), gt[40:80, 40:80])
  assert restore.restore_files(workdir, [str(tmp_path / "in")], str(tmp_path / "with"),
                               prior=str(tmp_path / "priors"), tile=32, overlap=8) == []
  assert restore.restore_files(workdir, [str(tmp_path / "in" / "b.png")], str(tmp_path / "without"),
                               tile=32, overlap=8) == []
  with_prior = images.read(str(tmp_path / "with" / "b.png")).pixels
  assert with_prior.shape == (40, 40, 3)
  assert not np.array_equal(with_prior, images.read(str(tmp_path / "without" / "b.png")).pixels)
  with pytest.raises(ValueError, match="one prior file serves one input"):
    restore.restore_files(workdir, [str(tmp_path / "in")], str(tmp_path / "x"),
                          prior=str(tmp_path / "priors" / "a.png"))


def test_cli_reports_bad_files_restores_the_rest_and_fails(run, degraded_pair, tmp_path):
  workdir, _, _ = run
  deg, _ = degraded_pair
  images.write_png(str(tmp_path / "good.png"), deg[:32, :32])
  (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
  missing = str(tmp_path / "missing.jpg")
  cmd = [sys.executable, "-m", "restorejax.restore", f"--workdir={workdir}", f"--out={tmp_path / 'out'}",
         str(tmp_path / "bad.png"), missing, str(tmp_path / "good.png")]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("restorejax-restore:")]
  assert errors[0].startswith(f"restorejax-restore: error: {tmp_path / 'bad.png'}: ")
  assert errors[1] == f"restorejax-restore: error: {missing}: cannot be read (No such file or directory)"
  assert errors[2] == "restorejax-restore: 2 of 3 file(s) failed"
  assert images.read(str(tmp_path / "out" / "good.png")).pixels.shape == (32, 32, 3)
  assert sorted(os.listdir(tmp_path / "out")) == ["good.png"]

  proc = subprocess.run([sys.executable, "-m", "restorejax.restore", f"--workdir={tmp_path / 'nope'}",
                         f"--out={tmp_path / 'out'}", str(tmp_path / "good.png")], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == f"restorejax: error: {tmp_path / 'nope'}: no config.json " \
                                                 "(is it a restorejax run directory?)"


def _restore_cli(argv):
  """`restorejax-restore ARGV` in this process: (exit status, stderr lines)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from restorejax import cli  # pylint: disable=g-import-not-at-top
  restore.define_flags()
  flags.FLAGS.unparse_flags()
  import contextlib, io  # pylint: disable=g-import-not-at-top,multiple-imports
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    try:
      restore.main(cli.parse_flags(["restorejax-restore", *argv]))
      status = 0
    except SystemExit as e:
      status = e.code
  return status, [l for l in err.getvalue().splitlines() if l.startswith("restorejax")]


def test_outputs_never_overwrite_inputs_nor_follow_links(run, degraded_pair, tmp_path):
  workdir, _, _ = run
  deg, _ = degraded_pair
  images.write_png(str(tmp_path / "in" / "a.png"), deg[:32, :32])
  original = (tmp_path / "in" / "a.png").read_bytes()
  status, errors = _restore_cli([f"--workdir={workdir}", f"--out={tmp_path / 'in'}", str(tmp_path / "in")])
  assert status == 2 and errors == [f"restorejax: error: --out={tmp_path / 'in'} is the input folder "
                                    f"{tmp_path / 'in'}: restored images would replace or mix with the "
                                    "originals; choose another folder"]
  with pytest.raises(ValueError, match=f"the output {tmp_path / 'in' / 'a.png'} would overwrite the input"):
    restore.restore_files(workdir, [str(tmp_path / "in" / "a.png")], str(tmp_path / "in" / "."))
  assert (tmp_path / "in" / "a.png").read_bytes() == original and os.listdir(tmp_path / "in") == ["a.png"]
  # A link already in --out is replaced by the output, its target left alone.
  (tmp_path / "out").mkdir()
  (tmp_path / "victim.txt").write_text("keep me")
  os.symlink(tmp_path / "victim.txt", tmp_path / "out" / "a.png")
  assert restore.restore_files(workdir, [str(tmp_path / "in")], str(tmp_path / "out"), tile=32,
                               overlap=8) == []
  assert (tmp_path / "victim.txt").read_text() == "keep me"
  assert not os.path.islink(tmp_path / "out" / "a.png") and os.listdir(tmp_path / "out") == ["a.png"]
  assert images.read(str(tmp_path / "out" / "a.png")).pixels.shape == (32, 32, 3)


def test_a_decompression_bomb_is_one_failed_file(run, degraded_pair, tmp_path):
  from test_images import bomb_png  # pylint: disable=g-import-not-at-top
  workdir, _, _ = run
  deg, _ = degraded_pair
  images.write_png(str(tmp_path / "in" / "good.png"), deg[:32, :32])
  (tmp_path / "in" / "bomb.png").write_bytes(bomb_png())
  status, errors = _restore_cli([f"--workdir={workdir}", f"--out={tmp_path / 'out'}", "--tile=32", "--overlap=8",
                                 str(tmp_path / "in")])
  assert status == 1
  assert errors[0].startswith(f"restorejax-restore: error: {tmp_path / 'in' / 'bomb.png'}: claims "
                              "30000x30000 pixels")
  assert errors[1:] == ["restorejax-restore: 1 of 2 file(s) failed"]
  assert os.listdir(tmp_path / "out") == ["good.png"]


def test_a_prior_for_a_network_without_fusion_is_refused(run, degraded_pair, tmp_path):
  workdir, _, _ = run
  images.write_png(str(tmp_path / "a.png"), degraded_pair[0][:32, :32])
  status, errors = _restore_cli([f"--workdir={workdir}", f"--out={tmp_path / 'out'}",
                                 f"--prior={tmp_path / 'a.png'}", str(tmp_path / "a.png")])
  assert status == 2 and errors == [f"restorejax: error: --prior={tmp_path / 'a.png'}: the network of "
                                    f"{workdir} takes no prior (config.model.fusion is 'none'); leave out "
                                    "--prior, or train with a fusion"]
  assert not os.path.exists(tmp_path / "out")


def test_images_of_many_sizes_share_a_few_canvases(run, degraded_pair):
  workdir, _, _ = run
  deg, _ = degraded_pair
  r = restore.Restore(workdir, tile=64, overlap=8)
  sizes = [(33, 47), (40, 41), (37, 36), (50, 60), (57, 63), (61, 49)]
  for h, w in sizes:
    assert r(images.Image(deg[:h, :w], 8, "RGB")).shape == (h, w, 3)
  assert sorted(r.shapes) == [(1, 48, 48, 3), (1, 64, 64, 3)]  # 2 compiles for 6 sizes
  assert [restore.canvas_side(n, 1) for n in (1, 17, 33, 49, 65, 97, 129, 200)] == \
      [16, 24, 48, 64, 96, 128, 192, 256]


def test_help_lists_the_command_flags():
  for entry in ("restorejax.restore", "restorejax.evaluate"):
    code = f"import sys; sys.argv = ['cmd', '--help']; from {entry} import run; run()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "--workdir:" in proc.stdout, (entry, proc.stdout)
    assert ("--tile:" if entry.endswith("restore") else "--canvas:") in proc.stdout
