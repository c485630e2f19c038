"""The grain training stream: deterministic crops, per-process slices, exact resume (with workers too)."""

import numpy as np
import pytest

from restorejax.data import pipeline
from conftest import tiny_config


def _batches(it, n):
  return [next(it) for _ in range(n)]


def test_batches_have_the_documented_layout():
  config = tiny_config()
  b = next(iter(pipeline.train_dataset(config)))
  p = config.data.patch_size
  assert b["target"].shape == (config.data.batch_size, p, p, 3) and b["target"].dtype == np.uint8
  assert list(b["index"]) == list(range(config.data.batch_size))


def test_stream_is_deterministic_and_resumes_exactly():
  config = tiny_config()
  ds = pipeline.train_dataset(config)
  it = iter(ds)
  _batches(it, 3)
  state = it.get_state()
  expected = _batches(it, 3)
  it2 = iter(pipeline.train_dataset(config))
  it2.set_state(state)
  for a, b in zip(expected, _batches(it2, 3)):
    assert np.array_equal(a["target"], b["target"]) and np.array_equal(a["index"], b["index"])


def test_epochs_are_reshuffled_and_cover_every_image():
  config = tiny_config(**{"data.procedural.num_images": 16, "data.batch_size": 8})
  it = iter(pipeline.train_dataset(config))
  src = pipeline.source(config.data, "train")
  firsts = []
  for _ in range(2):  # two epochs
    seen = set()
    for b in _batches(it, 2):
      for crop in b["target"]:
        # identify the source image each crop came from by exhaustive match on the flipped/rotated crop
        seen.add(next(i for i in range(len(src)) if _contains(src[i]["target"], crop)))
    firsts.append(seen)
  assert firsts[0] == set(range(16)) and firsts[1] == set(range(16))


def _contains(image, crop):
  p = crop.shape[0]
  variants = [np.rot90(c, -k) for c in (crop,) for k in range(4)]
  variants += [v[:, ::-1] for v in variants]
  for v in variants:
    for y in range(image.shape[0] - p + 1):
      for x in range(image.shape[1] - p + 1):
        if np.array_equal(image[y:y + p, x:x + p], v):
          return True
  return False


def test_process_slices_partition_the_global_batch():
  config = tiny_config()
  whole = next(iter(pipeline.train_dataset(config)))
  parts = [next(iter(pipeline.train_dataset(config, process_index=i, process_count=2))) for i in range(2)]
  by_index = {int(i): t for i, t in zip(whole["index"], whole["target"])}
  got = {int(i): t for part in parts for i, t in zip(part["index"], part["target"])}
  assert sorted(got) == sorted(by_index)
  for i in got:  # the same example is cropped the same whichever process reads it
    assert np.array_equal(got[i], by_index[i])


def test_batch_size_must_divide_over_processes():
  with pytest.raises(ValueError, match="batch_size"):
    pipeline.train_dataset(tiny_config(), process_index=0, process_count=3)


def test_worker_processes_give_the_same_stream_and_resume_exactly():
  config = tiny_config(**{"data.num_workers": 2})
  plain = _batches(iter(pipeline.train_dataset(tiny_config())), 5)
  it = iter(pipeline.train_dataset(config))
  got = _batches(it, 2)
  state = it.get_state()
  it.close()
  it2 = iter(pipeline.train_dataset(config))
  it2.set_state(state)
  got += _batches(it2, 3)
  it2.close()
  for a, b in zip(plain, got):
    assert np.array_equal(a["index"], b["index"]) and np.array_equal(a["target"], b["target"])


def test_patch_larger_than_image_is_a_clear_error():
  config = tiny_config(**{"data.patch_size": 64})
  with pytest.raises(ValueError, match="smaller than config.data.patch_size=64"):
    next(iter(pipeline.train_dataset(config)))


def test_unknown_source_is_named():
  with pytest.raises(ValueError, match="config.data.source: unknown source 'nope'"):
    pipeline.train_dataset(tiny_config(**{"data.source": "nope"}))


def test_batch_spec_matches_real_batches():
  config = tiny_config()
  b = next(iter(pipeline.train_dataset(config)))
  spec = pipeline.batch_spec(config, config.data.batch_size)
  assert {k: (v.shape, v.dtype) for k, v in spec.items()} == {k: (v.shape, v.dtype) for k, v in b.items()}


# ----------------------------------------------------------------------------------------------------
# Records, tfds-free: triple datasets, priors, mixtures, evaluation sets.
# ----------------------------------------------------------------------------------------------------

def _write_records(path, n, *, prior=True, task="dehaze", lo=0, hi=256, size=(40, 44), seed=0):
  """n examples with degraded = 255 - target and prior = target // 2, so alignment can be checked."""
  from restorejax.data import records
  rng = np.random.default_rng(seed)

  def gen():
    for i in range(n):
      t = rng.integers(lo, hi, size + (3,), dtype=np.uint8)
      ex = {"name": f"im{i:02d}", "target": t, "degraded": 255 - t, "task": task}
      if prior:
        ex["prior"] = t // 2
      yield records.encode(ex), {"task": task, "has_degraded": True, "has_prior": prior, "size": t.shape[:2]}

  records.write(str(path), gen(), records_per_shard=5)
  return str(path)


@pytest.fixture(scope="module")
def triples(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline_records")
  return {"prior": _write_records(root / "prior", 12),
          "noprior": _write_records(root / "noprior", 12, prior=False, seed=1),
          "dark": _write_records(root / "dark", 10, lo=0, hi=100, task="a", seed=2),
          "bright": _write_records(root / "bright", 10, lo=150, hi=256, task="b", seed=3),
          "mixed_sizes": _write_records(root / "mixed_sizes", 1, size=(36, 40), seed=4)}


def _records_config(path, **updates):
  return tiny_config(**{"data.source": "records", "data.records.path": path, "data.records.eval_path": path,
                        **updates})


def _spec_of(b):
  return {k: (v.shape, v.dtype) for k, v in b.items()}


def test_records_batches_keep_the_three_images_aligned(triples):
  config = _records_config(triples["prior"])
  b = next(iter(pipeline.train_dataset(config)))
  assert set(b) == {"degraded", "prior", "target", "index", "task"}
  assert b["task"].dtype == np.int32 and (b["task"] == 0).all()
  # one crop, flip and rotation for all three images
  assert np.array_equal(b["degraded"], 255 - b["target"]) and np.array_equal(b["prior"], b["target"] // 2)
  assert _spec_of(pipeline.batch_spec(config, config.data.batch_size)) == _spec_of(b)


def test_use_prior_switch_and_simulated_priors(triples):
  config = _records_config(triples["prior"], **{"data.use_prior": False})
  b = next(iter(pipeline.train_dataset(config)))
  assert "prior" not in b and "prior_severity" not in b
  assert _spec_of(pipeline.batch_spec(config, config.data.batch_size)) == _spec_of(b)
  sim = {"data.simulated_prior.enabled": True, "data.simulated_prior.severity": (0.3, 0.5)}
  config = _records_config(triples["noprior"], **sim)
  b, again = (next(iter(pipeline.train_dataset(config))) for _ in range(2))
  assert "prior" not in b and b["prior_severity"].dtype == np.float32
  assert ((b["prior_severity"] >= 0.3) & (b["prior_severity"] <= 0.5)).all()
  assert len(set(b["prior_severity"].tolist())) == len(b["index"])   # drawn per example
  assert np.array_equal(b["prior_severity"], again["prior_severity"])  # from (seed, index)
  assert _spec_of(pipeline.batch_spec(config, config.data.batch_size)) == _spec_of(b)
  # a source with real priors ignores the simulated ones
  config = _records_config(triples["prior"], **sim)
  assert "prior_severity" not in next(iter(pipeline.train_dataset(config)))


def test_records_resume_mid_epoch_with_worker_processes(triples):
  """12 examples, batches of 8: the stop (after 2 batches) is mid-epoch and the restart crosses epochs."""
  plain = _batches(iter(pipeline.train_dataset(_records_config(triples["prior"]))), 6)
  config = _records_config(triples["prior"], **{"data.num_workers": 2})
  it = iter(pipeline.train_dataset(config))
  got = _batches(it, 2)
  state = it.get_state()
  it.close()
  it2 = iter(pipeline.train_dataset(config))
  it2.set_state(state)
  got += _batches(it2, 4)
  it2.close()
  assert np.array_equal(np.concatenate([b["index"] for b in got]), np.arange(48))  # unique across epochs
  for a, b in zip(plain, got):
    assert set(a) == set(b)
    for k in a:
      assert np.array_equal(a[k], b[k]), k


def test_mixture_mixes_by_weight_with_component_tasks(triples):
  mixture = {"dark": {"source": "records", "records": {"path": triples["dark"], "eval_path": triples["dark"]},
                      "weight": 3.0, "task": 5},
             "bright": {"source": "records", "records": {"path": triples["bright"]}, "weight": 1.0, "task": 7}}
  config = tiny_config(**{"data.source": "mixture", "data.mixture": mixture, "data.batch_size": 8})
  batches = _batches(iter(pipeline.train_dataset(config)), 8)
  tasks = np.concatenate([b["task"] for b in batches])
  dark = np.array([t.max() < 100 for b in batches for t in b["target"]])
  assert np.array_equal(tasks == 5, dark) and set(tasks.tolist()) == {5, 7}
  assert abs(dark.mean() - 0.75) <= 1 / 16
  assert _spec_of(pipeline.batch_spec(config, 8)) == _spec_of(batches[0])
  # evaluation: only components with a held-out set, with their task
  ev = pipeline.eval_examples(config)
  assert len(ev["index"]) == 10 and (ev["task"] == 5).all() and ev["target"].max() < 100


def test_eval_examples_from_records(triples):
  config = _records_config(triples["prior"])
  ev = pipeline.eval_examples(config)
  assert ev["target"].shape == (12, 40, 44, 3) and np.array_equal(ev["degraded"], 255 - ev["target"])
  assert np.array_equal(ev["index"], np.arange(12)) and "prior" in ev
  both = f"{triples['prior']},{triples['mixed_sizes']}"
  with pytest.raises(ValueError, match="differ in size; set config.data.eval_crop"):
    pipeline.eval_examples(_records_config(both))
  cropped = pipeline.eval_examples(_records_config(both, **{"data.eval_crop": 32, "data.eval_max_images": 13}))
  assert cropped["target"].shape == (13, 32, 32, 3)
  assert np.array_equal(cropped["target"][0], ev["target"][0, 4:36, 6:38])


def test_records_errors_name_the_config_key(triples, tmp_path):
  with pytest.raises(ValueError, match="config.data.records.path: empty"):
    pipeline.train_dataset(tiny_config(**{"data.source": "records"}))
  with pytest.raises(ValueError, match=f"config.data.records.path: {tmp_path}: not a triple dataset"):
    pipeline.train_dataset(_records_config(str(tmp_path)))
  with pytest.raises(ValueError, match="patch_size=64 is larger than the smallest image"):
    pipeline.train_dataset(_records_config(triples["prior"], **{"data.patch_size": 64}))


def test_prepare_batch_simulates_priors_keyed_by_index(triples):
  import jax
  from restorejax.data import batches, degrade
  config = _records_config(triples["noprior"], **{"data.simulated_prior.enabled": True, "data.batch_size": 4})
  b = next(iter(pipeline.train_dataset(config)))
  b["prior_severity"] = np.array([0.0, 0.6, 0.6, 0.6], np.float32)
  prep = jax.jit(lambda batch: batches.prepare_batch(batch, degrade.from_config(config.data.degrade),
                                                   jax.random.PRNGKey(0)))
  out = prep(b)
  assert "prior_severity" not in out and out["prior"].shape == b["target"].shape
  target = b["target"] / 255.0
  assert np.allclose(out["prior"][0], target[0], atol=1e-6)       # severity 0 is the identity
  assert np.abs(np.asarray(out["prior"][1:]) - target[1:]).mean() > 0.02
  assert np.allclose(out["degraded"], b["degraded"] / 255.0, atol=1e-6)  # given, not synthesised
  swapped = {k: v[::-1] for k, v in b.items()}                      # keyed by index, not position
  assert np.allclose(prep(swapped)["prior"][::-1], out["prior"])
