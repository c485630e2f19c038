"""Side-by-side GPU benchmark: restorejax bf16 train steps against PyTorch (torch.compile + bf16 autocast).

  python -m restorejax.bench_gpu --out=gpu.json            # one NVIDIA GPU (on an H200, 2026-12-04:
                                                          # nafnet-default 131 s, restormer 90 s, with compiles)
  python -m restorejax.bench_gpu --dry --out=/tmp/dry.json # CPU, tiny shapes, seconds (CI)

Cases (256x256 crops): NAFNet at the default config's shape (width 16, enc (1,1,2), middle 2,
dec (1,1,1), batch 8) and GoPro's (width 32, enc (1,1,1,28), middle 1, dec (1,1,1,1), batch 4), Restormer
(the official motion-deblurring network, batch 4), and the DiffLoss step: the default NAFNet plus L1 plus
DiffLoss through the 256x256 ADM prior (`imagenet256-uncond`, random weights, bf16), batch 4. Each step is
forward, loss, backward, global-norm clipping, AdamW and the update; parameters stay float32, the
networks compute in bf16. The PyTorch side runs the NAFNet cases only (restorejax/bench_torch; no
PyTorch Restormer or ADM port exists here); `--notorch` leaves it out.

Printed per case and side: compile time (apart), step time (median of `--steps` timed steps after
`--warmup`), images/s, TFLOP/s and MFU. FLOPs come from XLA's cost analysis of the JAX step with its
blocks unrolled (restorejax.throughput), and the PyTorch side is credited with the same FLOPs.
Only jax, flax, optax, numpy, ml_collections, absl (and torch) are imported: no grain, clu, TensorFlow, dm-pix.
"""

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from restorejax import cli, throughput
from restorejax.diffusion import objectives, schedules
from restorejax.models import adm_unet, nafnet, restormer

PROG = "restorejax.bench_gpu"
NAFNET_DEFAULT = dict(width=16, enc_blocks=(1, 1, 2), middle_blocks=2, dec_blocks=(1, 1, 1))
NAFNET_GOPRO = dict(width=32, enc_blocks=(1, 1, 1, 28), middle_blocks=1, dec_blocks=(1, 1, 1, 1))
RESTORMER = dict(restormer.PRESETS["motion-deblurring"])


def cases(dry: bool) -> list[dict[str, Any]]:
  """(name, network, fields, batch, size) of each case; `dry`: tiny networks at 32x32 for CPUs."""
  if dry:
    return [
        dict(name="nafnet-default", net="nafnet", fields=dict(width=8, enc_blocks=(1, 1), middle_blocks=1,
                                                              dec_blocks=(1, 1)), batch=2, size=32),
        dict(name="nafnet-gopro", net="nafnet", fields=dict(width=8, enc_blocks=(1, 2), middle_blocks=1,
                                                            dec_blocks=(1, 1)), batch=2, size=32),
        dict(name="restormer", net="restormer", fields=dict(dim=8, num_blocks=(1, 1, 1, 1),
                                                            num_refinement_blocks=1, heads=(1, 1, 2, 2)),
             batch=2, size=32),
        dict(name="diffloss", net="nafnet", fields=dict(width=8, enc_blocks=(1, 1), middle_blocks=1,
                                                        dec_blocks=(1, 1)), batch=2, size=32, prior="tiny"),
    ]
  return [
      dict(name="nafnet-default", net="nafnet", fields=NAFNET_DEFAULT, batch=8, size=256),
      dict(name="nafnet-gopro", net="nafnet", fields=NAFNET_GOPRO, batch=4, size=256),
      dict(name="restormer", net="restormer", fields=RESTORMER, batch=4, size=256),
      dict(name="diffloss", net="nafnet", fields=NAFNET_DEFAULT, batch=4, size=256, prior="imagenet256-uncond"),
  ]


def build_model(case: dict[str, Any], dtype: str, scan: bool = True):
  cls = {"nafnet": nafnet.NAFNet, "restormer": restormer.Restormer}[case["net"]]
  return cls(**case["fields"], dtype=dtype, scan=scan)


def random_params(module, *args, scale: float = 0.02, seed: int = 0) -> Any:
  """Parameters of `module` drawn N(0, scale) without running its initialisers (fast for the ADM UNet)."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))["params"]
  leaves, tree = jax.tree_util.tree_flatten(shapes)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  draw = jax.jit(lambda ks: [scale * jax.random.normal(k, l.shape, l.dtype) for k, l in zip(ks, leaves)])
  return jax.tree_util.tree_unflatten(tree, draw(keys))


def diffloss_term(prior: adm_unet.ADMUNet, schedule, prior_params, restored, target, key):
  """DiffLoss's term (restorejax.losses.diffloss, weights gamma = lambda = 1e-3) with the prior's
  network, schedule and parameters given instead of read from a run directory."""
  z = 2.0 * restored.astype(jnp.float32) - 1.0
  x = jax.lax.stop_gradient(2.0 * target.astype(jnp.float32) - 1.0)
  key_t, key_eps = jax.random.split(key)
  i = jax.random.randint(key_t, (z.shape[0],), 0, schedule.num_steps)
  eps = jax.random.normal(key_eps, z.shape, jnp.float32)
  t = schedule.model_t[i]
  params = jax.lax.stop_gradient(prior_params)
  out_x, h_x = jax.lax.stop_gradient(prior.apply({"params": params}, objectives.q_sample_step(x, i, eps, schedule), t))
  out_z, h_z = prior.apply({"params": params}, objectives.q_sample_step(z, i, eps, schedule), t)
  nat = jnp.mean(jnp.square(out_z[..., :3] - out_x[..., :3]))
  sem = jnp.mean(jnp.square(h_z - h_x))
  return 1e-3 * (nat + 1e-3 * sem)


class JaxCase:
  """One case's restorejax train step: bf16 compute, float32 parameters, AdamW, clipping, donated state."""

  def __init__(self, case: dict[str, Any], dtype: str):
    b, s = case["batch"], case["size"]
    rng = np.random.default_rng(0)
    target = rng.uniform(size=(b, s, s, 3)).astype(np.float32)
    self.batch = {"target": jnp.asarray(target),
                  "degraded": jnp.asarray(np.clip(target + 0.1 * rng.normal(size=target.shape), 0, 1),
                                          jnp.float32)}
    self.images = b
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-4, b1=0.9, b2=0.9))
    aux = {}
    prior = schedule = None
    if case.get("prior"):
      prior = adm_unet.build(case["prior"], dtype=dtype)
      schedule = schedules.make("linear", 1000)
      side = prior.image_size
      aux = {"prior": random_params(prior, jnp.zeros((1, side, side, 3)), jnp.zeros((1,)))}

    def make_step(model):
      def loss_fn(params, batch, aux, key):
        restored = model.apply({"params": params}, batch["degraded"])
        loss = jnp.mean(jnp.abs(restored - batch["target"]))
        if prior is not None:
          loss = loss + diffloss_term(prior, schedule, aux["prior"], restored, batch["target"], key)
        return loss

      def step(state, batch, aux):
        params, opt_state, count = state
        key = jax.random.fold_in(jax.random.PRNGKey(0), count)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, aux, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, count + 1), loss
      return step

    model = build_model(case, dtype)
    params = random_params(model, self.batch["degraded"][:1])
    self.state = (params, tx.init(params), jnp.int32(0))
    self.aux = aux
    t0 = time.perf_counter()
    self.step = jax.jit(make_step(model), donate_argnums=(0,)).lower(self.state, self.batch, aux).compile()
    self.compile_s = time.perf_counter() - t0
    # XLA counts a scanned body once: count FLOPs on the unrolled network (lowered only, not compiled).
    unrolled = build_model(case, dtype, scan=False)
    shapes = lambda tree: jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    try:
      # The unrolled network keeps its blocks' parameters apart (not stacked): its own parameter shapes.
      u_params = jax.eval_shape(lambda: random_params(unrolled, self.batch["degraded"][:1]))
      u_state = (u_params, jax.eval_shape(tx.init, u_params), jax.ShapeDtypeStruct((), jnp.int32))
      cost = jax.jit(make_step(unrolled)).lower(u_state, shapes(self.batch), shapes(aux)).cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      self.flops = float((cost or {}).get("flops", 0.0))
    except Exception as e:  # pylint: disable=broad-except  (a missing estimate must not stop the benchmark)
      print(f"restorejax.bench_gpu: no FLOP count for {case['name']} ({type(e).__name__}: {e})"[:300],
            file=sys.stderr)
      self.flops = 0.0

  def run(self) -> None:
    self.state, loss = self.step(self.state, self.batch, self.aux)
    loss.block_until_ready()


class TorchCase:
  """The same NAFNet step in PyTorch: torch.compile'd model, bf16 autocast on CUDA, fused AdamW."""

  def __init__(self, case: dict[str, Any], device: str, compile_model: bool):
    import torch  # pylint: disable=g-import-not-at-top  (optional: the `convert` extra)
    from restorejax.bench_torch import nafnet as torch_nafnet  # pylint: disable=g-import-not-at-top
    torch.manual_seed(0)
    self.torch = torch
    self.device = device
    f = case["fields"]
    model = torch_nafnet.NAFNet(img_channel=3, width=f["width"], middle_blk_num=f["middle_blocks"],
                                enc_blk_nums=f["enc_blocks"], dec_blk_nums=f["dec_blocks"]).to(device)
    self.model = model
    self.params = list(model.parameters())
    self.opt = torch.optim.AdamW(self.params, lr=1e-4, betas=(0.9, 0.9), fused=device == "cuda")
    self.forward = torch.compile(model) if compile_model else model
    b, s = case["batch"], case["size"]
    self.target = torch.rand(b, 3, s, s, device=device)
    self.degraded = (self.target + 0.1 * torch.randn_like(self.target)).clamp(0, 1)
    self.images = b
    t0 = time.perf_counter()
    for _ in range(2):  # compiles (forward and backward graphs) on the first call
      self.run()
    self.compile_s = time.perf_counter() - t0

  def run(self) -> None:
    torch = self.torch
    self.opt.zero_grad(set_to_none=True)
    with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.device == "cuda"):
      loss = torch.nn.functional.l1_loss(self.forward(self.degraded).float(), self.target)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, 1.0)
    self.opt.step()
    if self.device == "cuda":
      torch.cuda.synchronize()


def measure(run: Callable[[], None], warmup: int, steps: int, budget_s: float) -> list[float]:
  for _ in range(warmup):
    run()
  times = []
  start = time.perf_counter()
  while len(times) < steps and (len(times) < 3 or time.perf_counter() - start < budget_s):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  return times


def figures(times: list[float], images: int, flops: float, compile_s: float, peak: float) -> dict[str, float]:
  t = statistics.median(times)
  out = {"compile_s": compile_s, "step_ms": 1e3 * t, "step_ms_min": 1e3 * min(times), "steps": len(times),
         "images_per_s": images / t, "tflops_per_s": flops / t / 1e12}
  if peak:
    out["mfu"] = flops / t / peak
  return out


def table(results: dict[str, Any]) -> str:
  head = "| case | side | compile (s) | step (ms) | images/s | TFLOP/s | MFU |"
  rows = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
  for name, r in results["cases"].items():
    for side in ("restorejax", "pytorch"):
      if side in r:
        f = r[side]
        mfu = f"{100 * f['mfu']:.1f}%" if "mfu" in f else "-"
        rows.append(f"| {name} | {side} | {f['compile_s']:.1f} | {f['step_ms']:.2f} | {f['images_per_s']:.1f} "
                    f"| {f['tflops_per_s']:.2f} | {mfu} |")
    if "speed_ratio_restorejax_over_pytorch" in r:
      rows.append(f"| {name} | restorejax / pytorch speed | | **{r['speed_ratio_restorejax_over_pytorch']:.2f}x** "
                  "| | | |")
  return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="write the figures to this JSON file")
  p.add_argument("--dry", action="store_true", help="tiny shapes on the CPU (for CI): checks the script runs")
  p.add_argument("--steps", type=int, default=20, help="timed steps per case and side")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  p.add_argument("--budget_s", type=float, default=15.0, help="stop timing a side after this many seconds")
  p.add_argument("--cases", default="", help="comma-separated subset of the cases (default: all)")
  p.add_argument("--notorch", action="store_true", help="restorejax only")
  p.add_argument("--notorch_compile", action="store_true", help="PyTorch eager instead of torch.compile")
  args = p.parse_args(argv)
  if args.dry:  # before JAX starts its backend: CPU, and quick compiles of the tiny programs
    jax.config.update("jax_platforms", "cpu")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                               " --xla_llvm_disable_expensive_passes=true")
  backend = jax.default_backend()
  if not args.dry and backend != "gpu":
    cli.error(f"no GPU (JAX backend {backend!r}); use --dry to check on a CPU", PROG)
    return 2
  all_cases = cases(args.dry)
  wanted = [c for c in args.cases.split(",") if c]
  unknown = sorted(set(wanted) - {c["name"] for c in all_cases})
  if unknown:
    cli.error(f"--cases: unknown {', '.join(unknown)} (known: {', '.join(c['name'] for c in all_cases)})", PROG)
    return 2
  torch_device = None
  if not args.notorch:
    try:
      import torch  # pylint: disable=g-import-not-at-top  (optional: the `convert` extra)
      torch_device = "cpu" if args.dry else "cuda"
      if torch_device == "cuda" and not torch.cuda.is_available():
        print(f"{PROG}: PyTorch sees no CUDA device; the PyTorch side is left out", file=sys.stderr)
        torch_device = None
    except ImportError:
      print(f"{PROG}: torch is not installed; the PyTorch side is left out", file=sys.stderr)
  dtype = "float32" if args.dry else "bfloat16"
  peak = throughput.peak_flops()
  device = jax.devices()[0]
  results: dict[str, Any] = {"device": device.device_kind, "backend": backend, "jax": jax.__version__,
                             "dtype": dtype, "dry": args.dry, "peak_flops": peak, "cases": {}}
  if torch_device:
    results["torch"] = sys.modules["torch"].__version__
  start = time.perf_counter()
  for case in all_cases:
    if wanted and case["name"] not in wanted:
      continue
    r = {"batch": case["batch"], "size": case["size"], "network": case["net"], "fields": case["fields"]}
    if case.get("prior"):
      r["prior"] = case["prior"]
    ours = JaxCase(case, dtype)
    times = measure(ours.run, args.warmup, args.steps, args.budget_s)
    r["restorejax"] = figures(times, ours.images, ours.flops, ours.compile_s, peak)
    r["gflops_per_step"] = ours.flops / 1e9
    del ours
    if torch_device and case["net"] == "nafnet" and not case.get("prior"):
      theirs = TorchCase(case, torch_device, compile_model=not (args.dry or args.notorch_compile))
      times = measure(theirs.run, args.warmup, args.steps, args.budget_s)
      r["pytorch"] = figures(times, theirs.images, r["gflops_per_step"] * 1e9, theirs.compile_s, peak)
      r["speed_ratio_restorejax_over_pytorch"] = r["pytorch"]["step_ms"] / r["restorejax"]["step_ms"]
      del theirs
    results["cases"][case["name"]] = r
    results["wall_s"] = time.perf_counter() - start
    # Each case's figures as soon as it is done (a run cut short by a time limit keeps the finished ones).
    print(f"{case['name']}: done at {results['wall_s']:.0f} s\n"
          + "\n".join(table({"cases": {case["name"]: r}}).splitlines()[2:]), flush=True)
    _write_json(args.out, results)
  print(table(results))
  _write_json(args.out, results)
  return 0


def _write_json(path: str, results: dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


if __name__ == "__main__":
  sys.exit(main())
