"""Folders of images -> a triple dataset (ArrayRecord shards, see `records`), with a report of every file.

    python -m restorejax.data.build --degraded DIR --target DIR [--prior DIR] --out PATH
        [--scale S] [--min-size N] [--task NAME] [--records-per-shard K] [--workers W]
        [--degraded-key REGEX] [--target-key REGEX] [--prior-key REGEX] [--tile S [--tile-step T]]

`--target DIR` alone builds a target-only dataset (the trainer synthesises degradations on the device).

Pairing: files are matched by the key of their name stem. By default the key is the whole stem, so
`a.png` pairs with `a.JPG` (extensions are case-insensitive). `--*-key` regexes (full match on the
stem; the first group is the key) handle datasets whose names differ, e.g. RESIDE SOTS
`--degraded-key '(\\d+)_.*'`: several degraded files may share one target (one example each, named by
the degraded stem); a target or prior key must be unique. Two files of one folder with the same stem
(`a.png` and `a.jpg`) are ambiguous: both are skipped and reported, as is everything that needed them.

Reading: PNG, JPEG, WebP, BMP, TIFF; 8- or 16-bit; grey, RGB, with alpha (`restorejax.data.images`).
Images are stored as 8-bit RGB; every conversion is listed in the report (`16-bit -> 8-bit`,
`greyscale -> RGB`, `alpha channel dropped`). A prior of another size or aspect is resized to the
target's size with Pillow's bicubic filter (`resized HxW -> HxW (bicubic)` in the report); its content
misalignment stays, as it should. Degraded and target images must have the same size.

Super-resolution (`--scale S`, S > 1): `--degraded` holds the LR images, each exactly 1/S of its target
after the target is cropped at its bottom / right to multiples of S (BasicSR's mod crop, listed in the
report's `converted` as `mod-cropped HxW -> HxW (multiple of scale S)`); an LR file of any other size is
skipped with `LR/HR size mismatch for scale S (...)`. LR names may carry the scale suffix of DIV2K and
BasicSR's `filename_tmpl` (`0001x2.png` pairs with `0001.png` at --scale 2) or be the target's stem.
Records keep the LR image as `degraded` and `dataset_info.json` records `scale`; `--tile` and
`--tile-step` must then be multiples of S (LR tiles are the HR tiles / S).

Large images (DIV2K's 2K pictures take ~0.1 s each to decode) can be stored as overlapping sub-images
(`--tile 480 --tile-step 240`, BasicSR's recipe), so that a training crop decodes a small tile instead of
the whole picture; tiles start every step plus one flush with the far edge, and an image no larger than
the tile is kept whole.

With `--prior`, an example whose prior file is missing is kept without one (its record has no
`prior`; training gives it a zero prior and `prior_mask` false, which the prior-fusion networks read as
absent): released generative priors often cover part of a dataset only. Such examples are listed apart
in the report (`without_prior`) and counted in `dataset_info.json` (`prior_absent`).

Output in `--out`: the shards, `dataset_info.json`, and `report.json`
`{"written": n, "skipped": [{"file", "reason"}], "converted": [{"file", "changes"}]}`, plus
`"without_prior": [{"file", "reason"}]` (the example's first file) with `--prior`. Every input file is
either in a record or in `skipped` with its reason: unreadable, truncated, empty (0 bytes), not an
image, no partner (naming the missing side), ambiguous name, smaller than `--min-size`, degraded/target
size mismatch, or an unusable partner. Examples are written in sorted name order with deterministic
PNG and msgpack encoding and no timestamps, so a rerun on the same folders gives byte-identical shards
(with any number of `--workers`).

A rebuild never loses the previous dataset: the new one is written into a hidden sibling of `--out`
(`.<name>.building-<pid>`) and swapped in only once its shards, `dataset_info.json` and `report.json`
are all written; a build that fails or is killed leaves `--out` as it was. `--out` must therefore be a
new or empty folder or a dataset (only shards, `dataset_info.json`, `report.json`): a folder holding
anything else (an input folder among them) is refused rather than replaced.

Bad arguments (a folder missing or empty, an unwritable `--out`, an `--out` holding other files) end with
one line `restorejax.data.build: error: ...` and exit status 2.
"""

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import re
import shutil
import sys
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from PIL import Image as PILImage

from restorejax.data import images, records

SIDES = ("degraded", "target", "prior")
REPORT_FILE = "report.json"


def lr_key(stem: str, scale: int) -> str:
  """The pairing key of an LR file's stem: DIV2K / BasicSR names (`0001x2` for HR `0001`, BasicSR's
  `filename_tmpl='{}x2'`) lose their scale suffix; any other stem is its own key."""
  suffix = f"x{scale}"
  if scale > 1 and stem.lower().endswith(suffix) and len(stem) > len(suffix):
    return stem[:-len(suffix)]
  return stem


def sr_sizes(lr_hw: tuple[int, int], hr_hw: tuple[int, int], scale: int) -> tuple[Optional[tuple[int, int]],
                                                                                  Optional[str]]:
  """Checks an LR/HR pair of super-resolution (`scale` > 1): -> (the HR size to mod-crop to, problem).

  The LR image must be exactly 1/scale of the HR image after BasicSR's mod crop (the HR sides cut down
  to multiples of the scale); `problem` names the mismatch, else None.
  """
  h, w = hr_hw
  crop = (h - h % scale, w - w % scale)
  want = (crop[0] // scale, crop[1] // scale)
  if tuple(lr_hw) != want:
    return None, (f"LR/HR size mismatch for scale {scale} (degraded {lr_hw[0]}x{lr_hw[1]}, target {h}x{w}; "
                  f"x{scale} needs degraded {want[0]}x{want[1]})")
  return crop, None


@dataclasses.dataclass(frozen=True)
class Pairing:
  """The examples found in the folders (`examples`: name -> {side: path}) and the files left out."""
  examples: dict[str, dict[str, str]]
  skipped: dict[str, str]   # path -> reason
  keys: dict[str, str] = dataclasses.field(default_factory=dict)   # example name -> pairing key
  without_prior: dict[str, str] = dataclasses.field(default_factory=dict)  # example name -> why (kept)


def _key_of(stem: str, pattern: Optional[re.Pattern]) -> Optional[str]:
  if pattern is None:
    return stem
  m = pattern.fullmatch(stem)
  if m is None:
    return None
  return m.group(1) if m.groups() else m.group(0)


def _scan(directory: str, side: str, pattern: Optional[re.Pattern], skipped: dict[str, str],
          scale: int = 1) -> dict[str, list[tuple[str, str]]]:
  """{key: [(stem, path), ...]} of the image files of one folder; everything else goes to `skipped`."""
  by_stem: dict[str, list[str]] = {}
  for entry in sorted(os.listdir(directory)):
    path = os.path.join(directory, entry)
    if os.path.isdir(path):
      skipped[path] = "a folder (sub-folders are not searched)"
      continue
    stem, ext = os.path.splitext(entry)
    if ext.lower() not in images.EXTENSIONS:
      skipped[path] = f"not an image (extension {ext or 'none'!r} is not one of {', '.join(images.EXTENSIONS)})"
      continue
    by_stem.setdefault(stem, []).append(path)
  by_key: dict[str, list[tuple[str, str]]] = {}
  for stem, paths in sorted(by_stem.items()):
    if len(paths) > 1:
      for p in paths:
        skipped[p] = f"ambiguous: {' and '.join(os.path.basename(q) for q in paths)} share the stem {stem!r}"
      key = _key_of(stem, pattern)
      if key is not None:
        by_key.setdefault(key, [])  # known but unusable: partners are told so
      continue
    key = _key_of(stem, pattern)
    if key is None:
      skipped[paths[0]] = f"name does not match --{side}-key {pattern.pattern!r}"
      continue
    if side == "degraded" and pattern is None:
      key = lr_key(key, scale)
    by_key.setdefault(key, []).append((stem, paths[0]))
  return by_key


def pair(dirs: dict[str, str], keys: Optional[dict[str, str]] = None, scale: int = 1) -> Pairing:
  """Matches the files of the `dirs` ({side: folder}, `target` required) into examples (module doc);
  with `scale` > 1, LR stems with the scale suffix (`0001x2`) pair with the target's stem."""
  keys = keys or {}
  skipped: dict[str, str] = {}
  found = {side: _scan(d, side, re.compile(keys[side]) if keys.get(side) else None, skipped, scale)
           for side, d in dirs.items()}
  unique: dict[str, dict[str, str]] = {}
  for side in ("target", "prior"):
    if side not in found:
      continue
    unique[side] = {}
    for key, items in found[side].items():
      if len(items) != 1:
        for _, p in items:
          skipped[p] = (f"ambiguous: {', '.join(os.path.basename(q) for _, q in items)} all have the "
                        f"--{side}-key {key!r}")
      else:
        unique[side][key] = items[0][1]
  examples: dict[str, dict[str, str]] = {}
  example_keys: dict[str, str] = {}
  absent: dict[str, str] = {}
  used: set[str] = set()
  lead = "degraded" if "degraded" in found else "target"
  for key, items in sorted(found[lead].items()):
    for stem, path in items:
      files = {lead: path}
      for side in ("target", "prior"):
        if side == lead or side not in found:
          continue
        if key in unique[side]:
          files[side] = unique[side][key]
        elif side == "prior" and key not in found[side]:
          absent[stem] = f"no prior image for key {key!r} in {dirs[side]}"  # kept: prior_mask false
        else:
          why = "is ambiguous" if key in found[side] else "is missing"
          skipped[path] = f"no partner: the {side} image for key {key!r} {why} in {dirs[side]}"
          break
      else:
        examples[stem] = files
        example_keys[stem] = key
        used.update(files.values())
  for side in ("target", "prior"):
    for key, path in unique.get(side, {}).items():
      if path not in used:
        missing = [s for s in ("degraded", "target") if s in found and s != side and key not in found[s]]
        skipped[path] = (f"no partner: no {' or '.join(missing)} image with key {key!r}" if missing else
                         f"no partner: the example with key {key!r} is incomplete (see its other files)")
  absent = {stem: why for stem, why in absent.items() if stem in examples}
  return Pairing(dict(sorted(examples.items())), skipped, example_keys, dict(sorted(absent.items())))


# ----------------------------------------------------------------------------------------------------
# One example: read, convert, check, encode.
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
  records: list[tuple[bytes, dict[str, Any]]] = dataclasses.field(default_factory=list)  # (bytes, summary)
  summary: Optional[dict[str, Any]] = None
  converted: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # path -> changes
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)          # path -> reason (failures)


def _hw(a: np.ndarray) -> str:
  return f"{a.shape[0]}x{a.shape[1]}"


def tile_origins(length: int, tile: int, step: int) -> list[int]:
  """Tile starts along one side: every `step`, plus one flush with the end (BasicSR's sub-images)."""
  if length <= tile:
    return [0]
  starts = list(range(0, length - tile + 1, step))
  return starts if starts[-1] == length - tile else starts + [length - tile]


def load(name: str, files: dict[str, str], *, min_size: int = 0, task: Optional[str] = None,
         encode: bool = True, tile: int = 0, tile_step: int = 0, scale: int = 1) -> Outcome:
  """Reads and converts one example's files; on failure every one of its files gets a reason.

  `summary` holds the uint8 RGB arrays (`images`) and the facts `records.write` needs. With `encode`,
  `records` holds the encoded record(s): one, or with `tile` > 0 one per `tile` x `tile` sub-image
  every `tile_step` pixels (named `<name>_y<Y>_x<X>`, with a `tile` field [y, x, h, w]), which makes
  random crops of large images cheap to decode. With `scale` > 1 the degraded image is the LR one
  (module doc: checked against the mod-cropped target, tiles cut at the target's tile / scale).
  """
  out = Outcome()
  pixels, sizes = {}, {}
  for side in SIDES:
    if side not in files:
      continue
    try:
      image = images.read(files[side])
    except images.ImageError as e:
      out.skipped[files[side]] = e.reason
      for other in files.values():
        if other != files[side]:
          out.skipped.setdefault(other, f"partner unusable: {files[side]} ({e.reason})")
      return out
    rgb, notes = images.to_rgb8(image)
    pixels[side], sizes[side] = rgb, list(image.size)
    if notes:
      out.converted[files[side]] = notes
  target = pixels["target"]
  problem = None
  if scale > 1:
    crop, problem = sr_sizes(pixels["degraded"].shape[:2], target.shape[:2], scale) if "degraded" in pixels \
        else ((target.shape[0] - target.shape[0] % scale, target.shape[1] - target.shape[1] % scale), None)
    if crop is not None and crop != target.shape[:2]:
      out.converted.setdefault(files["target"], []).append(
          f"mod-cropped {_hw(target)} -> {crop[0]}x{crop[1]} (multiple of scale {scale})")
      target = pixels["target"] = target[:crop[0], :crop[1]]
  if problem is None and scale == 1 and "degraded" in pixels and pixels["degraded"].shape != target.shape:
    problem = f"degraded/target size mismatch (degraded {_hw(pixels['degraded'])}, target {_hw(target)})"
  elif problem is None and min(target.shape[:2]) < min_size:
    problem = f"smaller than --min-size={min_size} ({_hw(target)})"
  if problem:
    out.skipped = {p: problem for p in files.values()}
    out.converted = {}
    return out
  if "prior" in pixels and pixels["prior"].shape != target.shape:
    im = PILImage.fromarray(pixels["prior"]).resize((target.shape[1], target.shape[0]), PILImage.BICUBIC)
    out.converted.setdefault(files["prior"], []).append(
        f"resized {_hw(pixels['prior'])} -> {_hw(target)} (bicubic)")
    pixels["prior"] = np.asarray(im)
  out.summary = {"task": task, "has_degraded": "degraded" in files, "has_prior": "prior" in files,
                 "size": target.shape[:2], "images": pixels}
  if not encode:
    return out
  common = {"sizes": sizes, "files": {side: os.path.basename(p) for side, p in files.items()}}
  if task is not None:
    common["task"] = task
  h, w = target.shape[:2]
  if not tile:
    out.records.append((records.encode({"name": name, **pixels, **common}),
                        {**out.summary, "images": None}))
  else:
    for y in tile_origins(h, tile, tile_step or tile):
      for x in tile_origins(w, tile, tile_step or tile):
        crops = {k: v[y:y + tile, x:x + tile] for k, v in pixels.items() if k != "degraded"}
        if "degraded" in pixels:
          crops["degraded"] = pixels["degraded"][y // scale:(y + tile) // scale, x // scale:(x + tile) // scale]
        th, tw = crops["target"].shape[:2]
        rec = records.encode({"name": f"{name}_y{y}_x{x}", **crops, **common, "tile": [y, x, th, tw]})
        out.records.append((rec, {**out.summary, "size": (th, tw), "images": None}))
  out.summary["images"] = None
  return out


def _load_star(args) -> Outcome:
  name, files, kwargs = args
  return load(name, files, **kwargs)


def load_all(pairing: Pairing, *, workers: int = 1, **kwargs) -> Iterator[tuple[str, Outcome]]:
  """`load` for every example of `pairing` in name order (in `workers` processes when > 1)."""
  jobs = [(name, files, kwargs) for name, files in pairing.examples.items()]
  if workers <= 1 or len(jobs) < 2:
    yield from ((job[0], _load_star(job)) for job in jobs)
    return
  # spawn, not fork: the parent may hold TensorFlow / JAX threads
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
    yield from zip((job[0] for job in jobs), ex.map(_load_star, jobs, chunksize=4))


# ----------------------------------------------------------------------------------------------------
# The whole build.
# ----------------------------------------------------------------------------------------------------

def foreign_files(out: str) -> list[str]:
  """The entries of an existing `out` that are not part of a dataset (what a rebuild must not delete)."""
  if not os.path.isdir(out):
    return [] if not os.path.lexists(out) else [out]
  ours = re.compile(rf"({re.escape(records.SHARD_PREFIX)}-.*\.array_record|\..*\.tmp|"
                    rf"{re.escape(records.INFO_FILE)}|{re.escape(REPORT_FILE)})")
  return sorted(e for e in os.listdir(out)
                if not (ours.fullmatch(e) and os.path.isfile(os.path.join(out, e))))


def _swap_in(new: str, out: str) -> None:
  """Moves the finished dataset `new` to `out`, replacing an earlier dataset there (two renames)."""
  if os.path.isdir(out) and os.listdir(out):
    old = new.replace(".building-", ".replaced-")
    os.rename(out, old)
    os.rename(new, out)
    shutil.rmtree(old, ignore_errors=True)
  else:
    if os.path.isdir(out):
      os.rmdir(out)
    os.rename(new, out)


def build(dirs: dict[str, str], out: str, *, keys: Optional[dict[str, str]] = None, min_size: int = 0,
          task: Optional[str] = None, records_per_shard: int = 256, workers: int = 1, tile: int = 0,
          tile_step: int = 0, scale: int = 1) -> dict:
  """Builds the dataset in `out` and writes `out/report.json`; returns the report (plus `info`).

  The dataset is written next to `out` and swapped in when complete (module doc); ValueError when `out`
  holds files that are not part of a dataset.
  """
  if int(scale) != scale or scale < 1 or (tile or tile_step) and (tile % scale or tile_step % scale):
    raise ValueError(f"scale={scale}: need a positive integer dividing --tile={tile} and --tile-step={tile_step}")
  out = os.path.abspath(out)
  foreign = foreign_files(out)
  if foreign:
    shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
    raise ValueError(f"holds files that are not part of a dataset ({shown}); a build replaces its folder, "
                     "so give a new or empty folder, or an earlier dataset")
  staging = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.building-{os.getpid()}")
  if os.path.lexists(staging):
    shutil.rmtree(staging)
  try:
    report = _build_into(staging, dirs, keys=keys, min_size=min_size, task=task,
                         records_per_shard=records_per_shard, workers=workers, tile=tile, tile_step=tile_step,
                         scale=scale)
    _swap_in(staging, out)
  finally:
    if os.path.lexists(staging):
      shutil.rmtree(staging, ignore_errors=True)
  return report


def _build_into(out: str, dirs: dict[str, str], *, keys: Optional[dict[str, str]], min_size: int,
                task: Optional[str], records_per_shard: int, workers: int, tile: int, tile_step: int,
                scale: int) -> dict:
  pairing = pair(dirs, keys, scale)
  skipped = dict(pairing.skipped)
  converted: dict[str, list[str]] = {}
  used: set[str] = set()
  written_names: set[str] = set()

  def good_records():
    for name, outcome in load_all(pairing, workers=workers, min_size=min_size, task=task, tile=tile,
                                  tile_step=tile_step, scale=scale):
      if not outcome.records:
        for path, reason in outcome.skipped.items():
          # a file's own failure wins over "partner unusable" from another example
          if path not in skipped or skipped[path].startswith("partner unusable"):
            skipped[path] = reason
        continue
      used.update(pairing.examples[name].values())
      written_names.add(name)
      for path, notes in outcome.converted.items():
        converted.setdefault(path, notes)
      yield from outcome.records

  extra = {"tile": {"size": tile, "step": tile_step or tile}} if tile else {}
  if scale > 1:
    extra["scale"] = int(scale)
  info = records.write(out, good_records(), records_per_shard=records_per_shard, extra_info=extra)
  report = {
      "written": info["count"],
      "skipped": [{"file": p, "reason": r} for p, r in sorted(skipped.items()) if p not in used],
      "converted": [{"file": p, "changes": c} for p, c in sorted(converted.items())],
  }
  if "prior" in dirs:  # examples written without a prior (their prior_mask is false)
    report["without_prior"] = [{"file": next(iter(pairing.examples[name].values())), "reason": why}
                               for name, why in pairing.without_prior.items() if name in written_names]
  with open(os.path.join(out, REPORT_FILE), "w") as f:
    json.dump(report, f, indent=1)
    f.write("\n")
  return {**report, "info": info}


_REASON_KINDS = ("no partner", "partner unusable", "ambiguous", "not an image", "empty file", "truncated",
                 "unreadable", "cannot be read", "smaller than", "degraded/target size mismatch",
                 "LR/HR size mismatch",
                 "name does not match", "a folder")


def summary_text(report: dict, out: str) -> str:
  """A few lines for the terminal: what was written, and counts of skips by reason."""
  info = report["info"]
  kinds = [k for k, on in (("degraded", info["has_degraded"]), ("prior", info["has_prior"])) if on]
  lines = [f"wrote {report['written']} examples (target{''.join(' + ' + k for k in kinds)}) in "
           f"{len(info['shards'])} shard(s) to {out}"]
  if report["written"]:
    lines.append(f"  sizes {info['sizes']['min'][0]}x{info['sizes']['min'][1]} .. "
                 f"{info['sizes']['max'][0]}x{info['sizes']['max'][1]}"
                 + (f"; tasks {info['tasks']}" if info["tasks"] else ""))
  if report["converted"]:
    lines.append(f"  converted {len(report['converted'])} file(s)")
  if report.get("without_prior"):
    lines.append(f"  {len(report['without_prior'])} example(s) without a prior (kept, prior_mask false)")
  if report["skipped"]:
    counts: dict[str, int] = {}
    for s in report["skipped"]:
      kind = next((k for k in _REASON_KINDS if s["reason"].startswith(k)), s["reason"].split(" (")[0])
      counts[kind] = counts.get(kind, 0) + 1
    lines.append(f"  skipped {len(report['skipped'])} file(s): "
                 + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
  lines.append(f"  details: {os.path.join(out, REPORT_FILE)}")
  return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    fail(message)


def fail(message: str) -> None:
  print(f"restorejax.data.build: error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _check_args(args) -> dict[str, str]:
  dirs = {side: getattr(args, side) for side in SIDES if getattr(args, side)}
  for side, d in dirs.items():
    if not os.path.isdir(d):
      fail(f"--{side}={d}: no such folder")
    if not os.listdir(d):
      fail(f"--{side}={d}: the folder is empty")
  for side in SIDES:
    pattern = getattr(args, f"{side}_key")
    if pattern:
      try:
        re.compile(pattern)
      except re.error as e:
        fail(f"--{side}-key={pattern}: not a regular expression ({e})")
  if args.records_per_shard < 1:
    fail(f"--records-per-shard={args.records_per_shard}: must be at least 1")
  if args.tile < 0 or args.tile_step < 0 or (args.tile_step and not args.tile):
    fail(f"--tile={args.tile} --tile-step={args.tile_step}: need tile > 0 for a step, both >= 0")
  if args.min_size < 0:
    fail(f"--min-size={args.min_size}: must be >= 0")
  if args.scale < 1:
    fail(f"--scale={args.scale}: must be >= 1")
  if args.scale > 1 and (args.tile % args.scale or args.tile_step % args.scale):
    fail(f"--tile={args.tile} --tile-step={args.tile_step}: must be multiples of --scale={args.scale}")
  out = os.path.abspath(args.out)
  for d in dirs.values():
    if os.path.abspath(d) == out:
      fail(f"--out={args.out}: is an input folder")
  try:  # the dataset is written next to --out, then renamed: the parent folder must be writable
    os.makedirs(os.path.dirname(out), exist_ok=True)
    probe = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.write_test-{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    fail(f"--out={args.out}: not writable ({e.strerror or e})")
  return dirs


def main(argv: Optional[Sequence[str]] = None) -> dict:
  parser = _Parser(prog="python -m restorejax.data.build", description=__doc__.split("\n\n")[0])
  parser.add_argument("--degraded", help="folder of degraded images (omit for a target-only dataset)")
  parser.add_argument("--target", required=True, help="folder of ground-truth images")
  parser.add_argument("--prior", help="folder of prior images (e.g. generative restorations)")
  parser.add_argument("--out", required=True, help="output folder: shards, dataset_info.json, report.json")
  parser.add_argument("--min-size", type=int, default=0,
                      help="skip examples whose target is smaller than this on either side (default 0: keep "
                           "all; give your training patch size so that no crop can fail)")
  parser.add_argument("--task", help="task label stored in every record (e.g. dehaze)")
  parser.add_argument("--scale", type=int, default=1,
                      help="super-resolution factor: --degraded holds LR images 1/SCALE of their targets "
                           "(DIV2K names such as 0001x4.png pair with 0001.png); default 1: restoration")
  parser.add_argument("--records-per-shard", type=int, default=256)
  parser.add_argument("--workers", type=int, default=1, help="processes reading and encoding images")
  parser.add_argument("--tile", type=int, default=0,
                      help="store TILE x TILE sub-images instead of whole images (e.g. 480 for 2K images: "
                           "a random crop then decodes a tile, not the whole picture); default 0: whole")
  parser.add_argument("--tile-step", type=int, default=0, help="tile stride (default: --tile; 240 overlaps)")
  for side in SIDES:
    parser.add_argument(f"--{side}-key", help=f"regex (full match on the stem; group 1 is the key) for "
                                              f"--{side} names; default: the whole stem")
  args = parser.parse_args(argv)
  dirs = _check_args(args)
  keys = {side: getattr(args, f"{side}_key") for side in SIDES if getattr(args, f"{side}_key")}
  unknown = [s for s in keys if s not in dirs]
  if unknown:
    fail(f"--{unknown[0]}-key given without --{unknown[0]}")
  try:
    report = build(dirs, args.out, keys=keys, min_size=args.min_size, task=args.task,
                   records_per_shard=args.records_per_shard, workers=args.workers, tile=args.tile,
                   tile_step=args.tile_step, scale=args.scale)
  except ValueError as e:  # --out holding other files; nothing was changed
    fail(f"--out={args.out}: {e}")
  print(summary_text(report, args.out))
  return report


if __name__ == "__main__":
  main()
