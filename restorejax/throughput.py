"""FLOPs of a compiled step (XLA's own cost analysis) and model FLOPs utilisation against device peaks."""

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


def compiled_flops(compiled) -> float:
  """FLOPs of one execution of a compiled function on one device, from XLA's cost analysis (0 if absent)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))
