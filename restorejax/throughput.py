"""FLOPs of a train step (XLA's own cost analysis) and model FLOPs utilisation against device peaks.

The trainer reads the cost of the step it lowers once and compiles (`flops_per_device`), taken from the
lowering: the whole, unpartitioned program, as written (the compiled program's count differs by what the
backend's optimisations change). XLA counts the body of a loop once, though, so a network whose repeated
blocks are scanned would report a fraction of its FLOPs: for those, `step_flops` lowers (without
compiling) a copy of the step whose model is unrolled.
"""

import copy
from typing import Any, Callable

import jax

from restorejax.models import restorer

# Dense bf16 peak FLOP/s per device (chip), from the vendors' data sheets.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
}


def peak_flops(device=None, override: float = 0.0) -> float:
  """Peak FLOP/s of one device (0 when unknown, e.g. CPUs); `override` > 0 wins."""
  if override > 0:
    return override
  kind = (device or jax.devices()[0]).device_kind
  for name in sorted(PEAK_FLOPS, key=len, reverse=True):
    if kind.startswith(name):
      return PEAK_FLOPS[name]
  return 0.0


def cost_flops(cost) -> float:
  """FLOPs from a lowered or compiled program's `cost_analysis()` (a dict, or a list of one)."""
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def scans(task: Any) -> bool:
  """Whether the task's network scans its repeated blocks (a loop XLA's cost analysis counts once)."""
  return isinstance(task.model, restorer.Restorer) and task.model.scan


def unrolled(task: Any) -> Any:
  """A shallow copy of a task whose model does not scan (same parameters, same FLOPs, countable)."""
  if not scans(task):
    return task
  out = copy.copy(task)
  out.model = task.model.clone(scan=False)
  return out


def step_flops(make_step: Callable[[Any], Callable], init_state: Callable[[Any], Any], task: Any,
               batch: Any, aux: Any) -> float:
  """FLOPs of one global train step, all devices together (0 if XLA reports none).

  `make_step(task)` builds the step function and `init_state(task)` its state (only its shapes are used),
  so both can follow the unrolled copy of the task.
  """
  task = unrolled(task)
  shapes = lambda tree: jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  try:
    state = jax.eval_shape(lambda: init_state(task))
    return cost_flops(jax.jit(make_step(task)).lower(state, shapes(batch), shapes(aux)).cost_analysis())
  except Exception:  # pylint: disable=broad-except  (a missing estimate must not stop a run)
    return 0.0


def flops_per_device(lowered: Any, task: Any, make_step: Callable[[Any], Callable],
                     init_state: Callable[[Any], Any], batch: Any, aux: Any) -> float:
  """FLOPs of one train step on one device (0 if XLA reports none), all devices' share alike.

  `lowered` is the step the run compiles, lowered once: its cost is that of the whole, unpartitioned
  program. A network that scans its blocks is counted on an unrolled copy instead (`step_flops`), since
  XLA counts a loop body once.
  """
  if scans(task):
    return step_flops(make_step, init_state, task, batch, aux) / jax.device_count()
  try:
    return cost_flops(lowered.cost_analysis()) / jax.device_count()
  except Exception:  # pylint: disable=broad-except  (a missing estimate must not stop a run)
    return 0.0
