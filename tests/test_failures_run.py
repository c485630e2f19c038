"""Training runs that go wrong: each failure is one line naming the field, step or directory, and nothing
the user had (run directory, config.json, checkpoints, metrics) is lost to it.

Runs are in-process (no subprocess start-up) and share one six-step tiny run (`trained`); every run here
keeps its `total_steps`, so all compile the same step (persistent compilation cache).
"""

import errno
import json
import logging
import os
import shutil
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, read_metrics, tiny_config
from restorejax import checkpoint, cli, main, optim, reporting, sharding, tasks, train
from restorejax.data import pipeline, records

RUN = {"total_steps": 6, "checkpoint_every": 2, "log_every": 1, "eval_every": 6, "keep_checkpoints": 3}


def _config(**updates):
  return tiny_config(**{**RUN, **updates})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  summary = train.train_and_evaluate(_config(), workdir)
  return workdir, summary


def _copy(trained, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)
  return workdir


def _listing(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      path = os.path.join(root, f)
      with open(path, "rb") as fh:
        out[os.path.relpath(path, workdir)] = fh.read()
  return out


def _restore_args(config, workdir):
  """(manager, abstract state, data iterator) as train_and_evaluate builds them, without training."""
  task = tasks.build(config)
  tx, _ = optim.build(config.optim, config.total_steps)
  _, abstract, _ = train.abstract_state(task, tx, config, sharding.mesh(config))
  data_iter = iter(pipeline.train_dataset(config, process_index=0, process_count=1))
  return checkpoint.manager(workdir, config), abstract, data_iter


def _steps(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


# --- Config mistakes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("total_steps", -5, "config.total_steps=-5: must be a whole number >= 1"),
    ("total_steps", 0, "config.total_steps=0: must be a whole number >= 1"),
    ("data.batch_size", 0, "config.data.batch_size=0: must be a whole number >= 1"),
    ("checkpoint_every", 0, "config.checkpoint_every=0"),
    ("optim.ema_decay", 1.5, "config.optim.ema_decay=1.5: must be a finite number between 0.0 and 1.0"),
    ("losses.l1.weight", float("nan"), "config.losses.l1.weight=nan"),
])
def test_invalid_numbers_are_named_before_the_work_directory_exists(tmp_path, field, value, message):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match="^" + message.replace(".", r"\.").replace("(", r"\(")):
    train.train_and_evaluate(_config(**{field: value}), str(workdir))
  assert not workdir.exists()


def test_a_mesh_that_cannot_be_built_creates_no_work_directory(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=r"needs 8 devices, 1 are present"):
    train.train_and_evaluate(_config(mesh=(("data", 8),)), str(workdir))
  assert not workdir.exists()


@pytest.mark.parametrize("override, message", [
    ("--config.losses.nope.weight=1", "--config.losses.nope.weight: no such config field: config.losses has "
     "no 'nope' (config.losses has: charbonnier, diffloss, fft, l1, l2, "),
    ("--config.data.procedural.sizes=1", "--config.data.procedural.sizes: no such config field "
     "(config.data.procedural has: eval_image_size, "),
])
def test_an_unknown_override_names_the_missing_key_and_what_exists(monkeypatch, capsys, override, message):
  argv = ["restorejax-train", f"--config={ROOT}/configs/default.py:tiny", "--workdir=/nonexistent", override]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
  with pytest.raises(SystemExit) as e:
    main.parse_flags(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("restorejax: error: " + message), err


# --- Resuming -------------------------------------------------------------------------------------------

def test_a_resume_with_another_model_names_the_fields_and_changes_nothing(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  before = _listing(workdir)
  with pytest.raises(checkpoint.CheckpointError) as e:
    train.train_and_evaluate(_config(**{"model.width": 16}), workdir)
  message = str(e.value)
  assert "\n" not in message and "cannot resume" in message and "from checkpoint 6" in message
  assert "model.width (8 saved, 16 now)" in message, message
  assert _listing(workdir) == before  # config.json, metrics, events, checkpoints: as they were
  mgr, abstract, data_iter = _restore_args(_config(), workdir)
  assert int(checkpoint.restore(mgr, abstract, data_iter, config=_config()).step) == 6
  mgr.close()


def _corrupt(workdir, step, how):
  state = os.path.join(workdir, "checkpoints", str(step), "state")
  if how == "metadata":
    with open(os.path.join(state, "_METADATA"), "w") as f:
      f.write("garbage{")
  else:  # truncate every array file (the OCDBT data and index)
    for root, _, files in os.walk(state):
      for name in files:
        path = os.path.join(root, name)
        if os.sep + "d" + os.sep in path or name == "manifest.ocdbt":
          os.truncate(path, os.path.getsize(path) // 2)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # 'Event loop is closed'
def test_corrupt_latest_checkpoints_fall_back_to_the_newest_that_restores(trained, tmp_path, caplog):
  workdir = _copy(trained, tmp_path)
  _corrupt(workdir, 6, "metadata")
  _corrupt(workdir, 4, "truncate")
  mgr, abstract, data_iter = _restore_args(_config(), workdir)
  with caplog.at_level(logging.WARNING):
    state = checkpoint.restore(mgr, abstract, data_iter, config=_config())
  assert int(state.step) == 2
  warnings = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(warnings) == 1 and "Checkpoint 6 and 4" in warnings[0] and "resuming from step 2" in warnings[0]
  assert "\n" not in warnings[0]
  # Set aside, not deleted, and out of the manager's sight: the next resume does not meet them again.
  assert _steps(workdir) == [2] and mgr.all_steps() == [2]
  (aside,) = os.listdir(os.path.join(workdir, checkpoint.SET_ASIDE_DIR))
  assert sorted(os.listdir(os.path.join(workdir, checkpoint.SET_ASIDE_DIR, aside))) == ["4", "6"]
  mgr.close()


def test_when_no_checkpoint_restores_one_line_names_the_step_and_nothing_moves(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  for step in _steps(workdir):
    _corrupt(workdir, step, "metadata")
  mgr, abstract, data_iter = _restore_args(_config(), workdir)
  with pytest.raises(checkpoint.CheckpointError, match=r"^checkpoint 6 in .*checkpoints does not restore "
                     r"\(.*\), nor do the older ones \(4, 2\); nothing was changed: move .* away") as e:
    checkpoint.restore(mgr, abstract, data_iter, config=_config())
  assert "\n" not in str(e.value)
  assert _steps(workdir) == [2, 4, 6] and not os.path.exists(os.path.join(workdir, checkpoint.SET_ASIDE_DIR))
  with pytest.raises(checkpoint.CheckpointError, match=r"^checkpoint 4 .* does not restore .*choose another "
                     r"with --config.resume_step \(checkpoints there: 2, 4, 6\)"):
    checkpoint.restore(mgr, abstract, data_iter, config=_config(), resume_step=4)
  mgr.close()


def test_resume_from_a_chosen_step(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"^config.resume_step=5: no checkpoint 5 in .* \(checkpoints there: 2, 4, 6\)$"):
    train.train_and_evaluate(_config(resume_step=5), workdir)
  summary = train.train_and_evaluate(_config(resume_step=2), workdir)
  assert summary["resumed_from_step"] == 2 and summary["steps"] == 6
  assert summary["params_fingerprint"] == trained[1]["params_fingerprint"]  # the same steps redone exactly
  # The old steps 4 and 6 are kept, set aside; the new ones are where a resume finds them.
  assert _steps(workdir) == [2, 4, 6]
  (aside,) = os.listdir(os.path.join(workdir, checkpoint.SET_ASIDE_DIR))
  assert aside.endswith("after-2")
  assert sorted(os.listdir(os.path.join(workdir, checkpoint.SET_ASIDE_DIR, aside))) == ["4", "6"]
  # metrics.jsonl: the redone steps once each, in order.
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  loss_steps = [r["step"] for r in rows if "train/loss" in r]
  assert loss_steps == [1, 2, 3, 4, 5, 6]
  assert read_metrics(workdir, "train/loss") == read_metrics(trained[0], "train/loss")
  # The same command again (a requeued job) resumes from the branch's latest, not from step 2 again.
  mgr, abstract, data_iter = _restore_args(_config(resume_step=2), workdir)
  assert int(checkpoint.restore(mgr, abstract, data_iter, config=_config(resume_step=2),
                                resume_step=2).step) == 6
  assert len(os.listdir(os.path.join(workdir, checkpoint.SET_ASIDE_DIR))) == 1
  mgr.close()


def test_metrics_rows_after_a_step_are_dropped_and_a_torn_line_too(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in (1, 2, 3, 2)) + '{"step": 4, "x"')
  assert reporting.drop_metrics_after(str(tmp_path), 2) == 2
  assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 2]
  assert reporting.drop_metrics_after(str(tmp_path), 2) == 0


# --- Failures during the run ----------------------------------------------------------------------------

def test_non_finite_steps_stop_the_run_at_the_limit_and_say_there_is_no_checkpoint(tmp_path):
  config = _config(**{"data.degrade.noise_sigma": (float("nan"), float("nan")), "max_nonfinite_steps": 3,
                      "log_every": 50, "checkpoint_every": 50})
  with pytest.raises(train.TrainingError) as e:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  message = str(e.value)
  assert message.startswith("3 consecutive steps up to step 3 had a non-finite loss or gradient"), message
  assert "no checkpoint was saved" in message and "None" not in message


_ORBAX_ENOSPC = ("RESOURCE_EXHAUSTED: Error writing \"params.x/0.0\" in OCDBT database at local file \"{}\": "
                 "Failed writing: Failed to write 57087 bytes to file 13: No space left on device "
                 "[os_error_code='28']")


def test_a_full_disk_is_one_line_naming_the_work_directory_and_keeps_earlier_checkpoints(tmp_path,
                                                                                        monkeypatch):
  workdir = str(tmp_path / "run")
  real_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step >= 4:
      raise ValueError(_ORBAX_ENOSPC.format(self.directory))
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  with pytest.raises(checkpoint.CheckpointError) as e:
    train.train_and_evaluate(_config(), workdir)
  message = str(e.value)
  assert message.startswith(f"no space left on device in {workdir} "), message
  assert "intact (latest: step 2)" in message and "\n" not in message
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  mgr, abstract, data_iter = _restore_args(_config(), workdir)
  assert int(checkpoint.restore(mgr, abstract, data_iter, config=_config()).step) == 2
  mgr.close()


def test_a_full_disk_before_any_checkpoint_says_there_is_none(tmp_path):
  mgr = checkpoint.manager(str(tmp_path), _config())
  message = str(checkpoint._write_error(mgr, OSError(errno.ENOSPC, "No space left on device")))
  assert message == (f"no space left on device in {tmp_path} (writing a checkpoint to {tmp_path}/checkpoints); "
                     "no checkpoint had been saved yet; free space and run the same command to start again")
  mgr.close()


def test_a_full_disk_outside_checkpoints_is_one_line(monkeypatch, capsys):
  def full(config, workdir):
    raise OSError(errno.ENOSPC, "No space left on device", os.path.join(workdir, "metrics.jsonl"))
  main.define_flags()
  main.FLAGS.mark_as_parsed()
  monkeypatch.setattr(train, "train_and_evaluate", full)
  monkeypatch.setattr(main.FLAGS, "compilation_cache", "")
  monkeypatch.setattr(main.FLAGS, "workdir", "/w")
  monkeypatch.setattr(main.FLAGS, "config", tiny_config())  # main builds the mesh before training
  with pytest.raises(SystemExit) as e:
    main.main(["restorejax-train"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["restorejax: error: no space left on device in --workdir=/w (writing /w/metrics.jsonl); its "
                 "checkpoints are intact: free space and run the same command to resume"]


def test_orbax_thread_tracebacks_become_one_line_per_error():
  absl_logger, asyncio_logger = cli.logging.get_absl_logger(), logging.getLogger("asyncio")
  cli.quiet_libraries()
  keep, not_leftover = absl_logger.filters[-1], asyncio_logger.filters[-1]
  absl_logger.removeFilter(keep)
  asyncio_logger.removeFilter(not_leftover)
  try:  # an error raised inside orbax, as its unretrieved write tasks report at exit
    exec(compile("raise ValueError('RESOURCE_EXHAUSTED')", f"{os.sep}x{os.sep}orbax{os.sep}w.py", "exec"))
  except ValueError:
    leftover = logging.LogRecord("asyncio", logging.ERROR, "base_events.py", 1,
                                 "Task exception was never retrieved", None, sys.exc_info())
  assert not not_leftover(leftover)
  try:
    raise ValueError("RESOURCE_EXHAUSTED: disk full\n  details")
  except ValueError:
    exc_info = sys.exc_info()
  records = [logging.LogRecord("absl", logging.ERROR, f"{os.sep}site-packages{os.sep}orbax{os.sep}x.py", 1,
                               msg, None, exc_info) for msg in ("thread %s failed", "finalize failed")]
  records[0].args = ("array_type_handler",)
  assert keep(records[0]) and not keep(records[1])  # the same error: once
  assert records[0].exc_info is None
  assert records[0].getMessage() == "thread array_type_handler failed (RESOURCE_EXHAUSTED: disk full details)"
  assert not_leftover(records[1])  # an error from elsewhere stays


# --- Reporting ------------------------------------------------------------------------------------------

def test_the_parameter_overview_is_in_tensorboard(trained):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(trained[0], size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  tags = [t for t in acc.Tags()["tensors"] if "parameter_overview" in t]
  assert tags, acc.Tags()
  text = acc.Tensors(tags[0])[0].tensor_proto.string_val[0].decode()
  assert "decoders_0/beta" in text and "Total:" in text


# --- Configs --------------------------------------------------------------------------------------------

def test_triples_has_a_tiny_variant_that_needs_no_overrides(tmp_path):
  from configs import triples  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)

  def gen():
    for i in range(6):
      t = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
      yield (records.encode({"name": f"im{i}", "target": t, "degraded": 255 - t, "prior": t // 2}),
             {"task": "", "has_degraded": True, "has_prior": True, "size": t.shape[:2]})

  records.write(str(tmp_path / "data"), gen(), records_per_shard=3)
  for arg in (f"{tmp_path / 'data'},tiny", f"tiny,{tmp_path / 'data'}"):
    config = triples.get_config(arg)
    assert config.data.records.path == str(tmp_path / "data")
    assert config.model.width == 8 and config.total_steps == 60 and config.data.patch_size == 32
    train.check_config(config)
  batch = next(iter(pipeline.train_dataset(config, process_index=0, process_count=1)))
  assert batch["prior"].shape == (config.data.batch_size, 32, 32, 3)
  assert triples.get_config(str(tmp_path / "data")).model.width == 32  # the full config is unchanged
