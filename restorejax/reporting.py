"""What a run reports: clu writers (TensorBoard), `metrics.jsonl`, image grids and `summary.json`.

Only process 0 writes. Every scalar goes both to TensorBoard and to `metrics.jsonl`, one JSON object per
write: `{"step": n, "<name>": value, ...}`; a resumed run first drops the rows after its checkpoint's step,
so each step appears once. clu's writers bring TensorFlow (6-7 s to import on a small
CPU), so they are imported when a run creates its writers, not when a command imports this module.
"""

import hashlib
import json
import os
from typing import Any, Mapping

import jax
import numpy as np

from restorejax.data import images as image_io


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


def drop_metrics_after(workdir: str, step: int) -> int:
  """Removes the rows of `metrics.jsonl` with a step after `step` (a resumed run redoes those steps), and
  a torn last line; returns how many rows went. The file is replaced atomically, so a crash leaves
  either the old or the new one, and appending to it afterwards is as safe as before."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  keep, dropped = [], 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        row_step = json.loads(line)["step"]
      except (ValueError, KeyError, TypeError):
        dropped += 1
        continue
      if row_step > step:
        dropped += 1
      else:
        keep.append(line if line.endswith("\n") else line + "\n")
  if dropped:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(keep)
    os.replace(tmp, path)
  return dropped


def create_writer(workdir: str) -> Any:
  """TensorBoard + metrics.jsonl + log lines on process 0; log lines only elsewhere (a clu MetricWriter)."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  (TensorFlow, see module doc)
  from absl import logging  # pylint: disable=g-import-not-at-top

  class LogWriter(metric_writers.LoggingWriter):
    """clu's log lines, with texts (the parameter overview) as they read rather than as a dict repr."""

    def write_texts(self, step, texts):
      for name, text in texts.items():
        logging.info("[%d] %s:\n%s", step, name, text)

  if jax.process_index() > 0:  # what clu's create_default_writer(None, just_logging=True) builds
    return metric_writers.AsyncMultiWriter([LogWriter()])
  return metric_writers.MultiWriter([  # create_default_writer(workdir) with our LogWriter, and the JSON lines
      metric_writers.AsyncMultiWriter([LogWriter(), metric_writers.SummaryWriter(workdir)]),
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


def read_summary(workdir: str) -> dict[str, Any] | None:
  """The run's `summary.json` (what `write_summary` wrote), or None when the run has not finished."""
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)
