"""restorejax.pod_check: the real train step compiled for 8 simulated devices, pure data parallelism
against FSDP, in one subprocess (the device count must be set before JAX starts)."""

import json
import os
import subprocess
import sys

from conftest import ROOT
from restorejax import pod_check

# As tests/test_sweep.py: XLA's CPU optimisation passes off, the compile is what costs here.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def test_fsdp_divides_the_state_per_device_by_the_fsdp_axis(tmp_path):
  out = tmp_path / "report.json"
  env = {**os.environ, "XLA_FLAGS": FAST_COMPILE,
         "PYTHONPATH": os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH"))))}
  proc = subprocess.run(
      [sys.executable, "-m", "restorejax.pod_check", f"--config={ROOT}/configs/default.py:tiny",
       "--devices=8", "--mesh=data:8", "--mesh=data:1,fsdp:8", "--config.sharding.fsdp_min_size=0",
       f"--json={out}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  dp, fsdp = json.loads(out.read_text())
  assert dp["devices"] == fsdp["devices"] == 8 and fsdp["mesh"] == {"data": 1, "fsdp": 8}
  for part in ("params", "opt_state", "ema_params"):
    assert dp["per_device"][part] == dp["total"][part]  # replicated
    assert 7.5 < dp["per_device"][part] / fsdp["per_device"][part] <= 8.0, part
  # XLA's own account of the step's inputs (the state, mostly) shrinks with it.
  assert dp["xla"]["argument"] / fsdp["xla"]["argument"] > 6
  assert set(fsdp["collectives"]) >= {"all-gather"} and "all-gather" not in dp["collectives"]
  assert "mesh {'data': 1, 'fsdp': 8} over 8 simulated cpu devices" in proc.stdout


def test_collectives_are_read_from_hlo_text():
  hlo = ("  %all-reduce.1 = f32[16,8]{1,0} all-reduce(f32[16,8]{1,0} %x), replica_groups={}\n"
         "  %ag = (bf16[4], bf16[32]) all-gather-start(bf16[4] %y), dimensions={0}\n"
         "  %add = f32[2] add(f32[2] %a, f32[2] %b)\n")
  assert pod_check.collectives(hlo) == {"all-reduce": {"count": 1, "bytes": 512},
                                        "all-gather": {"count": 1, "bytes": 64}}
  assert pod_check.parse_mesh("data:8,fsdp:-1") == (("data", 8), ("fsdp", -1))
