"""Data throughput: triples/s of the host pipeline and of the on-device degradation and simulated prior.

`run(config, steps=..., warmup=...)` measures, for `config.data`:
- `host_triples_per_s`: the grain training stream (its own iterator, with the configured workers and
  threads), timed over `steps` batches after `warmup` batches; `host_triples_per_s_second_epoch` the
  same from the second epoch on, for training sets of up to 4096 examples (the procedural source draws
  each image once, so its first epoch is the slow one);
- `degrade_triples_per_s`: `jit(vmap(degrade fn))` on one batch of targets of the patch size (the
  config's `data.degrade` recipe), timed over `steps` calls with `block_until_ready`, after compiling;
- `prior_triples_per_s`: the same for `priors.simulate_prior` at the configured severity;
- with `step` (the CLI's `restorejax.bench.StepBench` of the same config): `step_images_per_s`, the
  compiled train step's consumption (median of `steps` timed steps before the host figures and `steps`
  after, so that both sides see the same load), and `host_over_step_first_epoch` /
  `host_over_step_second_epoch`, the host pipeline's rates over it.
The host must outrun the chips' training step (`train/images_per_s`) or it starves them.
"""

import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from restorejax.data import degrade, pipeline, priors


def _time_device(fn, args, steps: int) -> tuple[float, float]:
  """(seconds per call, compile seconds) of a jitted `fn(*args)`."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))   # first call: allocations, transfers
  t0 = time.perf_counter()
  for _ in range(steps):
    out = compiled(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps, compile_s


def _time_batches(it, steps: int) -> tuple[float, Optional[dict[str, Any]]]:
  t0, batch = time.perf_counter(), None
  for _ in range(steps):
    batch = next(it)
  return time.perf_counter() - t0, batch


def host_pipeline(config: ml_collections.ConfigDict, *, steps: int, warmup: int,
                  max_epoch: int = 4096) -> dict[str, Any]:
  """The first epoch's rate (after `warmup` batches) and, for a training set of at most `max_epoch`
  examples, the rate after one whole epoch: sources that keep what they read (the procedural one draws
  each image once) are faster from the second epoch on."""
  per_epoch = len(pipeline.source(config.data, "train")) // config.data.batch_size
  it = iter(pipeline.train_dataset(config))
  result = {}
  try:
    first_s, _ = _time_batches(it, warmup)
    elapsed, batch = _time_batches(it, steps)
    n = len(batch["index"])
    result.update(host_triples_per_s=steps * n / elapsed, host_batches_per_s=steps / elapsed,
                  host_warmup_s=first_s, batch_keys=sorted(batch))
    if per_epoch * config.data.batch_size <= max_epoch:
      _time_batches(it, max(0, per_epoch + 1 - warmup - steps))  # to the second epoch
      elapsed, _ = _time_batches(it, steps)
      result["host_triples_per_s_second_epoch"] = steps * n / elapsed
  finally:
    close = getattr(it, "close", None)
    if close:
      close()
  return result


def run(config: ml_collections.ConfigDict, *, steps: int = 20, warmup: int = 3, step=None) -> dict[str, Any]:
  """Measures the rates (see module doc) for `config`; returns them with the settings used. `step`: a
  compiled train step of `config` to measure alongside, with `run(steps, record=True)` and `figures()`."""
  b, p = config.data.batch_size, config.data.patch_size
  result = {"batch_size": b, "patch_size": p, "num_workers": config.data.num_workers,
            "read_threads": config.data.read_threads, "source": config.data.source,
            "device": jax.devices()[0].device_kind, "steps": steps}
  if step is not None:
    step.run(warmup, record=False)
    step.run(steps)
  result.update(host_pipeline(config, steps=steps, warmup=warmup))

  targets = jnp.asarray(np.random.default_rng(0).random((b, p, p, 3), np.float32))
  keys = jax.random.split(jax.random.PRNGKey(0), b)
  degrade_fn = degrade.from_config(config.data.degrade, config.data.get("scale", 1))
  per_call, compile_s = _time_device(jax.vmap(degrade_fn), (keys, targets), steps)
  result.update(degrade_triples_per_s=b / per_call, degrade_compile_s=compile_s)

  sim = config.data.get("simulated_prior", None)
  lo, hi = tuple(sim.get("severity", (0.2, 0.6))) if sim else (0.2, 0.6)
  severity = jnp.linspace(lo, hi, b)
  per_call, compile_s = _time_device(jax.vmap(priors.simulate_prior), (keys, targets, severity), steps)
  result.update(prior_triples_per_s=b / per_call, prior_compile_s=compile_s)

  if step is not None:
    step.run(steps)
    figures = step.figures()
    rate = figures["images_per_s"]
    result.update(step_images_per_s=rate, step_ms=figures["step_ms"], step_compile_s=figures["compile_s"],
                  host_over_step_first_epoch=result["host_triples_per_s"] / rate)
    if "host_triples_per_s_second_epoch" in result:
      result["host_over_step_second_epoch"] = result["host_triples_per_s_second_epoch"] / rate
  return result
