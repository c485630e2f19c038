"""Pod readiness without a pod: compile a config's real train step for a simulated mesh of N devices and
report what each device would hold and which collectives the step runs.

  python -m restorejax.pod_check --config=configs/default.py --devices=64 --mesh=data:64 --mesh=data:8,fsdp:8

N CPU devices stand in for the chips (`--xla_force_host_platform_device_count=N`; the command re-executes
itself with that flag when JAX would otherwise see other devices). For each `--mesh` the train step is
lowered and compiled ahead of time exactly as `restorejax.train` compiles it (shardings from the config's
rules, state donated), nothing is allocated, and the report gives per device:

- parameters, optimizer state, EMA, frozen `aux` networks (e.g. DiffLoss's prior) and the batch, from the
  shardings (shard shapes x dtype sizes);
- XLA's memory analysis of the compiled step: arguments, outputs, temporaries (activations and
  gradients), and the peak it implies (arguments + outputs - donated + temporaries);
- the collectives in the compiled HLO (all-reduce, all-gather, reduce-scatter, all-to-all,
  collective-permute): how many and the bytes of their results.

CPU memory analysis is XLA's CPU compiler's: an accelerator's compiler fuses and rematerialises
differently, so temporaries are an estimate; the sharded state sizes are exact. Frozen `aux` networks are
taken as shapes only, so no weights are needed: `--diffloss_preset=imagenet256-uncond` stands in the
ADM preset's shapes for DiffLoss's prior directory; `--model=NAME` checks a network with its default
(paper) fields instead of the config's. `--json=FILE` writes the report as JSON.
"""

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags

from restorejax import checkpoint, cli, losses, models, optim, sharding, tasks, train
from restorejax.data import pipeline
from restorejax.losses import diffloss
from restorejax.models import adm_unet
from restorejax.tasks import diffusion

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (the shared --config and its own), defined when it runs, not on import."""
  with cli.command_flags(config=True):
    flags.DEFINE_integer("devices", 8, "Number of simulated devices.")
    flags.DEFINE_multi_string("mesh", [], "Mesh to check, e.g. data:8,fsdp:8 (repeatable); default: config.mesh.")
    flags.DEFINE_string("diffloss_preset", "", "ADM preset (restorejax.models.adm_unet.ADM_PRESETS) whose "
                        "shapes stand in for config.losses.diffloss.diffusion_run.")
    flags.DEFINE_string("model", "", "Check this network (restorejax.models) with its default fields instead "
                        "of the config's model, e.g. restormer.")
    flags.DEFINE_string("json", "", "Also write the report to this file as JSON.")


_DEVICE_FLAG = "--xla_force_host_platform_device_count"
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
          "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\]")
_OP = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")


def _simulated_env(n: int) -> dict[str, str] | None:
  """The environment to re-execute with, or None when this one already gives N CPU devices."""
  flags_now = os.environ.get("XLA_FLAGS", "")
  ours = f"{_DEVICE_FLAG}={n}"
  if os.environ.get("JAX_PLATFORMS") == "cpu" and flags_now.split()[-1:] == [ours]:
    return None
  kept = " ".join(f for f in flags_now.split() if not f.startswith(_DEVICE_FLAG))
  return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"{kept} {ours}".strip()}


def parse_mesh(text: str) -> tuple[tuple[str, int], ...]:
  """'data:8,fsdp:8' -> (('data', 8), ('fsdp', 8))."""
  out = []
  for part in text.split(","):
    name, sep, size = part.partition(":")
    if not sep or not name.strip() or not re.fullmatch(r"-?\d+", size.strip()):
      raise ValueError(f"--mesh={text}: expected name:size[,name:size...], e.g. data:8,fsdp:8")
    out.append((name.strip(), int(size)))
  return tuple(out)


def collectives(hlo: str) -> dict[str, dict[str, int]]:
  """{kind: {'count': n, 'bytes': result bytes}} of the collectives in an HLO module's text."""
  out = {}
  for line in hlo.splitlines():
    m = _OP.search(line)
    if not m:
      continue
    shapes = _SHAPE.findall(m.group(1))
    if m.group(3) and len(shapes) > 1:  # an async start's result is (operands..., result)
      shapes = shapes[-1:]
    size = sum(_BYTES[t] * int(np.prod([int(v) for v in d.split(",") if v])) for t, d in shapes)
    entry = out.setdefault(m.group(2), {"count": 0, "bytes": 0})
    entry["count"] += 1
    entry["bytes"] += size
  return out


def _shard_bytes(tree: Any) -> int:
  return int(sum(np.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                 for x in jax.tree_util.tree_leaves(tree)))


def _total_bytes(tree: Any) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)))


@contextlib.contextmanager
def shapes_only_aux():
  """Frozen `aux` networks as shapes: the loss terms' builders swapped for ones that load no weights."""
  builders = {"diffloss": lambda prior="", **_: {
      "params": adm_unet.param_shapes(diffloss.read_prior(prior).model())}}
  saved = dict(losses.AUX_BUILDERS)
  losses.AUX_BUILDERS.update(builders)
  try:
    yield
  finally:
    losses.AUX_BUILDERS.clear()
    losses.AUX_BUILDERS.update(saved)


def preset_prior(preset: str, directory: str) -> str:
  """A prior directory holding only the config.json of an ADM preset (shapes, no weights)."""
  if preset not in adm_unet.ADM_PRESETS:
    raise ValueError(f"--diffloss_preset={preset}: unknown (known: {', '.join(sorted(adm_unet.ADM_PRESETS))})")
  model_cfg = adm_unet.default_config(preset)
  checkpoint.write_config(directory, diffusion.prior_config(model_cfg, image_size=model_cfg.image_size))
  return directory


def check(config: Any) -> dict[str, Any]:
  """Compiles `config`'s train step on `config.mesh` over all devices; returns the report as a dict."""

  # As restorejax.train.train_and_evaluate builds and compiles its step.
  mesh = sharding.mesh(config)
  batch_sh = sharding.batch_sharding(config, mesh)
  shards = 1
  for a in sharding.batch_axes(config, mesh):
    shards *= mesh.shape[a]
  if config.data.batch_size % shards:
    raise ValueError(f"config.data.batch_size={config.data.batch_size} is not divisible by the {shards} "
                     "data-parallel shards of the mesh")
  with shapes_only_aux():
    task = tasks.build(config)
  tx, lr_schedule = optim.build(config.optim, config.total_steps)
  _, abstract, state_sh = train.abstract_state(task, tx, config, mesh)
  aux_sh = sharding.param_shardings(task.aux, config, mesh)
  aux = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), task.aux, aux_sh)
  batch = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sh),
      pipeline.batch_spec(config, config.data.batch_size))
  step = jax.jit(train.make_train_step(task, tx, lr_schedule, config),
                 in_shardings=(state_sh, batch_sh, aux_sh),
                 out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=(0,))
  t0 = time.time()
  lowered = step.lower(abstract, batch, aux)
  compiled = lowered.compile()
  compile_s = time.time() - t0

  mem = compiled.memory_analysis()
  xla = {}
  if mem is not None:
    xla = {name: int(getattr(mem, f"{name}_size_in_bytes", 0))
           for name in ("argument", "output", "alias", "temp", "generated_code")}
    xla["peak"] = xla["argument"] + xla["output"] - xla["alias"] + xla["temp"]
  parts = {"params": abstract.params, "opt_state": abstract.opt_state, "ema_params": abstract.ema_params,
           "aux": aux, "batch": batch}
  return {
      "mesh": dict(mesh.shape),
      "devices": jax.device_count(),
      "platform": jax.devices()[0].platform,
      "batch_size": config.data.batch_size,
      "compile_s": round(compile_s, 1),
      "per_device": {k: _shard_bytes(v) for k, v in parts.items()},
      "total": {k: _total_bytes(v) for k, v in parts.items()},
      "xla": xla,
      "collectives": collectives(compiled.as_text()),
  }


def _mib(n: int) -> str:
  """Bytes in the largest binary unit that keeps the figure at least 1."""
  for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
    if n >= scale:
      return f"{n / scale:,.2f} {unit}"
  return f"{n} B"


def format_report(name: str, r: dict[str, Any]) -> str:
  lines = [f"{name}: mesh {r['mesh']} over {r['devices']} simulated {r['platform']} devices, global batch "
           f"{r['batch_size']}, compiled in {r['compile_s']}s",
           "  per device (from the shardings):"]
  labels = {"params": "parameters", "opt_state": "optimizer state", "ema_params": "EMA parameters",
            "aux": "frozen aux", "batch": "batch"}
  for k, label in labels.items():
    per, tot = r["per_device"][k], r["total"][k]
    share = f"  (1/{tot / per:.2f} of {_mib(tot)})" if per and tot != per else ("  (replicated)" if per else "")
    lines.append(f"    {label:<16} {_mib(per):>14}{share}")
  x = r["xla"]
  if x:
    lines.append(f"  XLA memory analysis per device: arguments {_mib(x['argument'])}, outputs "
                 f"{_mib(x['output'])} (donated {_mib(x['alias'])}), temporaries {_mib(x['temp'])}; "
                 f"peak about {_mib(x['peak'])}")
  coll = ", ".join(f"{k} x{v['count']} ({_mib(v['bytes'])})" for k, v in sorted(r["collectives"].items()))
  lines.append(f"  collectives per step: {coll or 'none'}")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  env = _simulated_env(FLAGS.devices)
  if env is not None:  # JAX reads XLA_FLAGS when its backend starts (not yet): re-run with N CPU devices
    os.execve(sys.executable, [sys.executable, "-m", "restorejax.pod_check", *sys.argv[1:]], env)
  config = FLAGS.config
  name = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")), "config")
  reports = []
  with tempfile.TemporaryDirectory() as tmp:
    try:
      meshes = [parse_mesh(m) for m in FLAGS.mesh] or [tuple(tuple(a) for a in config.mesh)]
      if FLAGS.model:
        with config.unlocked():
          config.model = models.default_config(FLAGS.model)
      if FLAGS.diffloss_preset:
        config.losses.diffloss.diffusion_run = preset_prior(FLAGS.diffloss_preset, tmp)
      for m in meshes:
        config.mesh = m
        r = check(config)
        reports.append(r)
        print(format_report(name, r), flush=True)
    except ValueError as e:
      cli.fail(str(e))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(reports, f, indent=2)


def parse_flags(argv: list[str]) -> list[str]:
  return cli.parse_flags(argv, required=("config",))


def run() -> None:
  define_flags()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
