"""What a run reports: clu writers (TensorBoard), `metrics.jsonl`, image grids and `summary.json`.

Only process 0 writes. Every scalar goes both to TensorBoard and to `metrics.jsonl`, one JSON object per
write: `{"step": n, "<name>": value, ...}`. clu's writers bring TensorFlow (6-7 s to import on a small
CPU), so they are imported when a run creates its writers, not when a command imports this module.
"""

import hashlib
import json
import os
from typing import Any, Mapping

import jax
import numpy as np


class JsonlWriter:
  """Appends every `write_scalars` call to a JSON-lines file; ignores the other kinds of summaries.

  It has the methods of clu's `MetricWriter` interface (what `MultiWriter` calls) without deriving from
  it, so that defining it does not import TensorFlow."""

  def __init__(self, path: str):
    self._file = open(path, "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    row = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def create_writer(workdir: str) -> Any:
  """TensorBoard + metrics.jsonl + log lines on process 0; log lines only elsewhere (a clu MetricWriter)."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  (TensorFlow, see module doc)
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(None, just_logging=True)
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(workdir, asynchronous=True),
      JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
  ])


def image_grid(*columns: np.ndarray, count: int = 4) -> np.ndarray:
  """Side by side (e.g. degraded | restored | target) for the first `count` examples: (count, H, k*W, 3)."""
  cols = [np.clip(np.asarray(c[:count], np.float32), 0.0, 1.0) for c in columns]
  return (np.concatenate(cols, axis=2) * 255.0 + 0.5).astype(np.uint8)


def write_image_files(workdir: str, images: Mapping[str, np.ndarray]) -> None:
  """The final evaluation's images as PNGs in the run directory: 'eval/samples' -> samples.png; the
  examples of one (N, H, W, 3) uint8 batch are stacked vertically."""
  if jax.process_index() > 0:
    return
  from restorejax.data import images as image_io  # pylint: disable=g-import-not-at-top
  for name, batch in images.items():
    batch = np.asarray(batch)
    file = name.split("/", 1)[-1].replace("/", "_") + ".png"
    image_io.write_png(os.path.join(workdir, file), batch.reshape((-1,) + batch.shape[2:]))


def fingerprint(tree: Any) -> str:
  """SHA-256 of every leaf's bytes, in tree order (with paths): equal iff the trees are bit-identical."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    leaf = np.ascontiguousarray(np.asarray(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str((leaf.dtype, leaf.shape)).encode())
    h.update(leaf.tobytes())
  return h.hexdigest()


def write_summary(workdir: str, summary: Mapping[str, Any]) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(dict(summary), f, indent=2, sort_keys=True)
