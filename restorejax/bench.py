"""Benchmarks that print figures (never timed tests).

  python -m restorejax.bench step --config=configs/default.py [--baseline=configs/default.py:tiny]
  python -m restorejax.bench data --config=configs/default.py
  python -m restorejax.bench convs --config=configs/default.py

`step`: compile time, step time (median of timed steps after warm-up), images/s, images/s/device,
FLOPs per step (XLA cost analysis) and MFU when the device's peak is known. With `--baseline`, the same
figures for a second config measured in the same process, interleaved, and their ratios: the way to compare
on a shared, noisy machine (e.g. the cost of DiffLoss over a plain step).
`data`: triples/s of the host input pipeline and of the on-device degradation, and the config's train step
(images/s) measured alongside, with the ratios host / step for the first epoch and the second (see
restorejax/data/bench.py); `--nostep_alongside` leaves the step out (a config whose step is too big to
compile here).
`convs`: forward+backward time of Flax's 1x1 and depthwise `nn.Conv` against `restorejax.models.convs`
at the config's batch, patch and 2x width (why the networks use the latter).
Also installed as `restorejax-bench`. Record results in BENCHMARKS.md with the command, machine and date.
"""

import functools
import json
import os
import statistics
import sys
import time

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config to measure.", lock_config=True)
config_flags.DEFINE_config_file("baseline", None, "Optional second config, measured alongside.",
                                lock_config=True)
flags.DEFINE_integer("steps", 20, "Timed steps per round.")
flags.DEFINE_integer("rounds", 3, "Rounds; configs alternate between rounds.")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.")
flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
flags.DEFINE_bool("step_alongside", True, "data: also time the config's train step and print host / step.")


class StepBench:
  """One config's train step, compiled with the trainer's own shardings, on synthetic host batches."""

  def __init__(self, config):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from restorejax import optim, sharding, tasks, throughput, train  # pylint: disable=g-import-not-at-top
    from restorejax.data import pipeline  # pylint: disable=g-import-not-at-top
    self.jax = jax
    self.config = config
    mesh = sharding.mesh(config)
    batch_sh = sharding.batch_sharding(config, mesh)
    repl = sharding.replicated(mesh)
    task = tasks.build(config)
    tx, lr = optim.build(config.optim, config.total_steps)
    init_fn, _, state_sh = train.abstract_state(task, tx, config, mesh)
    aux_sh = sharding.param_shardings(task.aux, config, mesh)
    self.aux = sharding.replicated_to_global(task.aux, aux_sh)
    step = jax.jit(train.make_train_step(task, tx, lr, config),
                   in_shardings=(state_sh, batch_sh, aux_sh), out_shardings=(state_sh, repl),
                   donate_argnums=(0,))
    self.state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.PRNGKey(config.seed))
    rng = np.random.default_rng(0)
    host = pipeline.batch_spec(config, config.data.batch_size // jax.process_count())
    host = {k: rng.integers(0, 255, v.shape).astype(v.dtype) if v.dtype == np.uint8
            else np.arange(v.size, dtype=v.dtype).reshape(v.shape) for k, v in host.items()}
    self.batch = sharding.host_to_global(host, batch_sh)
    t0 = time.perf_counter()
    self.step = step.lower(self.state, self.batch, self.aux).compile()
    self.compile_s = time.perf_counter() - t0
    self.flops = throughput.step_flops(
        lambda t: train.make_train_step(t, tx, lr, config),
        lambda t: train.init_state(t, tx, jax.random.PRNGKey(0)),
        task, self.batch, self.aux) / jax.device_count()
    self.peak = throughput.peak_flops(override=config.peak_flops_per_device)
    self.times: list[float] = []

  def run(self, steps: int, record: bool = True) -> None:
    for _ in range(steps):
      t0 = time.perf_counter()
      self.state, metrics = self.step(self.state, self.batch, self.aux)
      self.jax.block_until_ready(metrics)
      if record:
        self.times.append(time.perf_counter() - t0)

  def figures(self) -> dict[str, float]:
    t = statistics.median(self.times)
    devices = self.jax.device_count()
    out = {
        "compile_s": self.compile_s,
        "step_ms": 1e3 * t,
        "step_ms_min": 1e3 * min(self.times),
        "images_per_s": self.config.data.batch_size / t,
        "images_per_s_per_device": self.config.data.batch_size / t / devices,
        "gflops_per_step_per_device": self.flops / 1e9,
        "tflops_per_s_per_device": self.flops / t / 1e12,
    }
    if self.peak:
      out["mfu"] = self.flops / t / self.peak
    return out


def bench_step() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  benches = {"config": StepBench(FLAGS.config)}
  if FLAGS.baseline is not None:
    benches["baseline"] = StepBench(FLAGS.baseline)
  for b in benches.values():
    b.run(FLAGS.warmup, record=False)
  for _ in range(FLAGS.rounds):  # interleaved, so that load changes hit both alike
    for b in benches.values():
      b.run(FLAGS.steps)
  results = {name: b.figures() for name, b in benches.items()}
  if "baseline" in results:
    c, b = results["config"], results["baseline"]
    results["ratio_config_over_baseline"] = {
        "step_ms": c["step_ms"] / b["step_ms"],
        "gflops_per_step_per_device": c["gflops_per_step_per_device"] / max(b["gflops_per_step_per_device"], 1e-12),
    }
  results["machine"] = {"devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
                        "processes": jax.process_count(), "cpus": os.cpu_count()}
  return results


def bench_convs() -> dict:
  """Forward+backward of nn.Conv's 1x1 and depthwise convolutions against restorejax.models.convs."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from restorejax.models import convs  # pylint: disable=g-import-not-at-top
  b, s, c = FLAGS.config.data.batch_size, FLAGS.config.data.patch_size, 2 * FLAGS.config.model.width
  x = jax.random.normal(jax.random.PRNGKey(0), (b, s, s, c))
  pairs = {
      "pointwise": (nn.Conv(2 * c, (1, 1)), convs.PointwiseConv(2 * c)),
      "depthwise": (nn.Conv(c, (3, 3), padding=1, feature_group_count=c), convs.DepthwiseConv(3)),
  }
  out = {"shape": [b, s, s, c]}
  for name, (ref, ours) in pairs.items():
    params = ref.init(jax.random.PRNGKey(1), x)
    times = {}
    for label, mod in (("nn_conv", ref), ("convs", ours)):
      grad = jax.jit(jax.grad(lambda p, x, m=mod: jnp.mean(m.apply(p, x) ** 2), argnums=(0, 1)))
      jax.block_until_ready(grad(params, x))
      runs = []
      for _ in range(FLAGS.rounds * FLAGS.steps):
        t0 = time.perf_counter()
        jax.block_until_ready(grad(params, x))
        runs.append(time.perf_counter() - t0)
      times[label] = 1e3 * statistics.median(runs)
    out[name] = {"nn_conv_fwd_bwd_ms": times["nn_conv"], "convs_fwd_bwd_ms": times["convs"],
                 "speedup": times["nn_conv"] / times["convs"]}
  return out


def bench_data() -> dict:
  from restorejax.data import bench as data_bench  # pylint: disable=g-import-not-at-top
  # Compiled first: compiling would load the cores while the host is timed.
  step = StepBench(FLAGS.config) if FLAGS.step_alongside else None
  return data_bench.run(FLAGS.config, steps=FLAGS.steps, warmup=FLAGS.warmup, step=step)


COMMANDS = {"step": bench_step, "data": bench_data, "convs": bench_convs}


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    print(f"usage: python -m restorejax.bench {{{'|'.join(COMMANDS)}}} --config=FILE[:variant] ...",
          file=sys.stderr)
    sys.exit(2)
  if FLAGS.config is None:
    print("restorejax.bench: error: --config is required", file=sys.stderr)
    sys.exit(2)
  results = COMMANDS[argv[1]]()
  text = json.dumps(results, indent=2, sort_keys=True)
  print(text)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      f.write(text + "\n")


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
