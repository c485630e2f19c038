"""The triple record format and its reader; training on a built dataset with and without its priors."""

import os

import numpy as np
import pytest

from restorejax.data import build, images, records
from conftest import read_summary, run_main


def _rgb(seed, h=24, w=20):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _example(i, *, task=None, prior=True):
  ex = {"name": f"ex{i}", "target": _rgb(i), "degraded": _rgb(100 + i)}
  if prior:
    ex["prior"] = _rgb(200 + i)
  if task:
    ex["task"] = task
  ex["sizes"] = {k: [24, 20] for k in records.IMAGE_KEYS if k in ex}
  return ex


def _write(path, examples):
  def summary(ex):
    return {"task": ex.get("task"), "has_degraded": "degraded" in ex, "has_prior": "prior" in ex,
            "size": ex["target"].shape[:2]}
  return records.write(str(path), ((records.encode(ex), summary(ex)) for ex in examples), records_per_shard=2)


def test_records_round_trip_and_encode_deterministically():
  ex = _example(0, task="derain")
  data = records.encode(ex)
  assert records.encode(dict(reversed(list(ex.items())))) == data   # field order does not matter
  rec = records.decode(data)
  assert list(rec) == ["name", "target", "degraded", "prior", "task", "sizes"]
  for k in records.IMAGE_KEYS:
    assert isinstance(rec[k], bytes) and np.array_equal(records.decode_image(rec[k]), ex[k])
  assert rec["task"] == "derain" and rec["sizes"]["prior"] == [24, 20]
  with pytest.raises(ValueError, match="unknown field"):
    records.encode({**ex, "mask": 1})
  with pytest.raises(ValueError, match="uint8"):
    records.encode({"name": "x", "target": np.zeros((4, 4), np.float32)})


def test_reader_concatenates_datasets_and_numbers_tasks(tmp_path):
  info = _write(tmp_path / "a", [_example(i, task="dehaze") for i in range(3)])
  assert info["count"] == 3 and [s["count"] for s in info["shards"]] == [2, 1]
  assert info["tasks"] == {"dehaze": 3} and info["has_prior"] and info["has_degraded"]
  _write(tmp_path / "b", [_example(3, task="derain"), _example(4)])
  src = records.TripleSource(f"{tmp_path}/a,{tmp_path}/b")
  assert len(src) == 5 and src.image_keys == ("degraded", "prior", "target") and src.tasks == ("dehaze", "derain")
  got = [src[i] for i in range(5)]
  assert [g["name"] for g in got] == [f"ex{i}" for i in range(5)]
  assert [int(g["task"]) for g in got] == [0, 0, 0, 1, -1]
  for i, g in enumerate(got):
    assert g["target"].dtype == np.uint8 and np.array_equal(g["target"], _rgb(i))
    assert np.array_equal(g["prior"], _rgb(200 + i))
  ordered = records.TripleSource([f"{tmp_path}/b", f"{tmp_path}/a"], tasks=("derain", "dehaze", "x"))
  assert int(ordered[0]["task"]) == 0 and int(ordered[2]["task"]) == 1
  with pytest.raises(ValueError, match="not in the configured tasks"):
    records.TripleSource(f"{tmp_path}/a", tasks=("derain",))
  raw = records.TripleSource(f"{tmp_path}/a", decoded=False)[0]
  assert isinstance(raw["target"], bytes)


def test_reader_names_bad_datasets(tmp_path):
  _write(tmp_path / "prior", [_example(0)])
  _write(tmp_path / "noprior", [_example(1, prior=False)])
  with pytest.raises(ValueError, match="must hold the same images"):
    records.TripleSource([f"{tmp_path}/prior", f"{tmp_path}/noprior"])
  os.makedirs(tmp_path / "plain")
  with pytest.raises(ValueError, match=f"{tmp_path}/plain: not a triple dataset"):
    records.TripleSource(f"{tmp_path}/plain")
  os.remove(tmp_path / "prior" / records.shard_name(0, 1))
  with pytest.raises(ValueError, match="is missing"):
    records.read_info(f"{tmp_path}/prior")


@pytest.fixture(scope="module")
def triple_dataset(tmp_path_factory):
  """A built dataset of 8 triples: blurred + noisy degraded images, priors shifted and smaller."""
  root = tmp_path_factory.mktemp("triples")
  rng = np.random.default_rng(0)
  for i in range(8):
    y, x = np.mgrid[0:40, 0:40]
    tgt = (127 + 100 * np.sin(x / (3 + i) + rng.random() * 6)[..., None] * np.cos(y / 5)[..., None]
           * rng.random(3)).astype(np.uint8)
    deg = np.clip(tgt.astype(int) + rng.normal(0, 20, tgt.shape), 0, 255).astype(np.uint8)
    prior = np.roll(tgt, 2, axis=1)[::2, ::2]
    for side, im in (("d", deg), ("t", tgt), ("p", prior)):
      os.makedirs(root / side, exist_ok=True)
      images.write_png(str(root / side / f"im{i}.png"), im)
  out = {"triples": str(root / "triples"), "targets": str(root / "targets")}
  build.build({"degraded": str(root / "d"), "target": str(root / "t"), "prior": str(root / "p")}, out["triples"])
  build.build({"target": str(root / "t")}, out["targets"])
  return out


TINY = ("--config.model.width=8", "--config.model.enc_blocks=(1,1)", "--config.model.middle_blocks=1",
        "--config.model.dec_blocks=(1,1)", "--config.data.patch_size=32", "--config.data.eval_crop=32",
        "--config.data.batch_size=4", "--config.eval.batch_size=4", "--config.data.num_workers=0",
        "--config.total_steps=6", "--config.log_every=3", "--config.eval_every=6",
        "--config.checkpoint_every=6", "--config.optim.warmup_steps=2")


def test_training_on_triples_with_and_without_priors(triple_dataset, tmp_path):
  config = f"configs/triples.py:{triple_dataset['triples']}"
  run_main(str(tmp_path / "prior"), *TINY, config=config)
  run_main(str(tmp_path / "noprior"), *TINY, "--config.data.use_prior=False", config=config)
  with_prior, without = read_summary(tmp_path / "prior"), read_summary(tmp_path / "noprior")
  for s in (with_prior, without):
    assert s["steps"] == 6 and s["nonfinite_steps"] == 0 and np.isfinite(s["eval/psnr"])
  # same seed, data and network: only the prior input differs, so only it can change the result
  assert with_prior["num_params"] == without["num_params"]
  assert with_prior["params_fingerprint"] != without["params_fingerprint"]


def test_training_on_targets_with_simulated_priors(triple_dataset, tmp_path):
  """Degradations and priors synthesised on the device, in training and in evaluation."""
  config = f"configs/triples.py:{triple_dataset['targets']}"
  run_main(str(tmp_path / "sim"), *TINY, "--config.data.simulated_prior.enabled=True", config=config)
  s = read_summary(tmp_path / "sim")
  assert s["steps"] == 6 and s["nonfinite_steps"] == 0 and np.isfinite(s["eval/psnr"])
