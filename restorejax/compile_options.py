"""XLA options the train step is compiled with (`train.train` and `bench step` use the same).

On XLA:CPU, LLVM's optimisation level 1 (`xla_backend_optimization_level`, default 2) halves the time the
default config's train step takes to compile and leaves the step as fast (whole-step A/B, same process,
alternated; BENCHMARKS.md, 2026-12-05): the step's time is in YNNPACK/Eigen library calls and simple loop
fusions, which the extra LLVM passes of level 2 do not speed up. Other backends keep XLA's defaults, and an
option the user sets in `XLA_FLAGS` wins over ours (compile options would otherwise override it).
"""

import os

import jax

CPU = {"xla_backend_optimization_level": 1}


def train_step(platform: str | None = None) -> dict:
  """Compiler options for the train step on `platform` (default: that of the first device)."""
  platform = platform or jax.devices()[0].platform
  if platform != "cpu":
    return {}
  user = os.environ.get("XLA_FLAGS", "")
  return {k: v for k, v in CPU.items() if f"--{k}=" not in user}
