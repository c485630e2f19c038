"""The trainer's loop bookkeeping alone (no step compiled): when periodic things are due, and the Meter
that writes a log step's metrics one step late with its throughput and reads non-finite counts a step late."""

import types

import jax.numpy as jnp
import pytest

from restorejax import train


class _Writer:
  def __init__(self):
    self.rows = []

  def write_scalars(self, step, scalars):
    self.rows.append((step, scalars))


def test_due_every_n_steps_and_at_the_last():
  assert [s for s in range(1, 11) if train.due(s, 4, 10)] == [4, 8, 10]
  assert [s for s in range(1, 6) if train.due(s, 1, 5)] == [1, 2, 3, 4, 5]
  assert [s for s in range(1, 4) if train.due(s, 50, 3)] == [3]


def _metrics(run):
  return {"train/loss": jnp.float32(0.5), "train/nonfinite_run": jnp.int32(run)}


def test_meter_reads_the_previous_steps_nonfinite_count_and_writes_held_metrics_with_throughput(monkeypatch):
  clock = iter([0.0, 2.0, 10.0])  # interval start, flush, restart after the flush
  monkeypatch.setattr(train, "time", types.SimpleNamespace(time=lambda: next(clock)))  # the trainer's only
  writer = _Writer()
  meter = train.Meter(writer, batch_size=8, flops=1e12, peak=4e12, devices=2)
  meter.begin_step()
  assert meter.watch(1, _metrics(0)) is None                 # the first step: nothing before it
  meter.hold(1, _metrics(0))
  meter.begin_step()                                         # within the interval: start kept
  assert meter.watch(2, _metrics(1)) == (1, 0)               # step 1's count, read at step 2
  assert meter.latest() == (2, 1)
  meter.flush()
  ((step, row),) = writer.rows
  assert step == 1 and row["train/loss"] == 0.5
  # 2 steps of 8 images in 2 s, on 2 devices doing 1e12 FLOPs each per step, 4e12 FLOP/s peak.
  assert row["train/images_per_s"] == pytest.approx(8.0)
  assert row["train/images_per_s_per_device"] == pytest.approx(4.0)
  assert row["train/tflops_per_s_per_device"] == pytest.approx(1.0)
  assert row["train/mfu"] == pytest.approx(0.25)
  assert meter.summary() == {"images_per_s": pytest.approx(8.0),
                             "images_per_s_per_device": pytest.approx(4.0)}
  meter.flush()                                              # nothing held: nothing written
  assert len(writer.rows) == 1 and meter.interval_steps == 0


def test_meter_without_a_known_peak_reports_no_mfu(monkeypatch):
  monkeypatch.setattr(train, "time", types.SimpleNamespace(time=lambda: 1.0))
  writer = _Writer()
  meter = train.Meter(writer, batch_size=4, flops=0.0, peak=0.0, devices=1)
  meter.begin_step()
  meter.watch(1, _metrics(0))
  meter.hold(1, _metrics(0))
  meter.flush()
  assert "train/mfu" not in writer.rows[0][1]
