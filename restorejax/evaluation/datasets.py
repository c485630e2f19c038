"""Evaluation sets as lists of examples for `evaluation.evaluator.Evaluator`, named by a short spec.

Specs (the `--dataset` flag of `restorejax.evaluate`):
- `default`: the run's own held-out set. For a records run whose set holds degraded images
  (`config.data.records.eval_path`): every image whole (not `config.data.eval_crop` crops, which only
  the trainer's stacked evaluation needs), named by its record (the degraded file's stem), with its prior
  when the run uses priors, at most `config.data.eval_max_images`. Otherwise (procedural or
  target-only sets): the trainer's held-out examples, degraded on the device exactly as the trainer
  degrades them (`data.batches.prepare_batch` with `data_key(config, 'eval')`, keyed by example index),
  so the scores are comparable with the run's `eval/*` numbers.
- `folder:DEGRADED_DIR,TARGET_DIR[,PRIOR_DIR]`: paired image files, matched by file stem (`0001.png`
  with `0001.jpg`); every file with an image extension (`images.EXTENSIONS`) in each folder (not its
  sub-folders) must have its partners, else the error lists the unpaired ones. Images are read with
  `images.read` and converted with `images.to_rgb8` (16-bit, grey and alpha are converted, not
  refused) by the process that evaluates them; priors are resized to the target's size (bicubic).
  Super-resolution (`scale` > 1, the run's `config.data.scale`): DEGRADED_DIR holds the LR images, exactly
  1/scale of their targets after the targets are mod-cropped to multiples of scale (BasicSR); LR names
  may carry the scale suffix of DIV2K / BasicSR (`0001x2.png` pairs with `0001.png`).
"""

import functools
import io
import os
import re
from typing import Optional

import jax
import ml_collections
import numpy as np
from PIL import Image as PILImage

from restorejax.data import batches
from restorejax.data import build as data_build
from restorejax.data import images, pipeline, records
from restorejax.evaluation.scoring import LazyExample

KINDS = ("default", "folder")


def procedural(config: ml_collections.ConfigDict) -> list[dict]:
  """The held-out procedural set of `config` with the trainer's on-device degradation (and simulated
  priors when `config.data.simulated_prior` is enabled), as uint8 examples.

  Degradations are computed in chunks of `config.eval.batch_size` like the trainer's evaluation; every
  recipe ends by rounding to 8 bits, so the uint8 images hold the trainer's float inputs exactly.
  """
  examples = pipeline.eval_examples(config)
  n, bs = len(examples["index"]), config.eval.batch_size
  pad = -n % bs
  examples = {k: np.concatenate([v, v[:pad]]) if pad else v for k, v in examples.items()}
  prep = jax.jit(batches.preparer(config, "eval"))
  made = {"degraded": [], "prior": []}  # the prior too when simulated (`prior_severity`)
  for i in range(0, n + pad, bs):
    out = prep({k: v[i:i + bs] for k, v in examples.items()})
    for k in made:
      if k in out and k not in examples:
        made[k].append(np.asarray(jax.device_get(out[k])))
  to8 = lambda chunks: np.round(np.clip(np.concatenate(chunks)[:n], 0.0, 1.0) * 255.0).astype(np.uint8)
  made = {k: to8(v) for k, v in made.items() if v}
  out = []
  for i in range(n):
    example = {"name": f"{int(examples['index'][i]):04d}", "target": examples["target"][i]}
    for k in ("degraded", "prior"):
      if k in made or k in examples:
        example[k] = made[k][i] if k in made else examples[k][i]
    out.append(example)
  return out


def _record_images(src, index: int, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
  record = src[index]
  out = {k: records.decode_image(record[k]) for k in keys if not (k == "prior" and record[k] == b"")}
  if "prior" in keys and "prior" not in out:  # an example built without a prior: zeros, as in training
    out["prior"] = np.zeros_like(out["target"])
  return out


def whole_records(config: ml_collections.ConfigDict) -> Optional[list[LazyExample]]:
  """The held-out records of a run with degraded images, whole and named (module doc); else None."""
  if config.data.get("source") != "records":
    return None
  src = pipeline.source(config.data, "eval")
  keys = tuple(k for k in pipeline.image_keys(config, src) if k in ("degraded", "target", "prior"))
  if "degraded" not in keys:
    return None  # target-only: degradations are the trainer's, made on the device (procedural path)
  limit = config.data.get("eval_max_images", 0)
  n = min(len(src), limit) if limit else len(src)
  out = []
  for i in range(n):
    record = src[i]
    with PILImage.open(io.BytesIO(record["target"])) as im:
      w, h = im.size
    out.append(LazyExample(name=str(record["name"]), size=(h, w), has_prior="prior" in keys,
                           load=functools.partial(_record_images, src, i, keys)))
  return out


def _image_files(directory: str, role: str, scale: int = 1) -> dict[str, str]:
  """stem -> path of the image files directly in `directory` (LR stems keyed by `build.lr_key`)."""
  if not os.path.isdir(directory):
    raise ValueError(f"{role} folder {directory}: no such directory")
  files = {}
  for entry in sorted(os.listdir(directory)):
    path = os.path.join(directory, entry)
    stem, ext = os.path.splitext(entry)
    if ext.lower() not in images.EXTENSIONS or not os.path.isfile(path):
      continue
    if role == "degraded":
      stem = data_build.lr_key(stem, scale)
    if stem in files:
      raise ValueError(f"{role} folder {directory}: two images share the stem {stem!r} "
                       f"({os.path.basename(files[stem])}, {entry})")
    files[stem] = path
  if not files:
    raise ValueError(f"{role} folder {directory}: no image files ({', '.join(images.EXTENSIONS)})")
  return files


def header_size(path: str) -> tuple[int, int]:
  """(height, width) of an image file from its header, without decoding the pixels."""
  try:
    with PILImage.open(path) as im:
      w, h = im.size
      if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that turn the picture by 90
        w, h = h, w                                 # degrees: `images.read` returns it upright
  except PILImage.UnidentifiedImageError:
    raise images.ImageError(path, "not an image file Pillow can read") from None
  except OSError as e:
    raise images.ImageError(path, f"cannot be read ({e})") from None
  return h, w


def read_rgb8(path: str) -> np.ndarray:
  return images.to_rgb8(images.read(path))[0]


def resize_rgb8(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bicubic resize of uint8 RGB to (height, width) (Pillow); a no-op at the same size."""
  if pixels.shape[:2] == tuple(size):
    return pixels
  return np.asarray(PILImage.fromarray(pixels).resize((size[1], size[0]), PILImage.Resampling.BICUBIC))


def _load_pair(degraded: str, target: str, prior: Optional[str], scale: int = 1) -> dict[str, np.ndarray]:
  out = {"degraded": read_rgb8(degraded), "target": read_rgb8(target)}
  if scale > 1:
    crop, problem = data_build.sr_sizes(out["degraded"].shape[:2], out["target"].shape[:2], scale)
    if problem:
      raise ValueError(f"{degraded}: {problem}")
    out["target"] = out["target"][:crop[0], :crop[1]]
  elif out["degraded"].shape != out["target"].shape:
    raise ValueError(f"{degraded}: size {out['degraded'].shape[:2]} differs from its target {target} "
                     f"{out['target'].shape[:2]}")
  if prior is not None:
    out["prior"] = resize_rgb8(read_rgb8(prior), out["target"].shape[:2])
  return out


def folder(degraded_dir: str, target_dir: str, prior_dir: Optional[str] = None, *,
           scale: int = 1) -> list[LazyExample]:
  """Paired folders -> lazily read examples named by stem (see the module docstring)."""
  roles = {"degraded": degraded_dir, "target": target_dir}
  if prior_dir:
    roles["prior"] = prior_dir
  files = {role: _image_files(d, role, scale) for role, d in roles.items()}
  stems = set(files["target"])
  for role, by_stem in files.items():
    for other, other_files in files.items():
      unpaired = sorted(set(by_stem) - set(other_files))
      if unpaired and role != other:
        shown = ", ".join(os.path.basename(by_stem[s]) for s in unpaired[:5])
        more = f" (+{len(unpaired) - 5} more)" if len(unpaired) > 5 else ""
        raise ValueError(f"{role} folder {roles[role]}: {len(unpaired)} image(s) without a partner in "
                         f"the {other} folder {roles[other]}: {shown}{more}")
  out = []
  for stem in sorted(stems):
    d, t = files["degraded"][stem], files["target"][stem]
    size = header_size(t)
    if scale > 1:
      size, problem = data_build.sr_sizes(header_size(d), size, scale)
      if problem:
        raise ValueError(f"{d}: {problem}")
    elif header_size(d) != size:
      raise ValueError(f"{d}: size {header_size(d)} differs from its target {t} {size}")
    p = files["prior"][stem] if prior_dir else None
    out.append(LazyExample(name=stem, size=size, has_prior=p is not None,
                           load=functools.partial(_load_pair, d, t, p, scale)))
  return out


def parse(spec: str) -> tuple[str, list[str]]:
  """'kind:arg1,arg2' -> (kind, [args]); checks the kind and the number of arguments."""
  kind, _, rest = spec.partition(":")
  if kind not in KINDS:
    raise ValueError(f"--dataset={spec}: unknown dataset kind {kind!r} (known: default, "
                     "folder:DEGRADED_DIR,TARGET_DIR[,PRIOR_DIR])")
  args = rest.split(",") if rest else []
  if kind == "default" and args:
    raise ValueError(f"--dataset={spec}: 'default' takes no arguments")
  if kind == "folder" and (len(args) not in (2, 3) or not all(args)):
    raise ValueError(f"--dataset={spec}: expected folder:DEGRADED_DIR,TARGET_DIR[,PRIOR_DIR]")
  return kind, args


def name_of(spec: str) -> str:
  """A file-name-safe name for a spec: 'default', or the folders' common parent (else the target dir)."""
  kind, args = parse(spec)
  if kind == "default":
    return "default"
  dirs = [os.path.abspath(a) for a in args]
  parents = {os.path.dirname(d) for d in dirs}
  base = os.path.basename(parents.pop()) if len(parents) == 1 else os.path.basename(dirs[1])
  return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "folder"


def build(spec: str, config: ml_collections.ConfigDict, *, scale: int = 1) -> list:
  """The examples a spec names (see the module docstring); `scale`: the SR factor of folder sets."""
  kind, args = parse(spec)
  if kind == "default":
    whole = whole_records(config)
    return procedural(config) if whole is None else whole
  return folder(*args, scale=scale)
