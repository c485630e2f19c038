"""Benchmarks that print figures (never timed tests).

  python -m restorejax.bench step --config=configs/default.py [--baseline=configs/default.py:tiny]
  python -m restorejax.bench step --against=pytorch [--config=configs/default.py] [--shapes=config,gopro]
  python -m restorejax.bench data --config=configs/default.py
  python -m restorejax.bench convs --config=configs/default.py
  python -m restorejax.bench fusion [--config=configs/default.py] [--crop=64] [--nocheck]

`step`: compile time, step time (median of timed steps after warm-up), images/s, images/s/device,
FLOPs per step (XLA cost analysis) and MFU when the device's peak is known. With `--baseline`, the same
figures for a second config measured in the same process, interleaved, and their ratios: the way to compare
on a shared, noisy machine (e.g. the cost of DiffLoss over a plain step).
With `--against=pytorch`, for each NAFNet shape of `--shapes` ('config': the config as given, default
configs/default.py; 'gopro': the same with the GoPro network, width 32, enc (1,1,1,28), middle 1,
dec (1,1,1,1), batch 4 of 128x128), the trainer's step against the official PyTorch eager step of the same
network (restorejax/bench_torch/nafnet.py: forward, L1, backward, clipping, AdamW, EMA; torch threads = the
CPUs the process may use, so `taskset -c 0` compares one core with one), alternated round by round, each
round's step times printed, and the speed ratio restorejax / PyTorch (PyTorch step time / ours; above 1:
ours is faster). The PyTorch side gets ready-made float batches; ours also synthesises the degradation on
the device, as training does. Needs torch (the `convert` extra).
Give the GoPro shape `--warmup=2` or more: its first steps after compiling grow glibc's heap (~475k page
faults each, BENCHMARKS.md), which is start-up, not the step.
`data`: triples/s of the host input pipeline and of the on-device degradation, and the config's train step
(images/s) measured alongside, with the ratios host / step for the first epoch and the second (see
restorejax/data/pipeline_bench.py); `--nostep_alongside` leaves the step out (a config whose step is too big to
compile here).
`convs`: forward+backward time of Flax's 1x1 and depthwise `nn.Conv` against `restorejax.models.convs`
at the config's batch, patch and 2x width (why the networks use the latter).
`fusion`: per prior fusion mode (`models.fusion.FUSIONS`) of the config's network (default
configs/default.py): parameters, and GFLOPs of the forward and of forward+backward (L1 loss) for a batch of
8 64x64 patches with a prior, from XLA's cost analysis of the lowered programs (machine-independent; a
scanning network is counted unrolled, so its repeated blocks all count; XLA counts a loop body once, so the
ECC iterations of 'align', forward only, count once per pyramid level), with the ratios to 'none'. Then the
registration check (restorejax/evaluation/registration.py): on the held-out set's `--crop` centre crops,
degraded as evaluation degrades them, with priors of severity 0, 0.2, 0.4, 0.6, the normalised error
(tone-invariant; definition in the JSON) from the target of the prior as is, of the prior registered by
`fusion_align.align`, and of the noisy input. Prints markdown tables, then the JSON; `--nocheck` leaves the
check out.
Also installed as `restorejax-bench`. Record results in BENCHMARKS.md with the command, machine and date.
"""

import functools
import importlib.util
import json
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from restorejax import allocator, cli, compile_options, models, optim, sharding, tasks, throughput, train
from restorejax.data import pipeline_bench
from restorejax.data import pipeline
from restorejax.evaluation import registration
from restorejax.models import convs, fusion

FLAGS = flags.FLAGS
PROG = "restorejax.bench"


def define_flags() -> None:
  """The command's flags (the shared --config, the config to measure, and its own)."""
  with cli.command_flags(config=True):
    config_flags.DEFINE_config_file("baseline", None, "Optional second config, measured alongside.",
                                    lock_config=True)
    flags.DEFINE_integer("steps", 20, "Timed steps per round.")
    flags.DEFINE_integer("rounds", 3, "Rounds; configs alternate between rounds.")
    flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.")
    flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
    flags.DEFINE_enum("against", None, ["pytorch"], "step: also time the same NAFNet in PyTorch, alternated.")
    flags.DEFINE_list("shapes", ["config", "gopro"], "step --against: NAFNet shapes to compare (config, gopro).")
    flags.DEFINE_bool("step_alongside", True, "data: also time the config's train step and print host / step.")
    flags.DEFINE_integer("crop", 64, "fusion: side of the held-out centre crops of the registration check.")
    flags.DEFINE_bool("check", True, "fusion: also run the registration check (--nocheck: costs only).")


class StepBench:
  """One config's train step, compiled with the trainer's own shardings, on synthetic host batches.

  `compiler_options` (XLA options) compile this step only, so two StepBenches in one process A/B an XLA
  option on the whole step, alternated; None: the trainer's own (`compile_options.train_step()`). `flat`
  likewise A/Bs the optimizer's flat update (`train.make_train_step`); None: the trainer's choice
  (`train.flat_update_applies`).
  """

  def __init__(self, config, compiler_options: dict | None = None, flat: bool | None = None):
    self.config = config
    mesh = sharding.mesh(config)
    batch_sh = sharding.batch_sharding(config, mesh)
    repl = sharding.replicated(mesh)
    task = tasks.build(config)
    tx, lr = optim.build(config.optim, config.total_steps)
    init_fn, _, state_sh = train.abstract_state(task, tx, config, mesh)
    aux_sh = sharding.param_shardings(task.aux, config, mesh)
    self.aux = sharding.replicated_to_global(task.aux, aux_sh)
    flat = train.flat_update_applies(mesh) if flat is None else flat
    step = jax.jit(train.make_train_step(task, tx, lr, config, flat=flat),
                   in_shardings=(state_sh, batch_sh, aux_sh), out_shardings=(state_sh, repl),
                   donate_argnums=(0,))
    self.state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.PRNGKey(config.seed))
    rng = np.random.default_rng(0)
    host = pipeline.batch_spec(config, config.data.batch_size // jax.process_count())
    host = {k: rng.integers(0, 255, v.shape).astype(v.dtype) if v.dtype == np.uint8
            else np.arange(v.size, dtype=v.dtype).reshape(v.shape) for k, v in host.items()}
    self.batch = sharding.host_to_global(host, batch_sh)
    t0 = time.perf_counter()
    if compiler_options is None:  # what the trainer compiles with
      compiler_options = compile_options.train_step()
    self.step = step.lower(self.state, self.batch, self.aux).compile(compiler_options=compiler_options)
    self.compile_s = time.perf_counter() - t0
    self.flops = throughput.step_flops(
        lambda t: train.make_train_step(t, tx, lr, config, flat=flat),
        lambda t: train.init_state(t, tx, jax.random.PRNGKey(0)),
        task, self.batch, self.aux) / jax.device_count()
    self.peak = throughput.peak_flops(override=config.peak_flops_per_device)
    self.times: list[float] = []

  def run(self, steps: int, record: bool = True) -> None:
    for _ in range(steps):
      t0 = time.perf_counter()
      self.state, metrics = self.step(self.state, self.batch, self.aux)
      jax.block_until_ready(metrics)
      if record:
        self.times.append(time.perf_counter() - t0)

  def figures(self) -> dict[str, float]:
    t = statistics.median(self.times)
    devices = jax.device_count()
    out = {
        "compile_s": self.compile_s,
        "step_ms": 1e3 * t,
        "step_ms_min": 1e3 * min(self.times),
        "images_per_s": self.config.data.batch_size / t,
        "images_per_s_per_device": self.config.data.batch_size / t / devices,
        "gflops_per_step_per_device": self.flops / 1e9,
        "tflops_per_s_per_device": self.flops / t / 1e12,
    }
    if self.peak:
      out["mfu"] = self.flops / t / self.peak
    return out


def bench_step() -> dict:
  if FLAGS.against == "pytorch":
    return bench_against()
  benches = {"config": StepBench(FLAGS.config)}
  if FLAGS.baseline is not None:
    benches["baseline"] = StepBench(FLAGS.baseline)
  for b in benches.values():
    b.run(FLAGS.warmup, record=False)
  for _ in range(FLAGS.rounds):  # interleaved, so that load changes hit both alike
    for b in benches.values():
      b.run(FLAGS.steps)
  results = {name: b.figures() for name, b in benches.items()}
  if "baseline" in results:
    c, b = results["config"], results["baseline"]
    results["ratio_config_over_baseline"] = {
        "step_ms": c["step_ms"] / b["step_ms"],
        "gflops_per_step_per_device": c["gflops_per_step_per_device"] / max(b["gflops_per_step_per_device"], 1e-12),
    }
  results["machine"] = {"devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
                        "processes": jax.process_count(), "cpus": os.cpu_count()}
  return results


# NAFNet shapes of `step --against`: overrides of the given config (issue 17's two CPU shapes).
SHAPES = {
    "config": {},
    "gopro": {"model": dict(width=32, enc_blocks=(1, 1, 1, 28), middle_blocks=1, dec_blocks=(1, 1, 1, 1)),
              "data": dict(batch_size=4, patch_size=128)},
}


def shaped(config, shape: str):
  """A copy of `config` with the overrides of `SHAPES[shape]`."""
  if shape not in SHAPES:
    raise ValueError(f"--shapes: unknown shape {shape!r} (known: {', '.join(SHAPES)})")
  out = config.copy_and_resolve_references()
  for block, fields in SHAPES[shape].items():
    out[block].update(fields)
  return out


class TorchStep:
  """The official PyTorch eager step of the config's NAFNet (restorejax/bench_torch), on fixed batches."""

  def __init__(self, config):
    import torch  # pylint: disable=g-import-not-at-top  (the `convert` extra; only here)
    from restorejax.bench_torch import nafnet as torch_nafnet  # pylint: disable=g-import-not-at-top
    if config.model.name != "nafnet":
      raise ValueError(f"--against=pytorch: only NAFNet has a PyTorch port here, not {config.model.name!r}")
    torch.set_num_threads(usable_cpus())
    torch.manual_seed(config.seed)
    self.trainer = torch_nafnet.Trainer(torch_nafnet.from_config(config.model), config.optim)
    b, p = config.data.batch_size, config.data.patch_size
    self.target = torch.rand(b, config.model.channels, p, p)
    self.degraded = (self.target + 0.1 * torch.randn_like(self.target)).clamp(0, 1)
    self.times: list[float] = []

  def run(self, steps: int, record: bool = True) -> None:
    for _ in range(steps):
      t0 = time.perf_counter()
      self.trainer.step(self.degraded, self.target).item()
      if record:
        self.times.append(time.perf_counter() - t0)


def usable_cpus() -> int:
  """CPUs this process may run on (`taskset -c 0` narrows them to one)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def default_config_path() -> str:
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py")


def load_config(path: str):
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such config file (give --config)")
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def bench_against() -> dict:
  """restorejax's train step against the PyTorch port, per shape, alternated round by round."""
  import torch  # pylint: disable=g-import-not-at-top  (the `convert` extra; only here)
  base = FLAGS.config if FLAGS.config is not None else load_config(default_config_path())
  results = {}
  for shape in FLAGS.shapes:
    config = shaped(base, shape)
    ours, theirs = StepBench(config), TorchStep(config)
    ours.run(FLAGS.warmup, record=False)
    theirs.run(FLAGS.warmup, record=False)
    rounds = []
    for r in range(FLAGS.rounds):
      start = (len(ours.times), len(theirs.times))
      sides = (ours, theirs) if r % 2 == 0 else (theirs, ours)  # alternate who goes first
      for side in sides:
        side.run(FLAGS.steps)
      jax_ms = 1e3 * statistics.median(ours.times[start[0]:])
      torch_ms = 1e3 * statistics.median(theirs.times[start[1]:])
      rounds.append({"restorejax_ms": jax_ms, "pytorch_ms": torch_ms, "ratio": torch_ms / jax_ms})
      print(f"{shape} round {r + 1}: restorejax {jax_ms:.1f} ms, pytorch {torch_ms:.1f} ms, "
            f"restorejax/pytorch speed {torch_ms / jax_ms:.2f}x", file=sys.stderr, flush=True)
    figures = ours.figures()
    torch_ms = 1e3 * statistics.median(theirs.times)
    results[shape] = {
        "model": {k: config.model[k] for k in ("width", "enc_blocks", "middle_blocks", "dec_blocks")},
        "batch_size": config.data.batch_size, "patch_size": config.data.patch_size,
        "restorejax": figures,
        "pytorch": {"step_ms": torch_ms, "step_ms_min": 1e3 * min(theirs.times),
                    "images_per_s": config.data.batch_size / torch_ms * 1e3},
        "rounds": rounds,
        "speed_ratio_restorejax_over_pytorch": torch_ms / figures["step_ms"],
    }
    del ours, theirs
  results["machine"] = {"cpus": os.cpu_count(), "usable_cpus": usable_cpus(),
                        "device_kind": jax.devices()[0].device_kind,
                        "jax": jax.__version__, "torch": torch.__version__,
                        "torch_threads": torch.get_num_threads()}
  return results


def bench_convs() -> dict:
  """Forward+backward of nn.Conv's 1x1 and depthwise convolutions against restorejax.models.convs."""
  b, s, c = FLAGS.config.data.batch_size, FLAGS.config.data.patch_size, 2 * FLAGS.config.model.width
  x = jax.random.normal(jax.random.PRNGKey(0), (b, s, s, c))
  pairs = {
      "pointwise": (nn.Conv(2 * c, (1, 1)), convs.PointwiseConv(2 * c)),
      "depthwise": (nn.Conv(c, (3, 3), padding=1, feature_group_count=c), convs.DepthwiseConv(3)),
  }
  out = {"shape": [b, s, s, c]}
  for name, (ref, ours) in pairs.items():
    params = ref.init(jax.random.PRNGKey(1), x)
    times = {}
    for label, mod in (("nn_conv", ref), ("convs", ours)):
      grad = jax.jit(jax.grad(lambda p, x, m=mod: jnp.mean(m.apply(p, x) ** 2), argnums=(0, 1)))
      jax.block_until_ready(grad(params, x))
      runs = []
      for _ in range(FLAGS.rounds * FLAGS.steps):
        t0 = time.perf_counter()
        jax.block_until_ready(grad(params, x))
        runs.append(time.perf_counter() - t0)
      times[label] = 1e3 * statistics.median(runs)
    out[name] = {"nn_conv_fwd_bwd_ms": times["nn_conv"], "convs_fwd_bwd_ms": times["convs"],
                 "speedup": times["nn_conv"] / times["convs"]}
  return out


def bench_data() -> dict:
  # Compiled first: compiling would load the cores while the host is timed.
  step = StepBench(FLAGS.config) if FLAGS.step_alongside else None
  return pipeline_bench.run(FLAGS.config, steps=FLAGS.steps, warmup=FLAGS.warmup, step=step)


FUSION_BATCH, FUSION_PATCH = 8, 64


def fusion_costs(config) -> dict:
  """Per fusion mode: parameters, GFLOPs forward and forward+backward (L1), ratios to 'none' (module doc)."""
  c = config.model.channels if "channels" in config.model else 3
  x = jax.ShapeDtypeStruct((FUSION_BATCH, FUSION_PATCH, FUSION_PATCH, c), jnp.float32)
  out = {}
  for mode in fusion.FUSIONS:
    cfg = config.model.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.fusion = mode
    try:
      model = models.build(cfg)
      params = jax.eval_shape(model.init, jax.random.key(0), x, x)["params"]
    except ValueError as e:  # a mode the network does not support
      out[mode] = {"unsupported": str(e)}
      continue
    if getattr(model, "scan", False):  # XLA counts a scanned body once: count the same network unrolled
      model = model.clone(scan=False)
      params_unrolled = jax.eval_shape(model.init, jax.random.key(0), x, x)["params"]
    else:
      params_unrolled = params
    forward = lambda p, a, b, m=model: m.apply({"params": p}, a, b)
    loss = lambda p, a, b, m=model: jnp.mean(jnp.abs(m.apply({"params": p}, a, b) - a))
    gflops = lambda f: throughput.cost_flops(
        jax.jit(f).lower(params_unrolled, x, x).cost_analysis()) / 1e9
    out[mode] = {"params": sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params)),
                 "gflops_forward": gflops(forward), "gflops_forward_backward": gflops(jax.value_and_grad(loss))}
  base = out["none"]
  for figures in out.values():
    if "params" in figures:
      figures["ratio_forward_vs_none"] = figures["gflops_forward"] / base["gflops_forward"]
      figures["ratio_vs_none"] = figures["gflops_forward_backward"] / base["gflops_forward_backward"]
  return out


def bench_fusion() -> dict:
  config = FLAGS.config if FLAGS.config is not None else load_config(default_config_path())
  results = {"model": config.model.name, "batch_size": FUSION_BATCH,
             "patch_size": FUSION_PATCH, "modes": fusion_costs(config)}
  rows = ["| fusion | params | GFLOPs forward | GFLOPs forward + backward (L1) | vs none |",
          "| --- | ---: | ---: | ---: | ---: |"]
  for mode, f in results["modes"].items():
    rows.append(f"| {mode} | unsupported | | | |" if "params" not in f else
                f"| {mode} | {f['params']:,} | {f['gflops_forward']:.2f} | "
                f"{f['gflops_forward_backward']:.2f} | {f['ratio_vs_none']:.2f}x |")
  if FLAGS.check:
    results["registration"] = reg = registration.check(config, crop=FLAGS.crop)
    side = reg["crop"]
    rows += ["", f"Normalised error from the target ({reg['images']} held-out {side}x{side} crops):", "",
             "| severity | prior as is | registered ('align') | noisy input |", "| ---: | ---: | ---: | ---: |"]
    rows += [f"| {s} | {e['prior']:.3f} | {e['registered']:.3f} | {e['input']:.3f} |"
             for s, e in reg["severities"].items()]
  results["machine"] = {"device_kind": jax.devices()[0].device_kind, "jax": jax.__version__}
  print("\n".join(rows) + "\n", flush=True)
  return results


COMMANDS = {"step": bench_step, "data": bench_data, "convs": bench_convs, "fusion": bench_fusion}


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    print(f"usage: python -m restorejax.bench {{{'|'.join(COMMANDS)}}} --config=FILE[:variant] ...",
          file=sys.stderr)
    sys.exit(2)
  if FLAGS.config is None and not (argv[1] == "step" and FLAGS.against) and argv[1] != "fusion":
    cli.fail("--config is required", PROG)
  allocator.keep_freed_memory()  # as the trainer does (restorejax/main.py); both sides of --against share it
  try:
    results = COMMANDS[argv[1]]()
  except ValueError as e:
    cli.fail(str(e), PROG)
  text = json.dumps(results, indent=2, sort_keys=True)
  print(text)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      f.write(text + "\n")


def run() -> None:
  """Console entry point `restorejax-bench`."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
