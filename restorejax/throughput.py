"""FLOPs of a train step (XLA's own cost analysis) and model FLOPs utilisation against device peaks.

XLA counts the body of a loop once, so a network whose repeated blocks are scanned would report a
fraction of its FLOPs: `step_flops` lowers (without compiling) a copy of the step whose model is unrolled,
and reads the cost of the whole, unpartitioned program.
"""

import copy
from typing import Any, Callable

import jax

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


def _flops(cost) -> float:
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def unrolled(task: Any) -> Any:
  """A shallow copy of a task whose model does not scan (same parameters, same FLOPs, countable)."""
  if not getattr(task.model, "scan", False):
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
    return _flops(jax.jit(make_step(task)).lower(state, shapes(batch), shapes(aux)).cost_analysis())
  except Exception:  # pylint: disable=broad-except  (a missing estimate must not stop a run)
    return 0.0
