"""Shared test set-up: CPU only, a persistent compilation cache for the many short runs, CLI helpers."""

import json
import os
import subprocess
import sys
import tempfile

import pytest

from restorejax import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Subprocess runs of the same tiny config share compiled executables through this cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "restorejax-test-xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# In-process steps reuse their pages, as training processes do (restorejax/allocator.py).
allocator.keep_freed_memory()


def run_main(workdir, *overrides, config="configs/default.py:tiny", env=None, timeout=600, check=True):
  """`python -m restorejax.main` in a subprocess; returns the CompletedProcess."""
  cmd = [sys.executable, "-m", "restorejax.main", f"--config={os.path.join(ROOT, config)}",
         f"--workdir={workdir}", *overrides]
  proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                        text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def read_summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def read_metrics(workdir, name):
  """{step: value} of one scalar from metrics.jsonl."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if name in row:
        out[row["step"]] = row[name]
  return out


def tiny_config(**updates):
  """configs/default.py:tiny, unlocked copies of the fields given as dotted keys."""
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config("tiny")
  return with_updates(config, updates)


def with_updates(config, updates):
  """`config` with the fields given as dotted keys set (in place, unlocked for the edit)."""
  with config.unlocked():
    for key, value in updates.items():
      node = config
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return config


def randomize_params(shapes, seed):
  """Host float32 parameters of the tree of shapes `shapes`, every one random: kernels scaled by fan-in,
  scales near 1, biases near 0 (a freshly initialised ADM's zero output layer would predict nothing)."""
  # Imported here: this module sets JAX's environment (cache, platform) before jax is first imported.
  import flax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  out = {}
  for path, s in flax.traverse_util.flatten_dict(shapes).items():
    if path[-1] == "kernel":
      out[path] = rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))
    else:
      out[path] = (1.0 if path[-1] == "scale" else 0.0) + 0.1 * rng.standard_normal(s.shape)
  return flax.traverse_util.unflatten_dict({k: np.asarray(v, np.float32) for k, v in out.items()})


@pytest.fixture(scope="session")
def root():
  return ROOT
