"""Full-image evaluation of a restorer: any number of images of any sizes, batched and sharded over a mesh.

`Evaluator(apply_fn, mesh, batch_sharding, examples, batch_size=..., multiple=...)(params)` restores
every example whole (no crops) and scores it with BasicSR's PSNR / SSIM (`evaluation.metrics`) on its
own pixels only:
- Canvases: each image is padded at its bottom / right onto a canvas whose sides are multiples of
  `multiple` (the network's stride, e.g. 2**levels of a U-Net). `canvas='bucket'` (default) gives an
  image the canvas of its own size rounded up to `multiple`, and batches images of the same canvas
  together: the model compiles once per distinct canvas (one for a set of equal-sized images), and with
  zero padding a network that zero-pads its input to `multiple` itself (NAFNet) sees exactly the input
  it would see alone, so a score does not depend on its batch-mates. `canvas='max'` puts every image
  on one canvas (the largest size rounded up): a single compile, but the padding enters global
  statistics (channel attention) of the smaller images.
- Metrics are computed on the device over each image's region (`metrics.region_psnr/region_ssim`), with
  `crop_border` and `test_y_channel` as in BasicSR; the restored image is rounded to 8 bits first, so a
  score is the score of the saved PNG. Input scores (degraded vs target) are computed once and kept.
- Batches: the examples of each canvas are split into batches of the global `batch_size`; the last
  one is filled with masked-out dummies, so every process runs the same sequence of batches (same
  shapes, same collectives) and dummies never reach a result.
- Data movement: every process holds the (small) list of examples, but the arrays of a batch are built
  with `jax.make_array_from_callback`, which asks each process only for the rows of its own devices;
  a `LazyExample` is decoded only there, so a process reads only its own images. Restored outputs are
  saved (`save_dir`) by the process that holds them; only the per-image scores (and the few images
  of the grid) travel between processes.
- `perceptual=True` adds LPIPS (AlexNet) and NIQE of the restored and of the input images
  (`evaluation.perceptual`; the restored uint8 images are fetched to the host for them) when the
  `perceptual` extra's weights are installed; `EvalResult.notes` says in one line what is absent and why.
- `cache=True` keeps the uint8 input batches on the devices between calls (evaluating during
  training decodes once); `cache=False` rebuilds them every call (large sets, a single evaluation).

Examples are dicts `{'name', 'degraded', 'target'[, 'prior']}` of uint8 HxWx3 arrays (a prior the same
size), or `LazyExample`s for files read on demand. Names must be unique (they name the saved outputs).

Super-resolution (`scale` s > 1): `degraded` is the LR image, exactly 1/s of the target (whose sides
must be multiples of s: mod-crop first), and `apply_fn` returns it s times larger. Canvases are planned
in LR space (multiples of `multiple` there) and the target's canvas is s times that. The input scores
are then the baseline every SR paper reports: the LR image upsampled by MATLAB bicubic (`imresize`,
computed on the host in float64 at the image's exact size, rounded to 8 bits) against the target; they
appear as `bicubic_psnr` / `bicubic_ssim` as well as `input_psnr` / `input_ssim`, and the grid shows the
bicubic image in the degraded column. SR papers score with `crop_border = s` and `test_y_channel=True`
(BasicSR); the caller chooses, `conventions()` states them.
"""

import dataclasses
import os
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from restorejax import sharding
from restorejax.data import images, matlab_resize
from restorejax.evaluation import metrics
from restorejax.evaluation import perceptual as perceptual_lib

METRICS = ("psnr", "ssim", "input_psnr", "input_ssim")
SR_METRICS = METRICS + ("bicubic_psnr", "bicubic_ssim")  # scale > 1: the input scores, named for what they are
IMAGE_KEYS = ("degraded", "target", "prior")
PAD_MODES = ("constant", "edge", "reflect", "symmetric")


@dataclasses.dataclass(frozen=True)
class LazyExample:
  """An example read on demand: `load()` returns {'degraded', 'target'[, 'prior']} uint8 HxWx3 arrays."""

  name: str
  size: tuple[int, int]            # (height, width), known without decoding (e.g. from the file header)
  has_prior: bool
  load: Callable[[], dict[str, np.ndarray]]


@dataclasses.dataclass
class EvalResult:
  means: dict[str, float]          # 'psnr', 'ssim', 'input_psnr', 'input_ssim': means over the images
  per_image: list[dict[str, Any]]  # in example order: name, height, width and the four metrics
  grid: np.ndarray                 # uint8 (k, h, 3 w, 3): degraded | restored | target, centre-cropped
  notes: list[str] = dataclasses.field(default_factory=list)  # e.g. why perceptual metrics are absent


Example = Union[dict, LazyExample]


@dataclasses.dataclass(frozen=True)
class _Batch:
  canvas: tuple[int, int]
  rows: np.ndarray                 # example index per row, -1 for a dummy


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def _num_shards(batch_sharding: NamedSharding) -> int:
  """How many ways the leading (batch) dimension is split."""
  spec = batch_sharding.spec[0] if len(batch_sharding.spec) else None
  axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
  return int(np.prod([batch_sharding.mesh.shape[a] for a in axes]))


class Evaluator:
  """Evaluates `params` on a fixed list of examples; see the module docstring."""

  def __init__(self, apply_fn: Callable, mesh: Mesh, batch_sharding: NamedSharding,
               examples: Sequence[Example], *, batch_size: int, multiple: int, crop_border: int = 0,
               test_y_channel: bool = False, save_dir: Optional[str] = None, canvas: str = "bucket",
               pad_mode: str = "constant", cache: bool = True, grid_count: int = 4, grid_size: int = 256,
               scale: int = 1, perceptual: bool = False):
    """Plans the batches (every process the same plan) and checks the examples.

    Args:
      apply_fn: `apply_fn(params, degraded, prior_or_None) -> restored`, NHWC float32 in [0, 1]; jitted
        here (once per canvas).
      mesh, batch_sharding: where batches live; their leading dimension is split by `batch_sharding`.
      examples: dicts of uint8 HxWx3 arrays or `LazyExample`s (module docstring).
      batch_size: global images per batch, a multiple of the number of batch shards.
      multiple: canvas sides are multiples of this (the network's stride).
      crop_border, test_y_channel: BasicSR metric conventions.
      save_dir: when given, each restored image is written there as `<name>.png` (8-bit RGB).
      canvas: 'bucket' (one canvas per distinct size rounded up to `multiple`) or 'max' (one canvas).
      pad_mode: numpy pad mode filling the canvas ('constant' = zeros, as NAFNet pads itself).
      cache: keep the input batches on the devices between calls.
      grid_count, grid_size: images in the result's grid, and the largest side of its cells.
      scale: super-resolution factor of `apply_fn` (module docstring); 1 for restoration.
      perceptual: also LPIPS and NIQE (restored and input) where their weights are installed.
    """
    del mesh  # the batch sharding carries it
    self.examples = list(examples)
    if not self.examples:
      raise ValueError("Evaluator: no examples to evaluate")
    for name, value in (("batch_size", batch_size), ("multiple", multiple), ("scale", scale)):
      if int(value) != value or value < 1:
        raise ValueError(f"Evaluator: {name} must be a positive int, got {value!r}")
    shards = _num_shards(batch_sharding)
    if batch_size % shards:
      raise ValueError(f"Evaluator: batch_size={batch_size} is not divisible by the {shards} batch "
                       "shards of the mesh")
    if canvas not in ("bucket", "max"):
      raise ValueError(f"Evaluator: canvas must be 'bucket' or 'max', got {canvas!r}")
    if pad_mode not in PAD_MODES:
      raise ValueError(f"Evaluator: pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}")
    if crop_border < 0:
      raise ValueError(f"Evaluator: crop_border must be >= 0, got {crop_border}")
    self.batch_sharding = batch_sharding
    self.scale = int(scale)
    self.metric_names = SR_METRICS if self.scale > 1 else METRICS
    self.batch_size = int(batch_size)
    self.crop_border = int(crop_border)
    self.test_y_channel = bool(test_y_channel)
    self.save_dir = save_dir
    self.pad_mode = pad_mode
    self.cache = cache
    self.perceptual = bool(perceptual)
    self._perceptual_input: Optional[dict[str, np.ndarray]] = None
    self.replicated = NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())

    names = [self._name(e) for e in self.examples]
    seen = set()
    for name in names:
      if name in seen:
        raise ValueError(f"Evaluator: two examples are named {name!r} (names must be unique)")
      seen.add(name)
    self.names = names
    self.sizes = [self._check(i) for i in range(len(self.examples))]
    priors = [self._has_prior(e) for e in self.examples]
    if any(priors) and not all(priors):
      missing = names[priors.index(False)]
      raise ValueError(f"Evaluator: some examples have a prior and {missing!r} has none "
                       "(a set is evaluated with priors for all or none)")
    self.has_prior = all(priors)

    # --- The plan: canvases, then batches of each canvas filled up with dummies ------------------------
    m = int(multiple) * self.scale  # canvases of the target; the LR input's are 1/scale of them
    if canvas == "max":
      top = (_round_up(max(h for h, _ in self.sizes), m), _round_up(max(w for _, w in self.sizes), m))
      canvas_of = [top] * len(self.sizes)
    else:
      canvas_of = [(_round_up(h, m), _round_up(w, m)) for h, w in self.sizes]
    self.canvases = sorted(set(canvas_of))
    self.batches: list[_Batch] = []
    for c in self.canvases:
      rows = [i for i, ci in enumerate(canvas_of) if ci == c]
      rows += [-1] * (-len(rows) % self.batch_size)
      for s in range(0, len(rows), self.batch_size):
        self.batches.append(_Batch(c, np.asarray(rows[s:s + self.batch_size], np.int64)))
    self.grid_rows = list(range(min(grid_count, len(self.examples))))
    self.grid_size = grid_size

    cb, y = self.crop_border, self.test_y_channel
    input_key = "bicubic" if self.scale > 1 else "degraded"

    def step(params, batch):
      degraded = batch["degraded"].astype(jnp.float32) / 255.0
      prior = batch["prior"].astype(jnp.float32) / 255.0 if "prior" in batch else None
      restored = apply_fn(params, degraded, prior)
      if restored.shape[:3] != batch["target"].shape[:3]:
        raise ValueError(f"Evaluator: apply_fn returned shape {restored.shape} for input "
                         f"{degraded.shape}; the evaluation needs the target's size {batch['target'].shape}"
                         f" (scale={self.scale})")
      levels = metrics.to_levels(restored)  # what the saved PNG holds
      scores = {
          "psnr": metrics.region_psnr(levels, batch["target"], batch["hw"], crop_border=cb, test_y_channel=y),
          "ssim": metrics.region_ssim(levels, batch["target"], batch["hw"], crop_border=cb, test_y_channel=y),
      }
      return scores, levels

    def input_step(batch):
      return {
          "input_psnr": metrics.region_psnr(batch[input_key], batch["target"], batch["hw"], crop_border=cb,
                                            test_y_channel=y),
          "input_ssim": metrics.region_ssim(batch[input_key], batch["target"], batch["hw"], crop_border=cb,
                                            test_y_channel=y),
      }

    bs = batch_sharding
    self._step = jax.jit(step, out_shardings=(bs, bs))
    self._input_step = jax.jit(input_step, out_shardings=bs)
    self._take = jax.jit(lambda tree, idx: jax.tree_util.tree_map(lambda a: a[idx], tree),
                         out_shardings=self.replicated)
    self.decoded = 0  # examples this process has loaded (each process loads only its own rows)
    self._device_batches: Optional[list[dict[str, jax.Array]]] = None
    self._input_scores: Optional[dict[str, np.ndarray]] = None

  # --- Examples --------------------------------------------------------------------------------------

  @staticmethod
  def _name(e: Example) -> str:
    name = e.name if isinstance(e, LazyExample) else e.get("name")
    if not isinstance(name, str) or not name:
      raise ValueError(f"Evaluator: every example needs a non-empty string 'name', got {name!r}")
    return name

  @staticmethod
  def _has_prior(e: Example) -> bool:
    return e.has_prior if isinstance(e, LazyExample) else e.get("prior") is not None

  def _check(self, i: int) -> tuple[int, int]:
    """The (h, w) of example i, after checking what can be checked without decoding it."""
    e, name = self.examples[i], self.names[i]
    if isinstance(e, LazyExample):
      h, w = (int(v) for v in e.size)
    else:
      for key in ("degraded", "target"):
        if key not in e:
          raise ValueError(f"Evaluator: example {name!r} has no {key!r}")
      self._check_arrays(name, e, self.scale)
      h, w = e["target"].shape[:2]
    if h % self.scale or w % self.scale:
      raise ValueError(f"Evaluator: example {name!r} is {h}x{w}, not a multiple of scale={self.scale} "
                       "(mod-crop the target first)")
    limit = 2 * self.crop_border + metrics.WINDOW
    if min(h, w) < limit:
      raise ValueError(f"Evaluator: example {name!r} is {h}x{w}; SSIM with crop_border={self.crop_border} "
                       f"needs at least {limit}x{limit}")
    return h, w

  @staticmethod
  def _check_arrays(name: str, arrays: dict[str, Any], scale: int = 1) -> None:
    shape = np.shape(arrays["target"])
    for key in IMAGE_KEYS:
      a = arrays.get(key)
      if a is None:
        continue
      if np.asarray(a).dtype != np.uint8 or np.ndim(a) != 3 or np.shape(a)[-1] != 3:
        raise ValueError(f"Evaluator: example {name!r}: {key} must be uint8 HxWx3, got "
                         f"{np.asarray(a).dtype} {np.shape(a)}")
      f = scale if key == "degraded" else 1
      if tuple(d * f for d in np.shape(a)[:2]) != shape[:2]:
        raise ValueError(f"Evaluator: example {name!r}: {key} is {np.shape(a)[:2]}, the target "
                         f"{shape[:2]} (sizes must match" + (f", the degraded one times scale={scale})"
                                                              if scale > 1 else ")"))

  def _load(self, i: int, canvas: tuple[int, int]) -> dict[str, np.ndarray]:
    """Example i's arrays, padded onto `canvas`."""
    e, name = self.examples[i], self.names[i]
    self.decoded += 1
    if isinstance(e, LazyExample):
      arrays = e.load()
      self._check_arrays(name, arrays, self.scale)
      if arrays["target"].shape[:2] != self.sizes[i]:
        raise ValueError(f"Evaluator: example {name!r} decoded to {arrays['target'].shape[:2]}, "
                         f"its header said {self.sizes[i]}")
    else:
      arrays = e
    h, w = self.sizes[i]
    s = self.scale
    keys = ("degraded", "target") + (("prior",) if self.has_prior else ())
    out = {}
    if s > 1:
      arrays = {**arrays, "bicubic": bicubic_upsample(np.asarray(arrays["degraded"]), s)}
      keys += ("bicubic",)
    for k in keys:
      f = s if k == "degraded" else 1
      pad = ((0, (canvas[0] - h) // f), (0, (canvas[1] - w) // f), (0, 0))
      out[k] = np.pad(np.asarray(arrays[k]), pad, mode=self.pad_mode)
    return out

  # --- Batches ---------------------------------------------------------------------------------------

  def _device_batch(self, b: _Batch) -> dict[str, jax.Array]:
    """Global arrays of one batch; each process loads only the rows its devices hold."""
    loaded: dict[int, dict[str, np.ndarray]] = {}
    n, (ch, cw) = len(b.rows), b.canvas

    def row_arrays(i):
      if i not in loaded:
        loaded[i] = self._load(i, b.canvas)
      return loaded[i]

    def image(key):
      f = self.scale if key == "degraded" else 1
      def fill(index):
        rows = b.rows[index[0]]
        out = np.zeros((len(rows), ch // f, cw // f, 3), np.uint8)
        for j, i in enumerate(rows):
          if i >= 0:
            out[j] = row_arrays(int(i))[key]
        return out[(slice(None),) + tuple(index[1:])]
      return jax.make_array_from_callback((n, ch // f, cw // f, 3), self.batch_sharding, fill)

    hw = np.asarray([self.sizes[i] if i >= 0 else b.canvas for i in b.rows], np.int32)
    keys = (("degraded", "target") + (("prior",) if self.has_prior else ())
            + (("bicubic",) if self.scale > 1 else ()))
    batch = {k: image(k) for k in keys}
    batch["hw"] = jax.make_array_from_callback(hw.shape, self.batch_sharding, lambda idx: hw[idx])
    return batch

  def _batches(self):
    if self._device_batches is not None:
      yield from self._device_batches
      return
    kept = []
    for b in self.batches:
      batch = self._device_batch(b)
      if self.cache:
        kept.append(batch)
      yield batch
    if self.cache:
      self._device_batches = kept

  # --- Outputs ---------------------------------------------------------------------------------------

  def _save(self, b: _Batch, levels: jax.Array) -> None:
    """Writes the restored rows this process holds (one copy of each) as PNGs."""
    for shard in levels.addressable_shards:
      if shard.replica_id != 0:
        continue
      data = np.asarray(shard.data)
      for j, i in enumerate(b.rows[shard.index[0]]):
        if i < 0:
          continue
        h, w = self.sizes[i]
        images.write_png(os.path.join(self.save_dir, f"{self.names[i]}.png"), data[j, :h, :w])

  def _grid(self, cells: dict[int, tuple[np.ndarray, ...]]) -> np.ndarray:
    if not cells:
      return np.zeros((0, 1, 3, 3), np.uint8)
    ch = min(min(self.sizes[i][0] for i in cells), self.grid_size)
    cw = min(min(self.sizes[i][1] for i in cells), self.grid_size)
    rows = []
    for i in self.grid_rows:
      h, w = self.sizes[i]
      y, x = (h - ch) // 2, (w - cw) // 2
      rows.append(np.concatenate([a[y:y + ch, x:x + cw] for a in cells[i]], axis=1))
    return np.stack(rows)

  # --- Evaluation ------------------------------------------------------------------------------------

  def __call__(self, params) -> EvalResult:
    scores, input_scores, grid_parts, crops = [], [], [], {}
    want_grid = set(self.grid_rows)
    for b, batch in zip(self.batches, self._batches()):
      s, levels = self._step(params, batch)
      scores.append(s)
      if self._input_scores is None:
        input_scores.append(self._input_step(batch))
      picks = [j for j, i in enumerate(b.rows) if i in want_grid]
      shown = batch["bicubic" if self.scale > 1 else "degraded"]  # SR: the input at the target's size
      if picks:
        idx = np.asarray(picks, np.int32)
        grid_parts.append((b.rows[idx], self._take((shown, levels, batch["target"]), idx)))
      if self.save_dir:
        self._save(b, levels)
      if self.perceptual and perceptual_lib.metrics_available():
        host_levels, deg, tgt = sharding.to_host((levels, shown, batch["target"]))
        for j, i in enumerate(b.rows):
          if i >= 0:
            h, w = self.sizes[i]
            crops[int(i)] = (host_levels[j, :h, :w], tgt[j, :h, :w], deg[j, :h, :w])

    rows = np.concatenate([b.rows for b in self.batches])
    valid = rows >= 0
    host = {k: np.concatenate([sharding.to_host(s[k]) for s in scores])[valid] for k in ("psnr", "ssim")}
    if self._input_scores is None:
      self._input_scores = {k: np.concatenate([sharding.to_host(s[k]) for s in input_scores])[valid]
                            for k in ("input_psnr", "input_ssim")}
    host.update(self._input_scores)
    if self.scale > 1:
      host.update(bicubic_psnr=host["input_psnr"], bicubic_ssim=host["input_ssim"])
    order = np.argsort(rows[valid], kind="stable")  # batch order -> example order
    per_image = []
    for pos in order:
      i = int(rows[valid][pos])
      h, w = self.sizes[i]
      per_image.append({"name": self.names[i], "height": h, "width": w,
                        **{k: float(host[k][pos]) for k in self.metric_names}})
    notes = []
    if self.perceptual:
      self._add_perceptual(per_image, crops)
      if perceptual_lib.missing():
        notes.append(perceptual_lib.missing())
    names = [k for k in (*self.metric_names, *perceptual_lib.METRICS) if k in per_image[0]]
    means = {k: _mean_of_finite([r[k] for r in per_image]) if k in perceptual_lib.METRICS
             else float(np.mean([r[k] for r in per_image])) for k in names}

    cells = {}
    for example_rows, part in grid_parts:
      deg, res, tgt = sharding.to_host(part)
      for j, i in enumerate(example_rows):
        h, w = self.sizes[i]
        cells[int(i)] = (deg[j, :h, :w], res[j, :h, :w], tgt[j, :h, :w])
    return EvalResult(means=means, per_image=per_image, grid=self._grid(cells), notes=notes)

  def _add_perceptual(self, per_image: list[dict[str, Any]], crops: dict[int, tuple]) -> None:
    """Adds LPIPS / NIQE (those available) to each row; input scores are computed once."""
    if not crops:
      return
    index = {n: i for i, n in enumerate(self.names)}
    order = [index[r["name"]] for r in per_image]
    res, tgt, deg = ([crops[i][k] for i in order] for k in range(3))
    s = perceptual_lib.score(res, tgt, deg, crop_border=self.crop_border,
                             with_input=self._perceptual_input is None)
    if self._perceptual_input is None:
      self._perceptual_input = {k: s[k] for k in s if k.startswith("input_")}
    s.update(self._perceptual_input)
    for j, r in enumerate(per_image):
      r.update({k: float(v[j]) for k, v in s.items()})


def _mean_of_finite(values: list[float]) -> float:
  """Mean over the images that have the metric (NIQE is NaN on images under two 96x96 blocks); NaN if none."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  return float(v.mean()) if v.size else float("nan")


def bicubic_upsample(lr: np.ndarray, scale: int) -> np.ndarray:
  """uint8 HxWx3 -> MATLAB `imresize(lr, scale, 'bicubic')` rounded to uint8: the SR baseline."""
  h, w = lr.shape[:2]
  mh = matlab_resize.resize_matrix(h, h * scale)
  mw = matlab_resize.resize_matrix(w, w * scale)
  up = np.einsum("oh,hwc,pw->opc", mh, lr.astype(np.float64) / 255.0, mw)
  return np.round(np.clip(up, 0.0, 1.0) * 255.0).astype(np.uint8)


def conventions(crop_border: int, test_y_channel: bool, scale: int = 1) -> dict[str, Any]:
  """The metric conventions, to be stated next to every number reported."""
  out = {"metric_convention": "BasicSR", "crop_border": int(crop_border),
         "test_y_channel": bool(test_y_channel), "restored_rounded_to_uint8": True}
  if scale > 1:
    out.update(scale=int(scale), input_scores="bicubic upsampling of the LR input (MATLAB imresize)")
  return out
