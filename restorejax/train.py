"""The trainer: one readable loop in labelled sections (run directory, mesh, data, model, state, step,
restore, loop, final evaluation).

`train_and_evaluate(config, workdir)` is the whole run; what is trained (network, loss, evaluation) comes
from the task (a `restorejax.tasks.Task`), batch preparation from `restorejax.data.batches`, everything else
is here. `make_train_step` is pure and testable alone.
Nothing here mentions a device kind: the mesh and the sharding rules come from the config, so the same run
works on one CPU, simulated devices, several processes, a GPU node or a TPU pod.
"""

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

from restorejax import checkpoint, optim, reporting, sharding, tasks, throughput
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

def make_train_step(task: tasks.Task, tx: optax.GradientTransformation, lr_schedule: optax.Schedule,
                    config: ml_collections.ConfigDict) -> Callable:
  """`train_step(state, batch, aux) -> (state, metrics)`; a non-finite loss or gradient skips the update."""
  prepare = batches.preparer(config, "train")
  ema_decay = config.optim.ema_decay

  def train_step(state: TrainState, batch: dict[str, jax.Array], aux: dict[str, Any]):
    batch = prepare(batch)
    step_rng = jax.random.fold_in(state.rng, state.step)
    (loss, terms), grads = jax.value_and_grad(
        lambda p: task.loss(p, batch, step_rng, aux), has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA warm-up (as TF / timm): early on the average must not hold on to the random init.
    decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
    ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        ema_params=keep(ema, state.ema_params),
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
  train_step = jax.jit(make_train_step(task, tx, lr_schedule, config),
                       in_shardings=(state_sh, batch_sh, aux_sh), out_shardings=(state_sh, repl),
                       donate_argnums=(0,))
  host_spec = pipeline.batch_spec(config, config.data.batch_size // jax.process_count())
  batch_spec = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct((config.data.batch_size,) + x.shape[1:], x.dtype, sharding=batch_sh),
      host_spec)
  t0 = time.time()
  compiled = train_step.lower(abstract, batch_spec, aux).compile()
  compile_s = time.time() - t0
  flops = throughput.step_flops(
      lambda t: make_train_step(t, tx, lr_schedule, config),
      lambda t: init_state(t, tx, jax.random.PRNGKey(0)), task, batch_spec, aux) / jax.device_count()
  peak = throughput.peak_flops(override=config.peak_flops_per_device)
  logging.info("Train step compiled in %.1fs; %.3g FLOPs per device per step.", compile_s, flops)
  writer.write_scalars(first_step, {"train/compile_s": compile_s})

  # --- Loop -----------------------------------------------------------------------------------------
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top  (TensorFlow: see reporting.py)
  report = periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer,
                                           every_steps=config.log_every)
  preemption = Preemption()
  pending: Optional[tuple[int, Any]] = None    # a log step's metrics, fetched one step later
  interval_start, interval_steps = time.time(), 0
  train_time, trained_steps = 0.0, 0
  eval_results: dict[str, float] = {}
  eval_images: dict[str, np.ndarray] = {}
  step = first_step

  def flush_pending():
    nonlocal pending, interval_start, interval_steps, train_time, trained_steps
    if pending is None:
      return
    log_step, metrics = pending
    pending = None
    metrics = {k: float(v) for k, v in sharding.to_host(metrics).items()}
    elapsed = time.time() - interval_start
    ips = interval_steps * config.data.batch_size / max(elapsed, 1e-9)
    train_time += elapsed
    trained_steps += interval_steps
    metrics["train/images_per_s"] = ips
    metrics["train/images_per_s_per_device"] = ips / jax.device_count()
    metrics["train/tflops_per_s_per_device"] = flops * interval_steps / max(elapsed, 1e-9) / 1e12
    if peak:
      metrics["train/mfu"] = flops * interval_steps / max(elapsed, 1e-9) / peak
    interval_start, interval_steps = time.time(), 0
    writer.write_scalars(log_step, metrics)

  def check_nonfinite(at_step: int, run: jax.Array):
    run = int(sharding.to_host(run))
    if run < config.max_nonfinite_steps:
      return
    flush_pending()
    checkpoint.wait(mgr)
    latest = mgr.latest_step()
    last = (f"the last checkpoint, step {latest} in {os.path.join(workdir, 'checkpoints')}, is intact: "
            "fix the cause and run the same command to resume from it" if latest is not None else
            f"no checkpoint was saved in {workdir}, so there is nothing to resume: fix the cause and start "
            "again")
    raise TrainingError(
        f"{run} consecutive steps up to step {at_step} had a non-finite loss or gradient "
        f"(config.max_nonfinite_steps={config.max_nonfinite_steps}); stopping; {last}")

  # Every step's count of consecutive non-finite steps is read one step late (its copy to the host
  # started when it was computed), so the check never makes the host wait for the step in flight.
  unchecked: Optional[tuple[int, jax.Array]] = None

  try:
    while step < config.total_steps:
      if preemption.reached(step):
        flush_pending()
        checkpoint.save(mgr, step, state, data_iter)
        checkpoint.wait(mgr)
        logging.warning("Preempted (SIGTERM): saved step %d in %s; rerun to resume.", step, workdir)
        return {"preempted": True, "steps": step}
      batch = sharding.host_to_global(next(data_iter), batch_sh)
      if interval_steps == 0:
        interval_start = time.time()
      state, metrics = compiled(state, batch, aux)
      step += 1
      interval_steps += 1
      if unchecked is not None:
        check_nonfinite(*unchecked)
      unchecked = (step, metrics["train/nonfinite_run"])
      unchecked[1].copy_to_host_async()
      flush_pending()
      if step % config.log_every == 0 or step == config.total_steps:
        pending = (step, metrics)
      report(step)
      if step % config.eval_every == 0 or step == config.total_steps:
        flush_pending()
        eval_start = time.time()
        eval_results, eval_images = evaluator(state.ema_params)
        writer.write_scalars(step, eval_results)
        writer.write_images(step, eval_images)
        logging.info("Step %d: %s (%.1fs)", step, eval_results, time.time() - eval_start)
        interval_start, interval_steps = time.time(), 0
      if step % config.checkpoint_every == 0 or step == config.total_steps:
        flush_pending()  # metrics.jsonl holds every row up to a checkpoint's step (see drop_metrics_after)
        checkpoint.save(mgr, step, state, data_iter)
    if unchecked is not None:
      check_nonfinite(*unchecked)
    flush_pending()
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
      "images_per_s": trained_steps * config.data.batch_size / max(train_time, 1e-9),
      "images_per_s_per_device": trained_steps * config.data.batch_size / max(train_time, 1e-9)
                                 / jax.device_count(),
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
