"""TFDS paired-folder builders: prepared from folders the test makes, read by tfds.data_source and our pipeline."""

import os
import subprocess
import sys

import numpy as np
import pytest

from restorejax.data import images, pipeline
from conftest import ROOT, tiny_config

tfds = pytest.importorskip("tensorflow_datasets")


def _rgb(seed, h=40, w=44):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """`paired_images/folders_prior` with train (6) and test (2) splits; priors at half size."""
  from restorejax.data import tfds_builders
  root = tmp_path_factory.mktemp("tfds")
  manual, data_dir = root / "manual", str(root / "data")
  targets = {}
  for split, n in (("train", 6), ("test", 2)):
    for i in range(n):
      t = _rgb(i + (0 if split == "train" else 50))
      targets[(split, f"im{i}")] = t
      images.write_png(str(manual / split / "target" / f"im{i}.png"), t)
      images.write_png(str(manual / split / "degraded" / f"im{i}.png"), 255 - t)
      images.write_png(str(manual / split / "prior" / f"im{i}.png"), (t // 2)[::2, ::2])
  open(manual / "train" / "degraded" / "broken.png", "wb").close()   # skipped (logged), not fatal
  images.write_png(str(manual / "train" / "target" / "broken.png"), _rgb(99))
  images.write_png(str(manual / "train" / "prior" / "broken.png"), _rgb(98))
  tfds_builders.prepare("folders_prior", str(manual), data_dir)
  return data_dir, targets


def test_prepared_dataset_reads_through_tfds_data_source(prepared):
  data_dir, targets = prepared
  src = tfds.data_source("paired_images/folders_prior", split="train", data_dir=data_dir)
  assert len(src) == 6
  for i in range(len(src)):
    ex = src[i]
    name = ex["name"].decode()
    t = targets[("train", name)]
    assert np.array_equal(ex["target"], t) and np.array_equal(ex["degraded"], 255 - t)
    assert ex["prior"].shape == t.shape   # resized to the target size
  info = tfds.builder("paired_images/folders_prior", data_dir=data_dir).info
  assert {s: v.num_examples for s, v in info.splits.items()} == {"train": 6, "test": 2}


def test_pipeline_reads_tfds_source(prepared):
  data_dir, targets = prepared
  config = tiny_config(**{"data.source": "tfds", "data.tfds.name": "paired_images",
                          "data.tfds.config": "folders_prior", "data.tfds.data_dir": data_dir,
                          "data.tfds.eval_split": "test"})
  b = next(iter(pipeline.train_dataset(config)))
  assert set(b) == {"degraded", "prior", "target", "index"} and b["target"].shape == (8, 32, 32, 3)
  assert np.array_equal(b["degraded"], 255 - b["target"])
  assert {k: (v.shape, v.dtype) for k, v in pipeline.batch_spec(config, 8).items()} == {
      k: (v.shape, v.dtype) for k, v in b.items()}
  ev = pipeline.eval_examples(config)
  assert ev["target"].shape == (2, 40, 44, 3)
  assert sorted(map(bytes, ev["target"].reshape(2, -1))) == sorted(
      bytes(targets[("test", n)].reshape(-1)) for n in ("im0", "im1"))
  config = tiny_config(**{"data.source": "tfds", "data.tfds.name": "paired_images",
                          "data.tfds.config": "folders_prior", "data.tfds.data_dir": data_dir,
                          "data.tfds.split": "nope"})
  with pytest.raises(ValueError, match="has no split 'nope'"):
    pipeline.train_dataset(config)


def test_named_config_pairs_by_key_and_splits_by_number(tmp_path):
  """O-HAZE names: 01_outdoor_hazy.jpg / 01_outdoor_GT.jpg; images 41.. form the test split."""
  from restorejax.data import tfds_builders
  manual = tmp_path / "manual"
  for i in (1, 2, 41):
    images.write_png(str(manual / "O-HAZE" / "GT" / f"{i:02d}_outdoor_GT.png"), _rgb(i))
    images.write_png(str(manual / "O-HAZE" / "hazy" / f"{i:02d}_outdoor_hazy.png"), 255 - _rgb(i))
  builder = tfds_builders.prepare("ohaze", str(manual), str(tmp_path / "data"))
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == {"train": 2, "test": 1}
  test = tfds.data_source("paired_images/ohaze", split="test", data_dir=str(tmp_path / "data"))
  assert test[0]["name"] == b"41_outdoor_hazy" and np.array_equal(test[0]["target"], _rgb(41))
  assert "O-HAZE/hazy" in builder.info.description and "41-45" in builder.info.description
  with pytest.raises(ValueError, match="no split found"):
    tfds_builders.prepare("lol", str(manual), str(tmp_path / "data2"))


def test_data_modules_do_not_import_tensorflow():
  code = ("import sys; import restorejax.data.pipeline, restorejax.data.records, restorejax.data.build; "
          "print('tensorflow' in sys.modules, 'tensorflow_datasets' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT}, check=True).stdout
  assert out.split() == ["False", "False"]
