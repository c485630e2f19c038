"""The host input pipeline (grain): source -> shuffle -> repeat -> host slice -> crop/augment -> batch.

Every element carries `index`, its position in the global (all-process) stream. Crops and flips are drawn
from `(seed, index)` and the on-device degradations are keyed by it too, so a batch is the same whatever
the number of processes, prefetch workers or devices, and an iterator restored from a checkpoint continues
exactly. The iterator's state lives in the trainer's checkpoints (grain's orbax handler).

Host batches are dicts of numpy arrays leading with the per-process batch dimension: `target` uint8
(B, P, P, 3), optional `degraded` / `prior` uint8 of the same shape, `index` int64 (B,).
"""

import dataclasses
from typing import Any, Callable

import grain
from absl import flags
import ml_collections
import numpy as np

from restorejax.data import procedural

IMAGE_KEYS = ("degraded", "prior", "target")


def _procedural(cfg: ml_collections.ConfigDict, split: str):
  seed = cfg.seed + (0 if split == "train" else 1_000_003)  # held-out images come from another seed
  num = cfg.num_images if split == "train" else cfg.eval_num_images
  size = cfg.image_size if split == "train" else cfg.eval_image_size
  return procedural.DeadLeavesSource(num_images=num, size=size, seed=seed)


SOURCES: dict[str, Callable[[ml_collections.ConfigDict, str], Any]] = {
    "procedural": _procedural,
}


def source(cfg: ml_collections.ConfigDict, split: str):
  """A random-access source for `config.data` and split 'train' or 'eval'."""
  if cfg.source not in SOURCES:
    raise ValueError(f"config.data.source: unknown source {cfg.source!r} "
                     f"(known: {', '.join(sorted(SOURCES))})")
  return SOURCES[cfg.source](cfg[cfg.source], split)


@dataclasses.dataclass(frozen=True)
class CropAndAugment(grain.transforms.Map):
  """The same random `patch` crop of every image of an example, then one of the 8 flips/rotations.

  Randomness comes from `(seed, index)`, not grain's per-worker rng, so that an example is cropped the same
  whatever process or worker reads it.
  """

  patch: int
  seed: int
  augment: bool = True

  def map(self, example: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng([self.seed, 7, int(example["index"])])
    images = {k: example[k] for k in IMAGE_KEYS if k in example}
    h, w = images["target"].shape[:2]
    if h < self.patch or w < self.patch:
      raise ValueError(f"image {example.get('name', example['index'])} is {h}x{w}, smaller than "
                       f"config.data.patch_size={self.patch}")
    y, x = rng.integers(0, h - self.patch + 1), rng.integers(0, w - self.patch + 1)
    flip, rot = (rng.integers(0, 2), rng.integers(0, 4)) if self.augment else (0, 0)
    out = {"index": np.int64(example["index"])}
    for k, im in images.items():
      im = im[y:y + self.patch, x:x + self.patch]
      im = im[:, ::-1] if flip else im
      out[k] = np.ascontiguousarray(np.rot90(im, rot))
    return out


def _add_index(index: int, example: dict[str, Any]) -> dict[str, Any]:
  return {**example, "index": index}


def train_dataset(config: ml_collections.ConfigDict, *, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """The training stream of this process: `config.data.batch_size // process_count` examples a batch."""
  cfg = config.data
  if cfg.batch_size % process_count:
    raise ValueError(f"config.data.batch_size={cfg.batch_size} is not divisible by the "
                     f"{process_count} processes")
  ds = grain.MapDataset.source(source(cfg, "train"))
  ds = ds.shuffle(seed=config.seed).repeat().map_with_index(_add_index)
  ds = ds[process_index::process_count]
  ds = ds.map(CropAndAugment(patch=cfg.patch_size, seed=config.seed))
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
  return {"target": np.zeros((batch_size, p, p, 3), np.uint8), "index": np.zeros((batch_size,), np.int64)}


def eval_examples(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The whole held-out set as host arrays (`target` uint8 (N, S, S, 3), `index`), the same on every host."""
  src = source(config.data, "eval")
  examples = [src[i] for i in range(len(src))]
  out = {k: np.stack([e[k] for e in examples]) for k in IMAGE_KEYS if k in examples[0]}
  out["index"] = np.arange(len(src), dtype=np.int64)
  return out
