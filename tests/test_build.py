"""The folder -> triple dataset builder: good files in, every other file reported with its reason."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image as PILImage

from restorejax.data import build, records


def _rgb(seed, h=24, w=20):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path, array, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  PILImage.fromarray(array).save(path, **kwargs)


def _read_all(path):
  src = records.TripleSource(path)
  return {ex["name"]: ex for ex in (src[i] for i in range(len(src)))}


def _shard_digests(path):
  return {f: hashlib.sha256(open(os.path.join(path, f), "rb").read()).hexdigest()
          for f in sorted(os.listdir(path)) if f.endswith(".array_record")}


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
  """Folders mixing good pairs with every kind of bad or convertible file; returns (root, expected)."""
  root = tmp_path_factory.mktemp("messy")
  d, t = str(root / "degraded"), str(root / "target")
  good = {}
  for i in range(3):  # plain good pairs, one with an upper-case extension on the target side
    tgt = _rgb(i)
    deg = (255 - tgt).astype(np.uint8)
    _save(f"{d}/good{i}.png", deg)
    _save(f"{t}/good{i}.PNG" if i == 2 else f"{t}/good{i}.png", tgt)
    good[f"good{i}"] = (deg, tgt)
  for i, (ext, kwargs) in enumerate(((".webp", {"lossless": True}), (".bmp", {}), (".tif", {}))):
    tgt = _rgb(30 + i)
    _save(f"{d}/fmt{i}{ext}", 255 - tgt, **kwargs)
    _save(f"{t}/fmt{i}.png", tgt)
    good[f"fmt{i}"] = (255 - tgt, tgt)
  # 16-bit grey degraded (converted), RGBA target (alpha dropped)
  g16 = np.random.default_rng(10).integers(0, 65536, (24, 20), dtype=np.uint16)
  _save(f"{d}/deep.png", g16)
  rgba = np.dstack([_rgb(11), np.full((24, 20, 1), 7, np.uint8)])
  _save(f"{t}/deep.png", rgba)
  deep8 = ((g16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
  good["deep"] = (np.repeat(deep8[..., None], 3, -1), rgba[..., :3])
  # grayscale JPEG degraded (converted; lossy, so compare with what Pillow decodes)
  _save(f"{d}/greyjpg.jpg", _rgb(12)[..., 0], quality=95)
  _save(f"{t}/greyjpg.png", _rgb(13))
  grey = np.asarray(PILImage.open(f"{d}/greyjpg.jpg"))
  good["greyjpg"] = (np.repeat(grey[..., None], 3, -1), _rgb(13))
  # broken ones, each with a good partner
  open(f"{d}/zero.png", "wb").close()
  _save(f"{t}/zero.png", _rgb(14))
  _save(f"{d}/trunc.png", _rgb(15))
  data = open(f"{d}/trunc.png", "rb").read()
  open(f"{d}/trunc.png", "wb").write(data[:len(data) // 2])
  _save(f"{t}/trunc.png", _rgb(16))
  _save(f"{d}/text.png", _rgb(17))
  open(f"{t}/text.png", "w").write("this is not a picture\n")
  _save(f"{d}/mismatch.png", _rgb(18, 24, 22))
  _save(f"{t}/mismatch.png", _rgb(19))
  _save(f"{d}/lonely.png", _rgb(20))          # no target
  _save(f"{t}/orphan.png", _rgb(21))          # no degraded
  _save(f"{d}/twice.png", _rgb(22))           # two degraded files with one stem
  _save(f"{d}/twice.jpg", _rgb(22))
  _save(f"{t}/twice.png", _rgb(23))
  open(f"{d}/notes.txt", "w").write("readme")
  expected_skips = {
      f"{d}/zero.png": "empty file", f"{t}/zero.png": "partner unusable",
      f"{d}/trunc.png": "truncated", f"{t}/trunc.png": "partner unusable",
      f"{t}/text.png": "not an image", f"{d}/text.png": "partner unusable",
      f"{d}/mismatch.png": "size mismatch", f"{t}/mismatch.png": "size mismatch",
      f"{d}/lonely.png": "no partner: the target image", f"{t}/orphan.png": "no partner: no degraded",
      f"{d}/twice.png": "ambiguous", f"{d}/twice.jpg": "ambiguous", f"{t}/twice.png": "no partner",
      f"{d}/notes.txt": "not an image",
  }
  return root, good, expected_skips


def test_messy_folders_keep_exactly_the_usable_pairs(messy, tmp_path, capsys):
  root, good, expected_skips = messy
  out = str(tmp_path / "out")
  report = build.main(["--degraded", str(root / "degraded"), "--target", str(root / "target"),
                       "--out", out, "--task", "denoise", "--records-per-shard", "2"])
  assert "wrote 8 examples" in capsys.readouterr().out
  got = _read_all(out)
  assert sorted(got) == sorted(good)
  for name, (deg, tgt) in good.items():
    assert np.array_equal(got[name]["degraded"], deg), name
    assert np.array_equal(got[name]["target"], tgt), name
    assert got[name]["task"] == 0
  on_disk = json.load(open(os.path.join(out, build.REPORT_FILE)))
  assert on_disk == {k: report[k] for k in ("written", "skipped", "converted")}
  assert report["written"] == 8
  reasons = {s["file"]: s["reason"] for s in report["skipped"]}
  assert sorted(reasons) == sorted(expected_skips)
  for f, fragment in expected_skips.items():
    assert fragment in reasons[f], (f, reasons[f])
  converted = {c["file"]: c["changes"] for c in report["converted"]}
  d, t = root / "degraded", root / "target"
  assert converted == {f"{d}/deep.png": ["16-bit -> 8-bit", "greyscale -> RGB"],
                       f"{t}/deep.png": ["alpha channel dropped"],
                       f"{d}/greyjpg.jpg": ["greyscale -> RGB"]}
  info = records.read_info(out)
  assert info["count"] == 8 and info["tasks"] == {"denoise": 8} and not info["has_prior"]
  assert [s["count"] for s in info["shards"]] == [2, 2, 2, 2]
  assert info["sizes"] == {"min": [24, 20], "max": [24, 20]}
  # original sizes and file names travel with each record
  rec = records.decode(records.TripleSource(out, decoded=False)._source[0])
  assert rec["sizes"] == {"degraded": [24, 20], "target": [24, 20]} and rec["files"]["target"] == "deep.png"


def test_rerun_gives_byte_identical_shards_with_any_worker_count(messy, tmp_path):
  root, _, _ = messy
  digests = []
  for workers, out in ((1, tmp_path / "a"), (2, tmp_path / "b"), (1, tmp_path / "a")):
    build.build({"degraded": str(root / "degraded"), "target": str(root / "target")}, str(out),
                records_per_shard=3, workers=workers)
    digests.append(_shard_digests(out))
  assert len(digests[0]) == 3 and digests[0] == digests[1] == digests[2]


def test_priors_of_another_size_are_resized_bicubic(tmp_path):
  tgt, prior = _rgb(1, 32, 40), _rgb(2, 20, 30)
  _save(f"{tmp_path}/d/x.png", _rgb(3, 32, 40))
  _save(f"{tmp_path}/t/x.png", tgt)
  _save(f"{tmp_path}/p/x.png", prior)
  report = build.build({"degraded": f"{tmp_path}/d", "target": f"{tmp_path}/t", "prior": f"{tmp_path}/p"},
                       f"{tmp_path}/out")
  ex = _read_all(f"{tmp_path}/out")["x"]
  want = np.asarray(PILImage.fromarray(prior).resize((40, 32), PILImage.BICUBIC))
  assert ex["prior"].shape == (32, 40, 3) and np.array_equal(ex["prior"], want)
  assert report["converted"] == [{"file": f"{tmp_path}/p/x.png", "changes": ["resized 20x30 -> 32x40 (bicubic)"]}]
  rec = records.decode(records.TripleSource(f"{tmp_path}/out", decoded=False)._source[0])
  assert rec["sizes"]["prior"] == [20, 30]
  assert records.read_info(f"{tmp_path}/out")["has_prior"]


def test_target_only_build_and_min_size(tmp_path):
  for i, size in enumerate((16, 40, 48)):
    _save(f"{tmp_path}/t/im{i}.png", _rgb(i, size, size + 4))
  report = build.main(["--target", f"{tmp_path}/t", "--out", f"{tmp_path}/out", "--min-size", "32"])
  got = _read_all(f"{tmp_path}/out")
  assert sorted(got) == ["im1", "im2"] and set(got["im1"]) == {"name", "target"}
  assert np.array_equal(got["im2"]["target"], _rgb(2, 48, 52))
  assert report["skipped"] == [{"file": f"{tmp_path}/t/im0.png", "reason": "smaller than --min-size=32 (16x20)"}]
  info = records.read_info(f"{tmp_path}/out")
  assert not info["has_degraded"] and info["sizes"] == {"min": [40, 44], "max": [48, 52]}


def test_key_patterns_pair_many_degraded_with_one_target(tmp_path):
  """RESIDE SOTS style: hazy 1400_1 .. 1400_3 all pair with gt 1400."""
  tgt = _rgb(0)
  _save(f"{tmp_path}/gt/1400.png", tgt)
  for k in (1, 2, 3):
    _save(f"{tmp_path}/hazy/1400_{k}.png", _rgb(k))
  _save(f"{tmp_path}/hazy/badname.png", _rgb(9))
  report = build.main(["--degraded", f"{tmp_path}/hazy", "--target", f"{tmp_path}/gt", "--out",
                       f"{tmp_path}/out", "--degraded-key", r"(\d+)_\d+"])
  got = _read_all(f"{tmp_path}/out")
  assert sorted(got) == ["1400_1", "1400_2", "1400_3"]
  assert all(np.array_equal(ex["target"], tgt) for ex in got.values())
  assert [s["file"] for s in report["skipped"]] == [f"{tmp_path}/hazy/badname.png"]
  assert "does not match --degraded-key" in report["skipped"][0]["reason"]


@pytest.mark.parametrize("case", ["missing", "empty", "unwritable"])
def test_bad_arguments_are_one_line_errors_with_status_2(tmp_path, capsys, case):
  _save(f"{tmp_path}/t/a.png", _rgb(0))
  os.makedirs(f"{tmp_path}/empty")
  open(f"{tmp_path}/file", "w").write("x")
  args = {"missing": ["--degraded", f"{tmp_path}/nope", "--target", f"{tmp_path}/t", "--out", f"{tmp_path}/o"],
          "empty": ["--degraded", f"{tmp_path}/empty", "--target", f"{tmp_path}/t", "--out", f"{tmp_path}/o"],
          "unwritable": ["--target", f"{tmp_path}/t", "--out", f"{tmp_path}/file/out"]}[case]
  with pytest.raises(SystemExit) as e:
    build.main(args)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("restorejax.data.build: error: ")
  assert {"missing": f"--degraded={tmp_path}/nope: no such folder",
          "empty": f"--degraded={tmp_path}/empty: the folder is empty",
          "unwritable": f"--out={tmp_path}/file/out: not writable"}[case] in err


def test_tiles_cover_the_image_with_a_last_one_flush_with_the_edge(tmp_path):
  tgt = _rgb(5, 40, 44)
  _save(f"{tmp_path}/t/big.png", tgt)
  _save(f"{tmp_path}/d/big.png", 255 - tgt)
  build.main(["--degraded", f"{tmp_path}/d", "--target", f"{tmp_path}/t", "--out", f"{tmp_path}/out",
              "--tile", "16", "--tile-step", "12"])
  got = _read_all(f"{tmp_path}/out")
  want = {f"big_y{y}_x{x}": (y, x) for y in (0, 12, 24) for x in (0, 12, 24, 28)}
  assert sorted(got) == sorted(want)
  for name, (y, x) in want.items():
    assert np.array_equal(got[name]["target"], tgt[y:y + 16, x:x + 16])
    assert np.array_equal(got[name]["degraded"], 255 - tgt[y:y + 16, x:x + 16])
  info = records.read_info(f"{tmp_path}/out")
  assert info["count"] == 12 and info["tile"] == {"size": 16, "step": 12}
  assert info["sizes"] == {"min": [16, 16], "max": [16, 16]}


def test_a_failed_rebuild_keeps_the_previous_dataset_and_a_bomb_is_one_skipped_file(tmp_path, monkeypatch):
  from test_images import bomb_png  # pylint: disable=g-import-not-at-top
  for i in range(3):
    _save(f"{tmp_path}/t/im{i}.png", _rgb(i))
  out = f"{tmp_path}/out"
  build.main(["--target", f"{tmp_path}/t", "--out", out, "--records-per-shard", "2"])
  before = {f: open(os.path.join(out, f), "rb").read() for f in sorted(os.listdir(out))}
  assert len(before) == 4  # 2 shards, dataset_info.json, report.json
  # A crash in the middle of the rebuild (the second example) leaves the old dataset as it was.
  real_load, calls = build.load, []

  def crashing_load(*args, **kwargs):
    calls.append(args[0])
    if len(calls) == 2:
      raise RuntimeError("killed")
    return real_load(*args, **kwargs)
  monkeypatch.setattr(build, "load", crashing_load)
  with pytest.raises(RuntimeError, match="killed"):
    build.main(["--target", f"{tmp_path}/t", "--out", out, "--records-per-shard", "1"])
  monkeypatch.undo()
  assert {f: open(os.path.join(out, f), "rb").read() for f in sorted(os.listdir(out))} == before
  assert sorted(os.listdir(tmp_path)) == ["out", "t"]  # no staging folder left behind
  # A decompression bomb among the inputs is a skipped file; the rebuild replaces the dataset whole.
  open(f"{tmp_path}/t/bomb.png", "wb").write(bomb_png())
  report = build.main(["--target", f"{tmp_path}/t", "--out", out, "--records-per-shard", "1"])
  assert report["written"] == 3 and [s["file"] for s in report["skipped"]] == [f"{tmp_path}/t/bomb.png"]
  assert "30000x30000 pixels, more than the limit" in report["skipped"][0]["reason"]
  assert len(records.read_info(out)["shards"]) == 3 and len(os.listdir(out)) == 5
  assert sorted(os.listdir(tmp_path)) == ["out", "t"]


def test_an_out_folder_holding_other_files_is_refused(tmp_path, capsys):
  _save(f"{tmp_path}/data/t/a.png", _rgb(0))
  open(f"{tmp_path}/data/notes.txt", "w").write("mine")
  with pytest.raises(SystemExit) as e:
    build.main(["--target", f"{tmp_path}/data/t", "--out", f"{tmp_path}/data"])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip() == (
      f"restorejax.data.build: error: --out={tmp_path}/data: holds files that are not part of a dataset "
      "(notes.txt, t); a build replaces its folder, so give a new or empty folder, or an earlier dataset")
  assert sorted(os.listdir(f"{tmp_path}/data")) == ["notes.txt", "t"]


def test_pairs_without_a_prior_are_kept_marked_absent(tmp_path):
  from restorejax.data import pipeline  # pylint: disable=g-import-not-at-top
  for i in range(3):
    _save(f"{tmp_path}/d/im{i}.png", _rgb(i))
    _save(f"{tmp_path}/t/im{i}.png", _rgb(10 + i))
    if i != 1:
      _save(f"{tmp_path}/p/im{i}.png", _rgb(20 + i))
  _save(f"{tmp_path}/p/stray.png", _rgb(9))  # a prior without its pair is still skipped
  report = build.main(["--degraded", f"{tmp_path}/d", "--target", f"{tmp_path}/t", "--prior", f"{tmp_path}/p",
                       "--out", f"{tmp_path}/out"])
  assert report["written"] == 3
  assert report["without_prior"] == [{"file": f"{tmp_path}/d/im1.png",
                                      "reason": f"no prior image for key 'im1' in {tmp_path}/p"}]
  assert [s["file"] for s in report["skipped"]] == [f"{tmp_path}/p/stray.png"]
  info = records.read_info(f"{tmp_path}/out")
  assert info["has_prior"] and info["prior_absent"] == 1
  got = _read_all(f"{tmp_path}/out")
  assert [bool(got[f"im{i}"]["prior_mask"]) for i in range(3)] == [True, False, True]
  assert not got["im1"]["prior"].any() and np.array_equal(got["im2"]["prior"], _rgb(22))
  # The pipeline's decode step (images left encoded by the source) gives the same, for the batch.
  src = records.TripleSource(f"{tmp_path}/out", decoded=False)
  decode = pipeline.Decode(keys=src.image_keys, seed=0)
  ex = decode.map({**src[1], "index": 1})
  assert ex["prior_mask"] == np.bool_(False) and ex["prior"].shape == (24, 20, 3) and not ex["prior"].any()
  assert decode.map({**src[0], "index": 0})["prior_mask"]
  # Prior loss terms would pull toward the zero priors: they refuse such batches by name.
  from restorejax.losses import prior as prior_losses  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="config.losses.prior_color: the dataset has examples without a prior"):
    prior_losses.prior_color(np.zeros((2, 8, 8, 3), np.float32),
                             {"prior": np.zeros((2, 8, 8, 3), np.float32), "prior_mask": np.array([True, False])})
