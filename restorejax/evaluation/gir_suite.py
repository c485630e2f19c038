"""The GIR test suite: 100 seeded synthetic degradation tasks built on disk from any ground truth, plus
slots for real-degradation sets, and a model's per-task scores on it.

Tasks (`suite(seed)`), each named `<ops joined by '+' in degrade.OPS order>@<ranges>`:
- 15 single degradations: each of the 8 `degrade.OPS` at the training ranges and, except `downup`
  (whose harder range is its training range), at the harder ranges (`degrade.RANGES`, MiOIR's);
- 56 pairs: every pair of ops at both ranges;
- 29 triples drawn by the seed from the 56 triples x 2 ranges.
Names do not depend on the seed; which triples are in does. Image j of task t is
`degrade.compose(key, gt_j, applied=t's ops, ranges=t's ranges)` with
`key = fold_in(fold_in(PRNGKey(seed), crc32(t.name)), j)`, so a task's images depend only on the seed,
its name and the ground truth, never on the other tasks.

On disk (`build(gt, out_dir, seed=...)`): `gt/<stem>.png` (the ground truth as 8-bit RGB),
`tasks/<task>/<stem>.png` (degraded, 8-bit like every degradation's output) and `manifest.json` (seed,
tasks with their ops and ranges, image stems, real sets). `gt` is a folder of images or 'default'
(procedural dead-leaves images, so the protocol runs with no download). Building is deterministic:
the same seed and ground truth give the same bytes on the same platform (another accelerator may round a
few pixels differently). Cost: one compile per (image shape, ranges); a task then costs one call of
the degradations it applies (`jax.lax.cond` on a per-task flag skips the others).

Real-degradation sets are paired folders given as `RealSet(name, degraded, target[, prior])`, scored as
task `real:<name>`; they take part in AR / ER / RPR like the synthetic tasks when the lines cover them.
"""

import dataclasses
import functools
import itertools
import json
import os
import zlib
from typing import Any, Callable, Optional, Sequence

import numpy as np

from restorejax.data import degrade, images, procedural
from restorejax.evaluation import datasets, scoring
from restorejax.evaluation import perceptual as perceptual_lib
from restorejax.evaluation.scoring import LazyExample

MANIFEST = "manifest.json"
NUM_TASKS = 100
NUM_TRIPLES = 29
CHUNK = 16  # at most this many images degraded per call


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  ops: tuple[str, ...]  # in degrade.OPS order
  ranges: str           # 'train' | 'harder'


@dataclasses.dataclass(frozen=True)
class RealSet:
  name: str
  degraded: str
  target: str
  prior: Optional[str] = None

  @property
  def task(self) -> str:
    return f"real:{self.name}"


def _task(ops: Sequence[str], ranges: str) -> Task:
  ops = tuple(o for o in degrade.OPS if o in ops)
  return Task(name=f"{'+'.join(ops)}@{ranges}", ops=ops, ranges=ranges)


def suite(seed: int = 0) -> list[Task]:
  """The 100 tasks of the suite for `seed` (see the module docstring)."""
  singles = [_task((o,), r) for r in ("train", "harder") for o in degrade.OPS
             if r == "train" or not _same_ranges(o)]
  pairs = [_task(p, r) for r in ("train", "harder") for p in itertools.combinations(degrade.OPS, 2)]
  triples = [_task(t, r) for r in ("train", "harder") for t in itertools.combinations(degrade.OPS, 3)]
  chosen = np.random.default_rng([seed, 4427]).choice(len(triples), NUM_TRIPLES, replace=False)
  tasks = singles + pairs + [triples[i] for i in sorted(chosen)]
  assert len(tasks) == NUM_TASKS and len({t.name for t in tasks}) == NUM_TASKS
  return tasks


def _same_ranges(op: str) -> bool:
  """Whether an op's harder ranges equal its training ones (then 'op@harder' would repeat 'op@train')."""
  keys = [k for k in degrade.RANGES["train"] if k.split("_")[0] == op]
  return all(degrade.RANGES["train"][k] == degrade.RANGES["harder"][k] for k in keys)


def parse_real(spec: str) -> RealSet:
  """'NAME=DEGRADED_DIR,TARGET_DIR[,PRIOR_DIR]' -> RealSet."""
  name, _, dirs = spec.partition("=")
  parts = dirs.split(",") if dirs else []
  if not name or len(parts) not in (2, 3) or not all(parts):
    raise ValueError(f"--real={spec}: expected NAME=DEGRADED_DIR,TARGET_DIR[,PRIOR_DIR]")
  return RealSet(name, *parts)


# ----------------------------------------------------------------------------------------------------
# Building the suite on disk.


def default_gt(num_images: int = 16, size: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
  """Procedural dead-leaves ground truth (stem -> uint8 RGB), a pure function of its arguments."""
  source = procedural.DeadLeavesSource(num_images=num_images, size=size, seed=seed + 7_000_003)
  return {f"dl{i:03d}": np.asarray(source[i]["target"]) for i in range(num_images)}


def read_gt(folder: str) -> dict[str, np.ndarray]:
  """stem -> uint8 RGB of every image file directly in `folder` (converted with images.to_rgb8)."""
  files = datasets._image_files(folder, "ground-truth")  # pylint: disable=protected-access
  return {stem: datasets.read_rgb8(path) for stem, path in files.items()}


@functools.lru_cache(maxsize=None)
def _degrader(ranges: str) -> Callable:
  """jit(vmap(compose)) over a chunk of images sharing one task's flags (compiled per image shape)."""
  import jax  # pylint: disable=g-import-not-at-top
  fn = lambda key, image, applied: degrade.compose(key, image, applied, ranges=ranges)
  return jax.jit(jax.vmap(fn, in_axes=(0, 0, None)))


def degrade_task(task: Task, gt: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
  """stem -> the task's degraded uint8 image of each ground truth (see the module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  stems = list(gt)
  task_key = jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(task.name.encode()))
  applied = jnp.asarray([o in task.ops for o in degrade.OPS])
  by_shape: dict[tuple, list[int]] = {}
  for j, stem in enumerate(stems):
    by_shape.setdefault(gt[stem].shape, []).append(j)
  out = {}
  fn = _degrader(task.ranges)
  for members in by_shape.values():
    size = min(CHUNK, len(members))
    for s in range(0, len(members), size):
      chunk = members[s:s + size]
      padded = chunk + [chunk[-1]] * (size - len(chunk))  # one compiled batch shape per image shape
      keys = jnp.stack([jax.random.fold_in(task_key, j) for j in padded])
      x = jnp.asarray(np.stack([gt[stems[j]] for j in padded]), jnp.float32) / 255.0
      y = np.asarray(jax.device_get(fn(keys, x, applied)))
      for j, img in zip(chunk, y):
        out[stems[j]] = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
  return out


def _manifest(seed: int, gt_source: str, stems: list[str], tasks: list[Task],
              real: Sequence[RealSet]) -> dict[str, Any]:
  return {
      "protocol": "GIR synthetic suite (restorejax.evaluation.gir_suite)", "version": 1, "seed": seed,
      "gt": {"source": gt_source, "dir": "gt", "images": stems},
      "tasks": [{"name": t.name, "ops": list(t.ops), "ranges": t.ranges, "dir": f"tasks/{t.name}"}
                for t in tasks],
      "real": [dataclasses.asdict(r) for r in real],
  }


def build(gt: str, out_dir: str, *, seed: int = 0, real: Sequence[RealSet] = (),
          tasks: Optional[Sequence[Task]] = None, default_images: int = 16,
          default_size: int = 64) -> dict[str, Any]:
  """Writes the suite for `gt` (a folder or 'default') into `out_dir` and returns its manifest.

  A suite already there with the same manifest is reused; a different one is an error (never mixed).
  """
  tasks = list(suite(seed) if tasks is None else tasks)
  if gt == "default":
    source = f"default (dead leaves, {default_images} images of {default_size}x{default_size})"
    truth = default_gt(default_images, default_size, seed)
  else:
    source = os.path.abspath(gt)
    truth = read_gt(gt)
  for r in real:
    for role, d in (("degraded", r.degraded), ("target", r.target), ("prior", r.prior)):
      if d and not os.path.isdir(d):
        raise ValueError(f"real set {r.name!r}: {role} folder {d}: no such directory")
  manifest = _manifest(seed, source, sorted(truth), tasks, real)
  path = os.path.join(out_dir, MANIFEST)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      existing = json.load(f)
    if existing == manifest:
      return existing
    raise ValueError(f"{out_dir}: holds another GIR suite (different seed, ground truth, tasks or real "
                     "sets); remove it or choose another directory")
  for stem in sorted(truth):
    images.write_png(os.path.join(out_dir, "gt", f"{stem}.png"), truth[stem])
  truth = {stem: truth[stem] for stem in sorted(truth)}
  for t in tasks:
    for stem, img in degrade_task(t, truth, seed).items():
      images.write_png(os.path.join(out_dir, "tasks", t.name, f"{stem}.png"), img)
  with open(path + ".tmp", "w", encoding="utf-8") as f:  # written last: a complete suite has one
    json.dump(manifest, f, indent=1)
  os.replace(path + ".tmp", path)
  return manifest


def load_manifest(suite_dir: str) -> dict[str, Any]:
  path = os.path.join(suite_dir, MANIFEST)
  if not os.path.exists(path):
    raise ValueError(f"{suite_dir}: no {MANIFEST} (not a built GIR suite)")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


# ----------------------------------------------------------------------------------------------------
# Scoring a model on the suite.


def examples(suite_dir: str) -> dict[str, list]:
  """task name -> lazily read examples (named '<task>/<stem>') of every task and real set of a suite."""
  manifest = load_manifest(suite_dir)
  gt_dir = os.path.join(suite_dir, manifest["gt"]["dir"])
  out = {}
  for t in manifest["tasks"]:
    task_dir = os.path.join(suite_dir, t["dir"])
    out[t["name"]] = []
    for stem in manifest["gt"]["images"]:
      gt_path, degraded_path = os.path.join(gt_dir, f"{stem}.png"), os.path.join(task_dir, f"{stem}.png")
      out[t["name"]].append(LazyExample(
          name=f"{t['name']}/{stem}", size=datasets.header_size(gt_path), has_prior=False,
          load=functools.partial(_load_synthetic, degraded_path, gt_path)))
  for r in manifest["real"]:
    real = RealSet(**r)
    out[real.task] = [dataclasses.replace(e, name=f"{real.task}/{e.name}")
                      for e in datasets.folder(real.degraded, real.target, real.prior)]
  return out


def _load_synthetic(degraded: str, target: str) -> dict[str, np.ndarray]:
  return {"degraded": datasets.read_rgb8(degraded), "target": datasets.read_rgb8(target)}


def score(apply_fn: Callable, params: Any, mesh, batch_sharding, suite_dir: str, *, batch_size: int,
          multiple: int, pad_mode: str = "constant", crop_border: int = 0, test_y_channel: bool = False,
          perceptual: bool = False) -> dict[str, dict[str, float]]:
  """task -> {'psnr', 'ssim', 'input_psnr', 'input_ssim'}: means over the task's images (BasicSR); with
  `perceptual`, also 'lpips' and 'niqe' (and their input_ scores) where their weights are installed
  (NIQE: means over the images large enough for it, absent for a task with none).

  All tasks go through one evaluator per prior status (synthetic tasks have none), so the model
  compiles once per image canvas, not once per task.
  """
  by_task = examples(suite_dir)
  groups: dict[bool, list] = {}
  for exs in by_task.values():
    for e in exs:
      groups.setdefault(e.has_prior, []).append(e)
  rows = []
  for exs in groups.values():
    ev = scoring.Evaluator(apply_fn, mesh, batch_sharding, exs, batch_size=batch_size, multiple=multiple,
                             pad_mode=pad_mode, crop_border=crop_border, test_y_channel=test_y_channel,
                             cache=False, grid_count=0, perceptual=perceptual)
    rows += ev(params).per_image
  per_task: dict[str, list] = {}
  for row in rows:
    per_task.setdefault(row["name"].rsplit("/", 1)[0], []).append(row)
  out = {}
  for task in by_task:
    rows = per_task[task]
    out[task] = {k: float(np.mean([r[k] for r in rows])) for k in scoring.METRICS}
    for k in sorted({k for r in rows for k in r} & set(perceptual_lib.METRICS)):
      finite = [r[k] for r in rows if k in r and np.isfinite(r[k])]
      if finite:
        out[task][k] = float(np.mean(finite))
  return out
