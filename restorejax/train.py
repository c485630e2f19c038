"""The trainer: one readable loop in labelled sections (run directory, mesh, data, model, state, step,
restore, loop, final evaluation).

`train_and_evaluate(config, workdir)` is the whole run; what is trained (network, loss, evaluation) comes
from the task (a `restorejax.tasks.Task`), batch preparation from `restorejax.data.batches`, everything
else is here. `make_train_step` is pure and testable alone; the loop's running state (throughput, metrics
written a step late, the non-finite count) is one `Meter`, and `due` says when a periodic thing is due.
Nothing here mentions a device kind: the mesh and the sharding rules come from the config, so the same run
works on one CPU, simulated devices, several processes, a GPU node or a TPU pod.
"""

import dataclasses
import functools
import os
import signal
import time
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import parameter_overview
from jax.experimental import multihost_utils

from restorejax import (checkpoint, compile_options, flat_update, optim, reporting, sharding, tasks,
                        throughput)
from restorejax.data import batches, pipeline
from restorejax.models import fusion


class TrainingError(RuntimeError):
  """A run that cannot go on (e.g. keeps producing non-finite losses); the message says why."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32: updates attempted so far (= batches consumed)
  params: Any
  opt_state: Any
  ema_params: Any            # used for evaluation
  rng: jax.Array             # uint32[2]: folded with the step for on-device randomness
  nonfinite: jax.Array       # int32: steps whose update was skipped for a non-finite loss or gradient
  nonfinite_run: jax.Array   # int32: consecutive such steps up to now


# ----------------------------------------------------------------------------------------------------
# Step functions.
# ----------------------------------------------------------------------------------------------------

def flat_update_applies(mesh: jax.sharding.Mesh) -> bool:
  """Whether the train step does the optimizer's work on flat vectors (`restorejax.flat_update`): on a
  mesh of one device only; larger meshes shard the parameters leaf by leaf."""
  return mesh.size == 1


def make_train_step(task: tasks.Task, tx: optax.GradientTransformation, lr_schedule: optax.Schedule,
                    config: ml_collections.ConfigDict, flat: bool = False) -> Callable:
  """`train_step(state, batch, aux) -> (state, metrics)`; a non-finite loss or gradient skips the update.

  `flat=True` (where `flat_update_applies`) does the optimizer's elementwise work on one vector per
  parameter-shaped tree (`restorejax.flat_update`): the same update (to rounding: the global norm sums in
  another order) and the same state, in a third less compile time on XLA:CPU.
  """
  prepare = batches.preparer(config, "train")
  ema_decay = config.optim.ema_decay

  def update(grads, params, opt_state, ema_params, step):
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    # EMA warm-up (as TF / timm): early on the average must not hold on to the random init.
    decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
    ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
    return params, opt_state, ema

  def train_step(state: TrainState, batch: dict[str, jax.Array], aux: dict[str, Any]):
    batch = prepare(batch)
    step_rng = jax.random.fold_in(state.rng, state.step)
    (loss, terms), grads = jax.value_and_grad(
        lambda p: task.loss(p, batch, step_rng, aux), has_aux=True)(state.params)
    old = (state.params, state.opt_state, state.ema_params)
    if flat and flat_update.usable(state.params):
      flat_grads, flat_old = (flat_update.to_flat(t, state.params) for t in (grads, old))
      grad_norm = optax.tree.norm(flat_grads)
      ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      # A conditional, not a select: XLA does not fuse across it, so the update stays a few fusions over
      # the vectors (with a select, XLA sinks each leaf's slice into the update: a fusion per leaf again).
      new = jax.lax.cond(ok, lambda: update(flat_grads, *flat_old, state.step), lambda: flat_old)
      params, opt_state, ema = (flat_update.from_flat(n, o, state.params) for n, o in zip(new, old))
    else:
      grad_norm = optax.tree.norm(grads)
      ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      new = update(grads, *old, state.step)
      keep = lambda n, o: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), n, o)
      params, opt_state, ema = (keep(n, o) for n, o in zip(new, old))
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        ema_params=ema,
        nonfinite=state.nonfinite + (~ok).astype(jnp.int32),
        nonfinite_run=jnp.where(ok, 0, state.nonfinite_run + 1),
    )
    metrics = {
        "train/loss": loss,
        **{f"train/loss/{name}": value for name, value in terms.items()},
        "train/grad_norm": grad_norm,
        "train/lr": lr_schedule(state.step // config.optim.accumulate_steps),
        "train/nonfinite_steps": new_state.nonfinite,
        "train/nonfinite_run": new_state.nonfinite_run,
    }
    return new_state, metrics

  return train_step


# ----------------------------------------------------------------------------------------------------
# Preemption: SIGTERM saves a checkpoint and ends the run cleanly.
# ----------------------------------------------------------------------------------------------------

class Preemption:
  """One process: our SIGTERM handler. Several: JAX's preemption sync point, so all save the same step."""

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# ----------------------------------------------------------------------------------------------------
# Loop state and reporting: nothing here waits on the step in flight.
# ----------------------------------------------------------------------------------------------------

def due(step: int, every: int, total: int) -> bool:
  """Whether a thing done every `every` steps (logging, evaluation, checkpoints) is due after `step`: at
  every multiple of `every`, and at the last step, `total`."""
  return step % every == 0 or step == total


@dataclasses.dataclass
class Meter:
  """The loop's running state: throughput, a log step's metrics, and the non-finite count.

  A log step's metrics are held (`hold`) and written one step later (`flush`, after the next step was
  dispatched) with the throughput of the steps since the previous write; time outside training steps
  (evaluations) is left out by `restart`. Each step's count of consecutive non-finite steps starts its
  copy to the host when the step is dispatched (`watch`) and is read one step later.
  """
  writer: Any
  batch_size: int              # global
  flops: float                 # per device and step
  peak: float                  # FLOP/s of a device; 0 when unknown
  devices: int
  pending: Optional[tuple[int, Any]] = None        # (log step, its metrics on the device)
  watched: Optional[tuple[int, jax.Array]] = None  # (step, its count of consecutive non-finite steps)
  interval_start: float = 0.0
  interval_steps: int = 0
  train_time: float = 0.0
  trained_steps: int = 0

  def rates(self, steps: int, seconds: float) -> dict[str, float]:
    """Images/s, per device too, for `steps` steps in `seconds`."""
    ips = steps * self.batch_size / max(seconds, 1e-9)
    return {"images_per_s": ips, "images_per_s_per_device": ips / self.devices}

  def begin_step(self) -> None:
    if self.interval_steps == 0:
      self.interval_start = time.time()

  def watch(self, step: int, metrics: dict[str, jax.Array]) -> Optional[tuple[int, int]]:
    """Counts `step` (just dispatched) and starts the copy of its non-finite count; returns the previous
    step's `(step, count)`, whose copy is done or nearly (None at a run's first step)."""
    self.interval_steps += 1
    previous, self.watched = self.watched, (step, metrics["train/nonfinite_run"])
    self.watched[1].copy_to_host_async()
    return None if previous is None else (previous[0], int(sharding.to_host(previous[1])))

  def latest(self) -> tuple[int, int]:
    """The last dispatched step's `(step, non-finite count)`, waiting for it."""
    step, run = self.watched
    return step, int(sharding.to_host(run))

  def hold(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self.pending = (step, metrics)

  def flush(self) -> None:
    """Writes the held metrics, with throughput, MFU and the images/s of the interval."""
    if self.pending is None:
      return
    step, metrics = self.pending
    self.pending = None
    metrics = {k: float(v) for k, v in sharding.to_host(metrics).items()}
    elapsed = time.time() - self.interval_start
    self.train_time += elapsed
    self.trained_steps += self.interval_steps
    metrics.update({f"train/{k}": v for k, v in self.rates(self.interval_steps, elapsed).items()})
    flop_rate = self.flops * self.interval_steps / max(elapsed, 1e-9)
    metrics["train/tflops_per_s_per_device"] = flop_rate / 1e12
    if self.peak:
      metrics["train/mfu"] = flop_rate / self.peak
    self.restart()
    self.writer.write_scalars(step, metrics)

  def restart(self) -> None:
    """A new interval: what ran since the last write (e.g. an evaluation) is not training time."""
    self.interval_start, self.interval_steps = time.time(), 0

  def summary(self) -> dict[str, float]:
    """Images/s over all the written intervals (the summary's throughput)."""
    return self.rates(self.trained_steps, self.train_time)


def _nonfinite_stop(config: ml_collections.ConfigDict, workdir: str, mgr: Any, step: int,
                    run: int) -> TrainingError:
  """The error that ends a run whose last `run` steps up to `step` were all non-finite."""
  checkpoint.wait(mgr)
  latest = mgr.latest_step()
  last = (f"the last checkpoint, step {latest} in {os.path.join(workdir, 'checkpoints')}, is intact: "
          "fix the cause and run the same command to resume from it" if latest is not None else
          f"no checkpoint was saved in {workdir}, so there is nothing to resume: fix the cause and start "
          "again")
  return TrainingError(
      f"{run} consecutive steps up to step {step} had a non-finite loss or gradient "
      f"(config.max_nonfinite_steps={config.max_nonfinite_steps}); stopping; {last}")


# ----------------------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------------------

# (dotted field, minimum, maximum, whole number): fields that have no sensible value outside the range.
_RANGES = (
    ("total_steps", 1, None, True), ("log_every", 1, None, True), ("eval_every", 1, None, True),
    ("checkpoint_every", 1, None, True), ("keep_checkpoints", 1, None, True),
    ("max_nonfinite_steps", 1, None, True), ("resume_step", -1, None, True),
    ("data.batch_size", 1, None, True), ("data.patch_size", 1, None, True),
    ("data.num_workers", 0, None, True), ("data.read_threads", 1, None, True),
    ("eval.batch_size", 1, None, True), ("optim.lr", 0.0, None, False),
    ("optim.min_lr", 0.0, None, False), ("optim.warmup_steps", 0, None, True),
    ("optim.accumulate_steps", 1, None, True), ("optim.ema_decay", 0.0, 1.0, False),
    ("optim.grad_clip_norm", 0.0, None, False), ("optim.weight_decay", 0.0, None, False),
)


def check_config(config: ml_collections.ConfigDict) -> None:
  """A ValueError naming the first field whose value cannot work (e.g. `total_steps=0`, a NaN loss
  weight); fields a config does not have are skipped."""
  def lookup(path):
    node = config
    for key in path.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        return None
      node = node[key]
    return node
  fields = list(_RANGES)
  if isinstance(config.get("losses"), ml_collections.ConfigDict):
    fields += [(f"losses.{name}.weight", 0.0, None, False) for name in config.losses
               if isinstance(config.losses[name], ml_collections.ConfigDict)]
  for path, low, high, whole in fields:
    value = lookup(path)
    if value is None:
      continue
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = number and np.isfinite(value) and value >= low and (high is None or value <= high)
    if not ok or (whole and not float(value).is_integer()):
      want = "a whole number" if whole else "a finite number"
      bounds = f">= {low}" if high is None else f"between {low} and {high}"
      raise ValueError(f"config.{path}={value!r}: must be {want} {bounds}")


def check_workdir(workdir: str) -> None:
  if "://" in workdir:  # os.makedirs would quietly make a local directory named 'gs:'
    raise ValueError(f"--workdir={workdir}: URL work directories are not supported yet (metrics and "
                     "summaries are written with local file I/O); use a path that every process sees, "
                     "e.g. a bucket mounted with gcsfuse or an NFS/Filestore share")
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"--workdir={workdir} is not writable: {e.strerror or e}") from None


def init_state(task: tasks.Task, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  init_rng, state_rng = jax.random.split(rng)
  params = task.init_params(init_rng)
  return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params), ema_params=params,
                    rng=state_rng, nonfinite=jnp.int32(0), nonfinite_run=jnp.int32(0))


def abstract_state(task: tasks.Task, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                   mesh: jax.sharding.Mesh) -> tuple[Callable, TrainState, TrainState]:
  """Shapes first: `(init_fn, abstract state carrying shardings, state shardings)` for `mesh`.

  Parameters (and EMA, and the optimizer's parameter-shaped moments) follow the config's sharding
  rules; scalars are replicated.
  """
  repl = sharding.replicated(mesh)
  init_fn = functools.partial(init_state, task, tx)
  shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(config.seed))
  param_sh = sharding.param_shardings(shapes.params, config, mesh)
  state_sh = TrainState(
      step=repl, params=param_sh,
      opt_state=optax.tree_map_params(tx, lambda _, s: s, shapes.opt_state, param_sh,
                                      transform_non_params=lambda _: repl),
      ema_params=param_sh, rng=repl, nonfinite=repl, nonfinite_run=repl)
  abstract = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                    shapes, state_sh)
  return init_fn, abstract, state_sh


def _warm_start(state: TrainState, path: str, param_sh: Any, fusion_mode: str = "none") -> TrainState:
  """Parameters from another run (its EMA) or a converted checkpoint; optimizer, step and RNG as
  initialised, and the EMA a copy of the parameters of its own (the step donates both trees: one buffer
  in both would be donated twice). A checkpoint of the backbone alone (trained or converted without a
  prior) also starts a network with prior fusion `fusion_mode` (see `fusion.from_backbone`)."""
  loaded = checkpoint.load_params(path)
  if fusion_mode != "none":
    loaded = fusion.from_backbone(loaded, sharding.to_host(state.params), fusion_mode)
  loaded = checkpoint.fit(loaded, state.params, f"config.init_from={path}")
  copy = lambda: sharding.replicated_to_global(jax.tree_util.tree_map(np.array, loaded), param_sh)
  return state.replace(params=copy(), ema_params=copy())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint, or `config.resume_step`) and
  returns the summary.

  Nothing in `workdir` changes before the config is checked, the mesh built and the checkpoint restored:
  a run that cannot start leaves the run directory as it was (or does not create it).
  """
  check_config(config)
  start_time = time.time()

  # --- Mesh -------------------------------------------------------------------------------------------
  mesh = sharding.mesh(config)
  batch_sh = sharding.batch_sharding(config, mesh)
  repl = sharding.replicated(mesh)
  shards = int(np.prod([mesh.shape[a] for a in sharding.batch_axes(config, mesh)]))
  for name, bs in (("config.data.batch_size", config.data.batch_size),
                   ("config.eval.batch_size", config.eval.batch_size)):
    if bs % shards:
      raise ValueError(f"{name}={bs} is not divisible by the {shards} data-parallel shards of the mesh")
  logging.info("Mesh %s over %d devices in %d processes.", dict(mesh.shape), jax.device_count(),
               jax.process_count())

  # --- Task (network, loss, evaluation) and optimizer ------------------------------------------------
  task: tasks.Task = tasks.build(config)
  tx, lr_schedule = optim.build(config.optim, config.total_steps)

  # --- Data -----------------------------------------------------------------------------------------
  train_ds = pipeline.train_dataset(config, process_index=jax.process_index(),
                                    process_count=jax.process_count())
  data_iter = iter(train_ds)
  evaluator = task.evaluator(mesh, batch_sh)

  # --- State: shapes first, then params born sharded ------------------------------------------------
  init_fn, abstract, state_sh = abstract_state(task, tx, config, mesh)

  # --- Run directory, restore or initialise, writers --------------------------------------------------
  check_workdir(workdir)
  mgr = checkpoint.manager(workdir, config)
  try:
    state = checkpoint.restore(mgr, abstract, data_iter, config=config,
                               resume_step=config.get("resume_step", -1))
  except Exception:
    mgr.close()  # orbax's pending reads otherwise print 'Event loop is closed' tracebacks at exit
    raise
  if jax.process_index() == 0:  # only now: a failed resume leaves the saved config as it was
    checkpoint.write_config(workdir, config)
    if state is not None:  # steps redone after the checkpoint appear once in metrics.jsonl
      reporting.drop_metrics_after(workdir, int(state.step))
  writer = reporting.create_writer(workdir)
  if state is not None:
    logging.info("Resumed from %s at step %d.", workdir, int(state.step))
  else:
    state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.PRNGKey(config.seed))
    if config.init_from:
      state = _warm_start(state, config.init_from, state_sh.params, config.model.get("fusion", "none"))
      logging.info("Parameters warm-started from %s.", config.init_from)
  first_step = int(state.step)
  if first_step == 0:
    overview = parameter_overview.get_parameter_overview(
        jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.params),
        include_stats=False)
    # In the log and in TensorBoard (whose text plugin reads markdown: indented lines keep the columns).
    writer.write_texts(0, {"parameter_overview": "\n".join("    " + line for line in overview.splitlines())})

  # --- Compile the step (once, with explicit shardings and the state donated) -----------------------
  aux_sh = sharding.param_shardings(task.aux, config, mesh)
  aux = sharding.replicated_to_global(task.aux, aux_sh)
  flat = flat_update_applies(mesh)
  train_step = jax.jit(make_train_step(task, tx, lr_schedule, config, flat=flat),
                       in_shardings=(state_sh, batch_sh, aux_sh), out_shardings=(state_sh, repl),
                       donate_argnums=(0,))
  host_spec = pipeline.batch_spec(config, config.data.batch_size // jax.process_count())
  batch_spec = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct((config.data.batch_size,) + x.shape[1:], x.dtype, sharding=batch_sh),
      host_spec)
  t0 = time.time()
  lowered = train_step.lower(abstract, batch_spec, aux)
  compiled = lowered.compile(compiler_options=compile_options.train_step())
  compile_s = time.time() - t0
  flops = throughput.flops_per_device(  # from `lowered`; a network that scans is counted unrolled
      lowered, task, lambda t: make_train_step(t, tx, lr_schedule, config, flat=flat),
      lambda t: init_state(t, tx, jax.random.PRNGKey(0)), batch_spec, aux)
  logging.info("Train step compiled in %.1fs; %.3g FLOPs per device per step.", compile_s, flops)
  writer.write_scalars(first_step, {"train/compile_s": compile_s})

  # --- Loop -----------------------------------------------------------------------------------------
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top  (TensorFlow: see reporting.py)
  report = periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer,
                                           every_steps=config.log_every)
  meter = Meter(writer, config.data.batch_size, flops, devices=jax.device_count(),
                peak=throughput.peak_flops(override=config.peak_flops_per_device))
  preemption = Preemption()
  eval_results: dict[str, float] = {}
  eval_images: dict[str, np.ndarray] = {}
  step = first_step

  def stop_if_nonfinite(checked: Optional[tuple[int, int]]):
    if checked is not None and checked[1] >= config.max_nonfinite_steps:
      meter.flush()
      raise _nonfinite_stop(config, workdir, mgr, *checked)

  try:
    while step < config.total_steps:
      if preemption.reached(step):
        meter.flush()
        checkpoint.save(mgr, step, state, data_iter)
        checkpoint.wait(mgr)
        logging.warning("Preempted (SIGTERM): saved step %d in %s; rerun to resume.", step, workdir)
        return {"preempted": True, "steps": step}
      batch = sharding.host_to_global(next(data_iter), batch_sh)
      meter.begin_step()
      state, metrics = compiled(state, batch, aux)
      step += 1
      # The previous step's count: its copy started a step ago, so the host never waits on this step.
      stop_if_nonfinite(meter.watch(step, metrics))
      meter.flush()
      if due(step, config.log_every, config.total_steps):
        meter.hold(step, metrics)
      report(step)
      if due(step, config.eval_every, config.total_steps):
        meter.flush()
        eval_start = time.time()
        eval_results, eval_images = evaluator(state.ema_params)
        writer.write_scalars(step, eval_results)
        writer.write_images(step, eval_images)
        logging.info("Step %d: %s (%.1fs)", step, eval_results, time.time() - eval_start)
        meter.restart()
      if due(step, config.checkpoint_every, config.total_steps):
        meter.flush()  # metrics.jsonl holds every row up to a checkpoint's step (see drop_metrics_after)
        checkpoint.save(mgr, step, state, data_iter)
      if step == config.total_steps:  # the last step's own count: no later step will read it
        stop_if_nonfinite(meter.latest())
    meter.flush()
  finally:
    preemption.close()
    writer.flush()
    checkpoint.wait(mgr)

  # --- Final evaluation and summary -----------------------------------------------------------------
  if not eval_results:
    eval_results, eval_images = evaluator(state.ema_params)
  reporting.write_image_files(workdir, eval_images)  # e.g. samples.png of a diffusion prior
  host_params = sharding.to_host(state.params)
  summary = {
      **eval_results,
      "steps": int(step),
      "resumed_from_step": first_step,
      "wall_time_s": time.time() - start_time,
      "compile_time_s": compile_s,
      **meter.summary(),
      "nonfinite_steps": int(sharding.to_host(state.nonfinite)),
      "num_params": int(sum(x.size for x in jax.tree_util.tree_leaves(host_params))),
      "params_fingerprint": reporting.fingerprint(host_params),
      "ema_params_fingerprint": reporting.fingerprint(sharding.to_host(state.ema_params)),
      "devices": jax.device_count(),
      "processes": jax.process_count(),
  }
  reporting.write_summary(workdir, summary)
  writer.close()
  data_close = getattr(data_iter, "close", None)
  if data_close:
    data_close()
  return summary
