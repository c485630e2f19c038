"""The triple record format: (degraded, target, prior) examples in ArrayRecord shards, read by grain.

A dataset is a directory holding `triples-SSSSS-of-NNNNN.array_record` shards and `dataset_info.json`.
Each record is one msgpack map (no TensorFlow needed to read it; keys always in the order below, so the
same example always gives the same bytes):

  name      str    example name (the degraded file's stem; the target's when there is no degraded image)
  target    bytes  8-bit RGB PNG
  degraded  bytes  8-bit RGB PNG of the target's size, 1/scale of it in super-resolution builds
                                                                      (absent in target-only datasets)
  prior     bytes  8-bit RGB PNG resized to the target's size          (absent when there is no prior;
                   in a dataset with priors, an example without one: see `prior_absent`)
  task      str    task label given to the builder, e.g. "dehaze"      (absent when none was given)
  sizes     map    {image key: [height, width]} of each source file before any conversion or resizing
  files     map    {image key: source file name}
  tile      list   [y, x, height, width] of this sub-image in the (prior-resized) originals (builds with
                   --tile only; the record's name is then `<name>_y<y>_x<x>`)

`dataset_info.json` holds `count`, `tasks` ({label: count}), `has_degraded`, `has_prior`, `sizes`
(`min` / `max` [height, width] of the stored targets), `shards` ([{file, count}]), for tiled builds
`tile` ({size, step}), for super-resolution builds (`--scale`) `scale` (absent: 1), and
`prior_absent` (only when > 0): the number of examples of a dataset with priors
that have none. `TripleSource` gives such an example a zero prior of its target's size and every example
of these datasets a `prior_mask` (bool: the prior is real), which the prior-fusion networks take.

`TripleSource` is the grain random-access reader over one or several such directories. String task
labels become int ids (the label's position in `tasks`, by default the sorted labels of all datasets;
-1 for an unlabelled record among labelled ones).
"""

import glob
import json
import os
from typing import Any, Iterable, Optional, Sequence

import msgpack
import numpy as np

from restorejax.data import images

FORMAT = "restorejax.triples"
VERSION = 1
INFO_FILE = "dataset_info.json"
SHARD_PREFIX = "triples"
IMAGE_KEYS = ("degraded", "prior", "target")
_ORDER = ("name", "target", "degraded", "prior", "task", "sizes", "files", "tile")


class NoSplit(ValueError):
  """A source has no data for the split asked for (e.g. no eval path configured)."""


# ----------------------------------------------------------------------------------------------------
# One record.
# ----------------------------------------------------------------------------------------------------

def encode(example: dict[str, Any]) -> bytes:
  """Record bytes of an example whose images are PNG bytes (or uint8 RGB arrays, encoded here)."""
  unknown = set(example) - set(_ORDER)
  if unknown:
    raise ValueError(f"records.encode: unknown field(s) {', '.join(sorted(unknown))}")
  if "name" not in example or "target" not in example:
    raise ValueError("records.encode: an example needs 'name' and 'target'")
  out = {}
  for k in _ORDER:
    if k not in example:
      continue
    v = example[k]
    if k in IMAGE_KEYS and not isinstance(v, bytes):
      v = images.encode_png(_check_rgb8(k, v))
    elif k == "tile":
      v = [int(t) for t in v]
    elif k in ("sizes", "files"):
      v = {key: (list(map(int, v[key])) if k == "sizes" else str(v[key])) for key in IMAGE_KEYS if key in v}
    out[k] = v
  return msgpack.packb(out, use_bin_type=True)


def _check_rgb8(key: str, pixels: np.ndarray) -> np.ndarray:
  if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
    raise ValueError(f"records.encode: {key} must be uint8 (H, W, 3), got {pixels.dtype} {pixels.shape}")
  return pixels


def decode(record: bytes) -> dict[str, Any]:
  """The record's fields; images stay PNG bytes (see `decode_images`)."""
  return msgpack.unpackb(record, raw=False)


def to_rgb(pixels: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 from a decoded image with 1..4 channels (grey repeated, alpha dropped)."""
  if pixels.shape[-1] in (1, 2):
    return np.repeat(pixels[..., :1], 3, axis=-1)
  return pixels[..., :3]


def decode_image(data: bytes | np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3) from encoded image bytes (any format Pillow reads) or an already decoded array."""
  if isinstance(data, np.ndarray):
    return data if data.ndim == 3 and data.shape[-1] == 3 else to_rgb(data.reshape(data.shape[:2] + (-1,)))
  return np.ascontiguousarray(to_rgb(images.decode_png(data)))


# ----------------------------------------------------------------------------------------------------
# A dataset directory.
# ----------------------------------------------------------------------------------------------------

def shard_name(i: int, n: int) -> str:
  return f"{SHARD_PREFIX}-{i:05d}-of-{n:05d}.array_record"


def write(path: str, records: Iterable[tuple[bytes, dict[str, Any]]], *, records_per_shard: int = 256,
          extra_info: Optional[dict[str, Any]] = None) -> dict:
  """Writes `(record bytes, summary)` pairs as a dataset in `path`; returns the dataset info.

  `summary` holds the example's `task` (or None), `has_degraded`, `has_prior` and target `size` (h, w);
  `extra_info` is added to the info (e.g. the builder's tiling).
  The shard count is only known at the end, so shards are written under temporary names and renamed;
  shards of an earlier build in `path` are removed first. No timestamps: same records -> same bytes.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  if records_per_shard < 1:
    raise ValueError(f"records_per_shard must be at least 1, got {records_per_shard}")
  os.makedirs(path, exist_ok=True)
  for old in glob.glob(os.path.join(path, f"{SHARD_PREFIX}-*.array_record*")):
    os.remove(old)
  counts: list[int] = []
  tasks: dict[str, int] = {}
  flags: set[bool] = set()
  with_prior = 0
  lo, hi = [None, None], [0, 0]
  writer = None
  for record, summary in records:
    if writer is None or counts[-1] == records_per_shard:
      if writer is not None:
        writer.close()
      counts.append(0)
      writer = array_record_module.ArrayRecordWriter(
          os.path.join(path, f".{SHARD_PREFIX}-{len(counts) - 1:05d}.tmp"), "group_size:1")
    writer.write(record)
    counts[-1] += 1
    if summary.get("task") is not None:
      tasks[summary["task"]] = tasks.get(summary["task"], 0) + 1
    flags.add(bool(summary["has_degraded"]))
    with_prior += bool(summary["has_prior"])
    for d in range(2):
      lo[d] = summary["size"][d] if lo[d] is None else min(lo[d], summary["size"][d])
      hi[d] = max(hi[d], summary["size"][d])
  if writer is not None:
    writer.close()
  if len(flags) > 1:
    raise ValueError(f"{path}: examples disagree on which images they hold")
  has_degraded, has_prior = (flags.pop() if flags else False), with_prior > 0
  absent = sum(counts) - with_prior if has_prior else 0
  shards = []
  for i, count in enumerate(counts):
    name = shard_name(i, len(counts))
    os.replace(os.path.join(path, f".{SHARD_PREFIX}-{i:05d}.tmp"), os.path.join(path, name))
    shards.append({"file": name, "count": count})
  info = {
      "format": FORMAT, "version": VERSION, "count": sum(counts),
      "tasks": dict(sorted(tasks.items())), "has_degraded": has_degraded, "has_prior": has_prior,
      "sizes": {"min": [v or 0 for v in lo], "max": hi}, "shards": shards,
      **({"prior_absent": absent} if absent else {}), **(extra_info or {}),
  }
  with open(os.path.join(path, INFO_FILE), "w") as f:
    json.dump(info, f, indent=1)
    f.write("\n")
  return info


def read_info(path: str) -> dict:
  """`dataset_info.json` of the dataset in `path`; ValueError naming `path` when it is not one."""
  file = os.path.join(path, INFO_FILE)
  try:
    with open(file) as f:
      info = json.load(f)
  except FileNotFoundError:
    raise ValueError(f"{path}: not a triple dataset (no {INFO_FILE}; build one with "
                     "python -m restorejax.data.build)") from None
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{file}: unreadable ({e})") from None
  if info.get("format") != FORMAT or info.get("version") != VERSION:
    raise ValueError(f"{file}: not a {FORMAT} v{VERSION} dataset info")
  for shard in info["shards"]:
    if not os.path.exists(os.path.join(path, shard["file"])):
      raise ValueError(f"{path}: shard {shard['file']} listed in {INFO_FILE} is missing")
  return info


def split_paths(paths: str | Sequence[str]) -> list[str]:
  """A config's `path` value: one directory, several separated by commas, or a sequence of them."""
  items = paths.split(",") if isinstance(paths, str) else list(paths)
  return [os.path.expanduser(p.strip()) for p in items if p.strip()]


class TripleSource:
  """grain random-access source over the datasets in `paths` (concatenated in the order given).

  Elements are `{'name', 'target', 'degraded'?, 'prior'?, 'task'?, 'prior_mask'?}`: images uint8
  (H, W, 3) when `decoded`, else PNG bytes (the pipeline decodes in its map step; an absent prior is
  then b"", zeros once decoded); `task` an int32 id (see module doc); `prior_mask` (bool, False for an
  example without a prior) when a dataset has `prior_absent` examples (`partial_prior`).
  All datasets must hold the same images (all with degraded images or none, all with priors or none).
  """

  def __init__(self, paths: str | Sequence[str], *, decoded: bool = True, tasks: Sequence[str] = ()):
    self.paths = split_paths(paths)
    if not self.paths:
      raise ValueError("records: no dataset path given")
    self.infos = [read_info(p) for p in self.paths]
    layouts = {(i["has_degraded"], i["has_prior"]) for i in self.infos}
    if len(layouts) > 1:
      desc = "; ".join(f"{p}: degraded={i['has_degraded']}, prior={i['has_prior']}"
                       for p, i in zip(self.paths, self.infos))
      raise ValueError(f"records: datasets of one source must hold the same images ({desc})")
    has_degraded, has_prior = layouts.pop()
    self.image_keys = tuple(k for k, on in zip(IMAGE_KEYS, (has_degraded, has_prior, True)) if on)
    found = sorted({t for i in self.infos for t in i["tasks"]})
    self.tasks = tuple(tasks) or tuple(found)
    missing = [t for t in found if t not in self.tasks]
    if missing:
      raise ValueError(f"records: task label(s) {', '.join(missing)} of {', '.join(self.paths)} are not "
                       f"in the configured tasks ({', '.join(self.tasks)})")
    self.has_task = bool(self.tasks)
    self.partial_prior = has_prior and any(i.get("prior_absent", 0) for i in self.infos)
    self.decoded = decoded
    files = [os.path.join(p, s["file"]) for p, i in zip(self.paths, self.infos) for s in i["shards"]]
    import grain  # pylint: disable=g-import-not-at-top  (the builder needs no JAX)
    self._source = grain.sources.ArrayRecordDataSource(files) if files else None
    scales = {int(i.get("scale", 1)) for i in self.infos}
    if has_degraded and len(scales) > 1:
      desc = "; ".join(f"{p}: scale {i.get('scale', 1)}" for p, i in zip(self.paths, self.infos))
      raise ValueError(f"records: datasets of one source must have one LR scale ({desc})")
    self.scale = scales.pop() if has_degraded else None  # None: no LR images, any config.data.scale fits
    self.sizes = {"min": [min(i["sizes"]["min"][d] for i in self.infos) for d in range(2)],
                  "max": [max(i["sizes"]["max"][d] for i in self.infos) for d in range(2)]}

  def __len__(self) -> int:
    return 0 if self._source is None else len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = decode(self._source[index])
    out = {"name": record["name"]}
    for k in self.image_keys:
      if k not in record:  # an example without a prior: zeros, marked absent
        out[k] = b""
      else:
        out[k] = decode_image(record[k]) if self.decoded else record[k]
    if self.partial_prior:
      out["prior_mask"] = np.bool_("prior" in record)
      if self.decoded and "prior" not in record:
        out["prior"] = np.zeros_like(out["target"])
    if self.has_task:
      out["task"] = np.int32(self.tasks.index(record["task"]) if "task" in record else -1)
    return out

  def __repr__(self) -> str:
    return f"TripleSource({','.join(self.paths)}, {len(self)} examples, images={self.image_keys})"
