"""The host input pipeline (grain): source -> shuffle -> repeat -> host slice -> decode -> crop/augment -> batch.

Every element carries `index`, its position in the global (all-process) stream, unique across epochs and
processes. Crops and flips are drawn from `(seed, index)` and the on-device degradations and simulated
priors are keyed by it too, so a batch is the same whatever the number of processes, prefetch workers or
devices, and an iterator restored from a checkpoint continues exactly. The iterator's state lives in the
trainer's checkpoints (grain's orbax handler).

Sources (`config.data.source`, with a config block of the same name; `SOURCES`):
- `procedural`: embedded dead-leaves targets (no download).
- `records`: triple datasets built by `restorejax.data.build` (`path`: one directory or several,
  comma-separated; `eval_path`: the held-out set the trainer evaluates on; `tasks`: label order).
- `tfds`: a TFDS dataset prepared as ArrayRecord (`name`, `config`, `split`, `eval_split`, `data_dir`,
  `keys` mapping our image keys to its features, e.g. "target=hr"); the builders of
  `restorejax.data.tfds_builders` are registered on use.
- `mixture`: several of the above mixed with weights (grain `MapDataset.mix`); each component block has
  `source`, its source's block, `weight` and `task` (int id; default its position in name order).
  Components must hold the same images. Its eval set is the concatenation of the components' eval sets.

Images stay encoded (PNG bytes) until the decode map step, which runs in the prefetch workers. The prior
goes into batches only with `config.data.use_prior` (one override for the no-prior ablation); for a
source without priors, `config.data.simulated_prior.enabled` adds `prior_severity` so that the trainer
synthesises a prior from the target on the device (`restorejax.data.priors.simulate_prior`).

Host batches are dicts of numpy arrays leading with the per-process batch dimension: `target` uint8
(B, P, P, 3); `degraded` / `prior` uint8 of the same shape when the source has them; `index` int64 (B,);
`task` int32 (B,) when the source has task labels; `prior_severity` float32 (B,) for simulated priors.

Super-resolution (`config.data.scale` = s > 1; 1 is restoration): `target` is the HR patch (P a multiple
of s); a source's `degraded` is the LR image, exactly 1/s of its target (the dataset builder pairs and
mod-crops them), cropped at (y/s, x/s) with size P/s so that the LR patch is the HR patch / s, and
flipped / rotated with it: `degraded` (B, P/s, P/s, 3). Without one, the trainer makes it on the device
(`restorejax.data.degrade`, recipe 'sr'). Held-out targets are mod-cropped to multiples of s.
"""

import dataclasses
from typing import Any, Callable, Optional

import grain
from absl import flags
import ml_collections
import numpy as np

from restorejax.data import procedural, records

IMAGE_KEYS = ("degraded", "prior", "target")
PASSTHROUGH = ("task", "prior_severity", "prior_mask")   # per-example values kept through cropping
_EVAL_SEED_OFFSET = 1_000_003


# ----------------------------------------------------------------------------------------------------
# Sources: `fn(config block, split) -> random-access source` with optional `image_keys`, `has_task`.
# ----------------------------------------------------------------------------------------------------

def _procedural(cfg: ml_collections.ConfigDict, split: str):
  seed = cfg.seed + (0 if split == "train" else _EVAL_SEED_OFFSET)  # held-out images from another seed
  num = cfg.num_images if split == "train" else cfg.eval_num_images
  size = cfg.image_size if split == "train" else cfg.eval_image_size
  return procedural.DeadLeavesSource(num_images=num, size=size, seed=seed)


def _records(cfg: ml_collections.ConfigDict, split: str):
  key = "path" if split == "train" else "eval_path"
  paths = cfg.get(key, "")
  if not records.split_paths(paths):
    raise records.NoSplit(f"config.data.records.{key}: empty (the {split} dataset directory)")
  try:
    return records.TripleSource(paths, decoded=False, tasks=tuple(cfg.get("tasks", ())))
  except ValueError as e:
    raise ValueError(f"config.data.records.{key}: {e}") from None


class TfdsSource:
  """A TFDS dataset prepared as ArrayRecord, images left encoded (decoded by the pipeline's map step)."""

  def __init__(self, name: str, split: str, data_dir: str = "", keys: str = ""):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (only for this source)
    from restorejax.data import tfds_builders  # pylint: disable=g-import-not-at-top  (registers ours)
    del tfds_builders
    try:
      builder = tfds.builder(name, data_dir=data_dir or None)
    except Exception as e:  # pylint: disable=broad-except  (tfds raises many kinds for a bad name)
      raise ValueError(f"config.data.tfds.name: cannot load {name!r} ({' '.join(str(e).split())[:200]})") from None
    features = builder.info.features
    mapping = {k: k for k in IMAGE_KEYS if k in features}
    for item in filter(None, (s.strip() for s in keys.split(","))):
      ours, _, theirs = item.partition("=")
      if ours not in IMAGE_KEYS or theirs not in features:
        raise ValueError(f"config.data.tfds.keys: {item!r} must be <{'|'.join(IMAGE_KEYS)}>=<feature of "
                         f"{name}: {', '.join(features)}>")
      mapping[ours] = theirs
    if "target" not in mapping:
      raise ValueError(f"config.data.tfds.keys: {name} has no 'target' feature; map one, e.g. target=image "
                       f"(features: {', '.join(features)})")
    if not builder.is_prepared():
      raise ValueError(f"config.data.tfds.name: {name} is not prepared in {builder.data_dir_root}; "
                       "prepare it first (see restorejax/data/tfds_builders.py)")
    if split not in builder.info.splits:
      raise records.NoSplit(f"config.data.tfds: {name} has no split {split!r} "
                            f"(it has {', '.join(builder.info.splits)})")
    self.name, self.split = name, split
    self.image_keys = tuple(k for k in IMAGE_KEYS if k in mapping)
    self.has_task = False
    self._mapping = {k: mapping[k] for k in self.image_keys}
    self._has_name = "name" in features
    self._source = tfds.data_source(
        name, split=split, data_dir=data_dir or None, download=False,
        decoders={f: tfds.decode.SkipDecoding() for f in self._mapping.values()})

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    ex = self._source[index]
    out = {k: ex[f] for k, f in self._mapping.items()}
    if self._has_name:
      out["name"] = ex["name"].decode() if isinstance(ex["name"], bytes) else str(ex["name"])
    return out

  def __repr__(self) -> str:
    return f"TfdsSource({self.name}, {self.split})"


def _tfds(cfg: ml_collections.ConfigDict, split: str):
  name = cfg.get("name", "")
  if not name:
    raise ValueError("config.data.tfds.name: empty (the TFDS dataset to read)")
  if cfg.get("config", ""):
    name = f"{name}/{cfg.config}"
  tfds_split = cfg.get("split", "train") if split == "train" else cfg.get("eval_split", "")
  if not tfds_split:
    raise records.NoSplit("config.data.tfds.eval_split: empty (the split the trainer evaluates on)")
  return TfdsSource(name, tfds_split, cfg.get("data_dir", ""), cfg.get("keys", ""))


@dataclasses.dataclass(frozen=True)
class SetTask(grain.transforms.Map):
  task: int

  def map(self, example: dict[str, Any]) -> dict[str, Any]:
    return {**example, "task": np.int32(self.task)}


class Mixture:
  """Component sources mixed by weight for training; concatenated (with their tasks) for evaluation."""

  def __init__(self, components: list[tuple[str, Any, float, int]]):
    self.components = components
    layouts = {n: tuple(getattr(s, "image_keys", ("target",))) for n, s, _, _ in components}
    if len(set(layouts.values())) > 1:
      raise ValueError("config.data.mixture: components must hold the same images ("
                       + "; ".join(f"{n}: {', '.join(k)}" for n, k in layouts.items()) + ")")
    self.image_keys = next(iter(layouts.values()))
    self.has_task = True
    self.sizes = None
    self._offsets = np.cumsum([0] + [len(s) for _, s, _, _ in components])

  def train_dataset(self, seed: int) -> grain.MapDataset:
    parts = [grain.MapDataset.source(s).shuffle(seed=seed + i).repeat().map(SetTask(task))
             for i, (_, s, _, task) in enumerate(self.components)]
    return grain.MapDataset.mix(parts, weights=[w for _, _, w, _ in self.components])

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def __getitem__(self, index: int) -> dict[str, Any]:
    c = int(np.searchsorted(self._offsets, index, side="right")) - 1
    _, src, _, task = self.components[c]
    return {**src[index - int(self._offsets[c])], "task": np.int32(task)}


def _mixture(cfg: ml_collections.ConfigDict, split: str):
  if cfg is None or len(cfg) == 0:
    raise ValueError("config.data.mixture: no components (give each a block with source, weight, task)")
  components = []
  for i, (name, comp) in enumerate(cfg.items()):
    where = f"config.data.mixture.{name}"
    if "source" not in comp or comp["source"] in ("mixture", None):
      raise ValueError(f"{where}.source: missing or not a single source")
    weight = float(comp.get("weight", 1.0))
    if weight <= 0:
      raise ValueError(f"{where}.weight: must be positive, got {weight}")
    try:
      src = source(comp, split)
    except records.NoSplit as e:
      if split == "train":
        raise ValueError(f"{where}: {e}") from None
      continue  # a component without a held-out set is left out of evaluation
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    components.append((name, src, weight, int(comp.get("task", i))))
  if not components:
    raise records.NoSplit(f"config.data.mixture: no component has a {split} set")
  return Mixture(components)


SOURCES: dict[str, Callable[[ml_collections.ConfigDict, str], Any]] = {
    "procedural": _procedural,
    "records": _records,
    "tfds": _tfds,
    "mixture": _mixture,
}


def source(cfg: ml_collections.ConfigDict, split: str):
  """A random-access source for `config.data` (or a mixture component) and split 'train' or 'eval'."""
  if cfg.source not in SOURCES:
    raise ValueError(f"config.data.source: unknown source {cfg.source!r} "
                     f"(known: {', '.join(sorted(SOURCES))})")
  if cfg.source not in cfg:
    raise ValueError(f"config.data.{cfg.source}: missing (the block configuring that source)")
  return SOURCES[cfg.source](cfg[cfg.source], split)


# ----------------------------------------------------------------------------------------------------
# What goes into a batch.
# ----------------------------------------------------------------------------------------------------

def image_keys(config: ml_collections.ConfigDict, src) -> tuple[str, ...]:
  """The image keys of `src` that go into batches (the prior only with `config.data.use_prior`)."""
  keys = tuple(getattr(src, "image_keys", ("target",)))
  if not config.data.get("use_prior", True):
    keys = tuple(k for k in keys if k != "prior")
  return keys


def simulated_severity(config: ml_collections.ConfigDict, keys: tuple[str, ...]) -> Optional[tuple[float, float]]:
  """The severity range of simulated priors when the batch gets them (`prior_severity`), else None."""
  sim = config.data.get("simulated_prior", None)
  if not config.data.get("use_prior", True) or "prior" in keys or not sim or not sim.get("enabled", False):
    return None
  lo, hi = (float(v) for v in sim.get("severity", (0.2, 0.6)))
  if not 0.0 <= lo <= hi <= 1.0:
    raise ValueError(f"config.data.simulated_prior.severity: need 0 <= low <= high <= 1, got {(lo, hi)}")
  return lo, hi


@dataclasses.dataclass(frozen=True)
class Decode(grain.transforms.Map):
  """Encoded images -> uint8 (H, W, 3) for `keys` (others dropped), task as int32, prior severity drawn.

  The severity comes from `(seed, index)` like the crops, so a resumed stream draws the same ones.
  """

  keys: tuple[str, ...]
  seed: int
  severity: Optional[tuple[float, float]] = None

  def map(self, example: dict[str, Any]) -> dict[str, Any]:
    out = {"index": np.int64(example["index"])}
    for k in self.keys:
      if k != "target" and isinstance(example[k], bytes) and not example[k]:
        continue  # an absent prior (records `prior_absent`): zeros below
      out[k] = records.decode_image(example[k])
    if "prior_mask" in example and "prior" in self.keys:
      out["prior_mask"] = np.bool_(example["prior_mask"])
      if "prior" not in out:
        out["prior"] = np.zeros_like(out["target"])
    if "task" in example:
      out["task"] = np.int32(example["task"])
    if self.severity is not None:
      rng = np.random.default_rng([self.seed, 11, int(example["index"])])
      out["prior_severity"] = np.float32(rng.uniform(*self.severity))
    if "name" in example:
      out["name"] = example["name"]
    return out


@dataclasses.dataclass(frozen=True)
class CropAndAugment(grain.transforms.Map):
  """The same random `patch` crop of every image of an example, then one of the 8 flips/rotations.

  Randomness comes from `(seed, index)`, not grain's per-worker rng, so that an example is cropped the same
  whatever process or worker reads it.
  """

  patch: int
  seed: int
  augment: bool = True
  scale: int = 1          # super-resolution: `degraded` is 1/scale of the target, cropped aligned

  def map(self, example: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng([self.seed, 7, int(example["index"])])
    images = {k: example[k] for k in IMAGE_KEYS if k in example}
    h, w = images["target"].shape[:2]
    name = example.get("name", example["index"])
    s = self.scale
    if h < self.patch or w < self.patch:
      raise ValueError(f"image {name} is {h}x{w}, smaller than config.data.patch_size={self.patch}")
    for k, im in images.items():
      want = (h // s, w // s) if k == "degraded" else (h, w)
      if im.shape[:2] != want:
        raise ValueError(f"image {name}: {k} is {im.shape[0]}x{im.shape[1]}, expected {want[0]}x{want[1]} "
                         f"(target {h}x{w}, config.data.scale={s})")
    # Positions on the LR grid (multiples of s in the HR image), so that LR patch = HR patch / s.
    y = s * rng.integers(0, (h - self.patch) // s + 1)
    x = s * rng.integers(0, (w - self.patch) // s + 1)
    flip, rot = (rng.integers(0, 2), rng.integers(0, 4)) if self.augment else (0, 0)
    out = {"index": np.int64(example["index"])}
    for k, im in images.items():
      f = s if k == "degraded" else 1
      im = im[y // f:(y + self.patch) // f, x // f:(x + self.patch) // f]
      im = im[:, ::-1] if flip else im
      out[k] = np.ascontiguousarray(np.rot90(im, rot))
    out.update({k: example[k] for k in PASSTHROUGH if k in example})
    return out


def _add_index(index: int, example: dict[str, Any]) -> dict[str, Any]:
  return {**example, "index": index}


def scale(config: ml_collections.ConfigDict) -> int:
  """`config.data.scale` (1 when absent: restoration), checked against the patch size."""
  s = config.data.get("scale", 1)
  if int(s) != s or s < 1:
    raise ValueError(f"config.data.scale: need a positive integer, got {s!r}")
  if config.data.patch_size % s:
    raise ValueError(f"config.data.patch_size={config.data.patch_size} is not a multiple of "
                     f"config.data.scale={s} (the LR patch is patch_size / scale)")
  return int(s)


def _check_patch(config: ml_collections.ConfigDict, src) -> None:
  for _, component, _, _ in getattr(src, "components", ()):
    _check_patch(config, component)
  src_scale = getattr(src, "scale", None)
  if src_scale is not None and src_scale != scale(config):
    raise ValueError(f"config.data.scale={scale(config)}, but the degraded images of {src!r} are 1/{src_scale} "
                     f"of their targets (built with --scale {src_scale}); set --config.data.scale={src_scale}")
  sizes = getattr(src, "sizes", None)
  p = config.data.patch_size
  if sizes and len(src) and min(sizes["min"]) < p:
    raise ValueError(f"config.data.patch_size={p} is larger than the smallest image of {src!r} "
                     f"({sizes['min'][0]}x{sizes['min'][1]} min height x width); rebuild with "
                     f"--min-size={p} or lower the patch size")


# ----------------------------------------------------------------------------------------------------
# Streams.
# ----------------------------------------------------------------------------------------------------

def train_dataset(config: ml_collections.ConfigDict, *, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """The training stream of this process: `config.data.batch_size // process_count` examples a batch."""
  cfg = config.data
  if cfg.batch_size % process_count:
    raise ValueError(f"config.data.batch_size={cfg.batch_size} is not divisible by the "
                     f"{process_count} processes")
  src = source(cfg, "train")
  if not len(src):
    raise ValueError(f"config.data.source={cfg.source!r}: the training set {src!r} is empty")
  _check_patch(config, src)
  keys = image_keys(config, src)
  if hasattr(src, "train_dataset"):
    ds = src.train_dataset(config.seed)
  else:
    ds = grain.MapDataset.source(src).shuffle(seed=config.seed).repeat()
  ds = ds.map_with_index(_add_index)
  ds = ds[process_index::process_count]
  ds = ds.map(Decode(keys=keys, seed=config.seed, severity=simulated_severity(config, keys)))
  ds = ds.map(CropAndAugment(patch=cfg.patch_size, seed=config.seed, scale=scale(config)))
  ds = ds.batch(cfg.batch_size // process_count, drop_remainder=True)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=2))
  if cfg.num_workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside app.run use defaults
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers))
  return it


def batch_spec(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, np.ndarray]:
  """Zero arrays shaped like a host batch of `batch_size` from `train_dataset` (for compiling ahead)."""
  p = config.data.patch_size
  s = scale(config)
  src = source(config.data, "train")
  keys = image_keys(config, src)
  spec = {k: np.zeros((batch_size,) + ((p // s, p // s) if k == "degraded" else (p, p)) + (3,), np.uint8)
          for k in keys}
  spec["index"] = np.zeros((batch_size,), np.int64)
  if getattr(src, "has_task", False):
    spec["task"] = np.zeros((batch_size,), np.int32)
  if getattr(src, "partial_prior", False) and "prior" in keys:
    spec["prior_mask"] = np.zeros((batch_size,), np.bool_)
  if simulated_severity(config, keys) is not None:
    spec["prior_severity"] = np.zeros((batch_size,), np.float32)
  return spec


def _centre_crop(image: np.ndarray, size: int, name: Any, factor: int = 1) -> np.ndarray:
  """The centre `size` crop, its offset a multiple of `factor` (the SR scale: LR and HR crops align)."""
  h, w = image.shape[:2]
  if h < size or w < size:
    raise ValueError(f"eval image {name} is {h}x{w}, smaller than config.data.eval_crop={size}")
  y, x = factor * ((h // factor - size // factor) // 2), factor * ((w // factor - size // factor) // 2)
  return image[y:y + size, x:x + size]


def eval_examples(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The held-out set as host arrays (`target` uint8 (N, H, W, 3), ..., `index`), the same on every host.

  Full images when they all have one size; `config.data.eval_crop` > 0 takes centre crops of that size
  (for sets of mixed sizes); `config.data.eval_max_images` > 0 keeps only the first ones. With
  `config.data.scale` s > 1, targets are mod-cropped to multiples of s (bottom / right, as BasicSR) and a
  source's `degraded` must be 1/s of them (its crops are the target's / s).
  """
  cfg = config.data
  s = cfg.get("scale", 1)
  if cfg.get("eval_crop", 0) % s:
    raise ValueError(f"config.data.eval_crop={cfg.eval_crop} is not a multiple of config.data.scale={s}")
  src = source(cfg, "eval")
  keys = image_keys(config, src)
  decode = Decode(keys=keys, seed=config.seed + _EVAL_SEED_OFFSET, severity=simulated_severity(config, keys))
  n = len(src) if not cfg.get("eval_max_images", 0) else min(len(src), cfg.eval_max_images)
  if n == 0:
    raise ValueError(f"config.data.source={cfg.source!r}: the eval set {src!r} is empty")
  crop = cfg.get("eval_crop", 0)
  examples = []
  for i in range(n):
    ex = decode.map({**src[i], "index": i})
    name = ex.pop("name", i)
    if s > 1:
      h, w = ex["target"].shape[:2]
      ex.update({k: ex[k][:h - h % s, :w - w % s] for k in keys if k != "degraded"})
    if crop:
      ex.update({k: _centre_crop(ex[k], crop // s, name) if k == "degraded" else
                 _centre_crop(ex[k], crop, name, s) for k in keys})
    shapes = {k: ex[k].shape[:2] if k != "degraded" else tuple(d * s for d in ex[k].shape[:2]) for k in keys}
    if len(set(shapes.values())) > 1:
      raise ValueError(f"eval image {name}: images of different sizes {shapes}"
                       + (f" (degraded times config.data.scale={s})" if s > 1 else ""))
    if examples and ex["target"].shape != examples[0][1]["target"].shape:
      first = examples[0][0]
      raise ValueError(
          f"eval images {first} ({'x'.join(map(str, examples[0][1]['target'].shape[:2]))}) and {name} "
          f"({'x'.join(map(str, ex['target'].shape[:2]))}) differ in size; set config.data.eval_crop "
          "to evaluate on centre crops")
    examples.append((name, ex))
  return {k: np.stack([e[k] for _, e in examples]) for k in examples[0][1]}
