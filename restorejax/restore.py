"""Command line: restore image files of any size with a trained run, tile by tile.

    restorejax-restore --workdir=DIR in.png [more files or folders] --out=OUTDIR
        [--prior=p.png|PRIOR_DIR] [--tile=512] [--overlap=64] [--tile_batch=1]
        [--sample_steps=N] [--seed=S]   (SR3 runs)

Each input is written to OUTDIR/<stem>.png with its own size (exactly `scale` times it for a
super-resolution network, whose tiles `--tile` / `--overlap` are in input (LR) pixels), bit depth (16-bit in, 16-bit out) and colour mode: a grey image runs through the network as
three equal channels and comes back as the luminance (BT.601) of the restored RGB (clipped to [0, 1]);
an alpha channel is re-attached unchanged. A folder stands for the image files directly in it.
`--prior` is one prior image (with one input) or a folder of priors paired by stem; a prior is resized
(bicubic) to its input's size.

The image is cut into overlapping tiles of one shape (`evaluation.tiling.restore_tiled`: blended
overlaps, one compile for every tile), so memory is bounded by the tile, not the image: the host holds
the image as stored, the float32 result and one weight plane. NAFNet's channel attention pools over its
whole input, so a tile sees its own statistics: larger tiles are closer to the untiled result (see the
README for measured gaps).

Tiles are as large as `--tile` allows; an image smaller than a tile runs as one tile whose sides are
rounded up to a short ladder of canvas sides (powers of two and 1.5 times them, multiples of the
network's stride; `canvas_side`), so a folder of photos of many sizes compiles a few times, not once per
size. The padding is reflected, as between tiles; a network with global statistics sees it.

Outputs never overwrite inputs: an --out that is an input folder, or an output that would land on an
input or prior file, stops the command before anything is written. Each output is written to a
temporary file in --out and renamed over `<stem>.png`, so a symbolic link already there is replaced,
never written through, and an interrupted command leaves no half-written PNG.

An SR3 run (`config.task == 'sr3'`) samples instead: each input, read as 8-bit RGB, is super-resolved as
the one stage of a cascade (`restorejax.tasks.sr3_cascade`, key `fold_in(PRNGKey(--seed), 0)`), so it is
the image `restorejax-cascade --stages=DIR --seed=S` writes; tiling and sampler are the run's
`config.sr3` (`--sample_steps` overrides its steps), the output is 8-bit RGB, and `--prior` is refused.

A file that cannot be read (missing, truncated, not an image, animated, a decompression bomb) is
reported (`restorejax-restore: error: <file>: <reason>`) and skipped, the others are still restored, and
the exit status is 1. A user mistake (no run directory, no --out, no inputs, --out overlapping the
inputs, --prior for a network without prior fusion) ends with one line and exit status 2.
"""

import os
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from restorejax import cli
from restorejax.data import images
from restorejax.evaluation import datasets, tiling, trained_restorer
from restorejax.tasks import sr3_cascade

FLAGS = flags.FLAGS
PROG = "restorejax-restore"
LUMA = (0.299, 0.587, 0.114)  # BT.601, as PIL's convert('L')


def define_flags() -> None:
  """The command's flags: the run directory, the compilation cache and its own."""
  with cli.command_flags(workdir=True, compilation_cache=True):
    flags.DEFINE_string("out", None, "Output folder (created); each input becomes <stem>.png there.")
    flags.DEFINE_string("prior", None, "A prior image (one input) or a folder of priors paired by stem.")
    flags.DEFINE_integer("tile", 512, "Tile side in pixels (larger: closer to untiled, more memory).")
    flags.DEFINE_integer("overlap", 64, "Overlap of neighbouring tiles in pixels.")
    flags.DEFINE_integer("tile_batch", 1, "Tiles per network call.")
    flags.DEFINE_integer("sample_steps", None, "SR3 runs: sampling steps (default: the run's config.sr3).")
    flags.DEFINE_integer("seed", 0, "SR3 runs: sampling seed (the same seed gives the same images).")


def input_files(paths: list[str]) -> list[str]:
  """Files named, and the image files directly in folders named, in order (folders sorted)."""
  return images.files_in(paths)


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def canvas_side(length: int, multiple: int) -> int:
  """The smallest of 16, 24, 32, 48, 64, 96, ... (2**k and 3 * 2**(k-1)) that holds `length`, rounded up
  to `multiple`: the few canvas sides a one-tile image is padded to."""
  side = 16
  while side < length:
    side = side * 3 // 2 if side & (side - 1) == 0 else side * 4 // 3
  return _round_up(side, multiple)


class Restore:
  """Restores one decoded image (`images.Image`) with a run's network, tile by tile."""

  def __init__(self, workdir: str, *, tile: int = 512, overlap: int = 64, tile_batch: int = 1):
    if tile < 1 or overlap < 0 or tile_batch < 1:
      raise ValueError(f"--tile={tile}, --overlap={overlap}, --tile_batch={tile_batch}: need tile >= 1, "
                       "overlap >= 0, tile_batch >= 1")
    if overlap >= tile:
      raise ValueError(f"--overlap={overlap} must be smaller than --tile={tile}")
    run = trained_restorer.load(workdir)
    self.multiple, self.scale = run.multiple, run.scale
    self.takes_prior = run.config.model.get("fusion", "none") not in ("none", None)
    self.shapes: set[tuple[int, ...]] = set()  # tile batch shapes run so far: one compile each
    self.tile, self.overlap, self.tile_batch = tile, overlap, tile_batch
    params = jax.device_put(jax.tree_util.tree_map(np.asarray, run.params), jax.local_devices()[0])

    def apply(tiles, scale):
      # Tiles arrive as stored (0..255 or 0..65535): scaled on the device, one tile batch at a time.
      x = tiles / scale
      prior = x[..., 3:] if x.shape[-1] == 6 else None
      return run.apply(params, x[..., :3], prior)

    jitted = jax.jit(apply)

    def run_tiles(tiles, scale):
      self.shapes.add(tuple(tiles.shape))
      return jitted(jnp.asarray(tiles), jnp.float32(scale))
    self._apply = run_tiles

  def tiles_for(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(tile, overlap) pairs for an image: `--tile`, or for a smaller image its `canvas_side`s."""
    th, tw = (min(self.tile, canvas_side(n, self.multiple)) for n in (h, w))
    return (th, tw), (min(self.overlap, th - 1), min(self.overlap, tw - 1))

  def __call__(self, image, prior: Optional[np.ndarray] = None) -> np.ndarray:
    """`images.Image` (+ optional uint8 RGB prior of its size) -> restored pixels, same dtype and mode."""
    px = image.pixels
    colour = px[..., :1].repeat(3, axis=-1) if image.mode in ("L", "LA") else px[..., :3]
    alpha = px[..., -1:] if image.mode in ("LA", "RGBA") else None
    peak = 65535 if image.bits == 16 else 255
    if prior is not None:
      if prior.shape != colour.shape:
        raise ValueError(f"prior of shape {prior.shape} for an image of shape {colour.shape}")
      prior = prior.astype(px.dtype) * (257 if image.bits == 16 else 1)  # to the image's scale
      colour = np.concatenate([colour, prior], axis=-1)
    h, w = px.shape[:2]
    tile, overlap = self.tiles_for(h, w)
    out = tiling.restore_tiled(lambda t: self._apply(t, peak), colour, tile=tile, overlap=overlap,
                               multiple=self.multiple, scale=self.scale, batch_size=self.tile_batch)
    out = np.clip(out, 0.0, 1.0)
    if image.mode in ("L", "LA"):  # the grey a viewer would make of the restored RGB
      out = (LUMA[0] * out[..., 0] + LUMA[1] * out[..., 1] + LUMA[2] * out[..., 2])[..., None]
    out = np.round(out * peak).astype(px.dtype)
    if alpha is not None and self.scale > 1:  # super-resolution: alpha enlarged by pixel repetition
      alpha = alpha.repeat(self.scale, axis=0).repeat(self.scale, axis=1)
    return np.concatenate([out, alpha], axis=-1) if alpha is not None else out


class SampleSR3:
  """Super-resolves one decoded image with an SR3 run, as the one stage of a cascade (module doc)."""

  takes_prior = False

  def __init__(self, workdir: str, *, seed: int = 0, sample_steps: Optional[int] = None):
    self.stage = sr3_cascade.load_stage(workdir)
    self.key = jax.random.PRNGKey(seed)
    self.sampling = {} if sample_steps is None else {"sample_steps": sample_steps}

  def __call__(self, image, prior: Optional[np.ndarray] = None) -> np.ndarray:
    """`images.Image` -> the sampled image, `scale` times larger, 8-bit RGB (`prior` must be None)."""
    if prior is not None:
      raise ValueError("an SR3 run takes no prior")
    pixels, _ = images.to_rgb8(image)
    lr = pixels[None].astype(np.float32) / 255.0
    out = sr3_cascade.run_cascade([self.stage], lr, self.key, **self.sampling)[-1]
    return np.round(out[0] * 255.0).astype(np.uint8)


def _prior_for(path: str, prior: Optional[str], single: bool) -> Optional[str]:
  if not prior:
    return None
  if not os.path.isdir(prior):
    if not single:
      raise ValueError(f"--prior={prior}: one prior file serves one input; give a folder of priors "
                       "paired by stem for several")
    return prior
  stem = os.path.splitext(os.path.basename(path))[0]
  for ext in images.EXTENSIONS:
    for candidate in (stem + ext, stem + ext.upper()):
      if os.path.isfile(os.path.join(prior, candidate)):
        return os.path.join(prior, candidate)
  raise images.ImageError(path, f"no prior named {stem}.* in {prior}")


def _check_outputs(files: list[str], out_dir: str, prior: Optional[str], inputs: list[str]) -> None:
  """ValueError when --out is an input folder or an output would land on an input or prior file."""
  real = os.path.realpath
  out_real = real(out_dir)
  for p in inputs + ([prior] if prior and os.path.isdir(prior) else []):
    if os.path.isdir(p) and real(p) == out_real:
      raise ValueError(f"--out={out_dir} is the input folder {p}: restored images would replace or mix "
                       "with the originals; choose another folder")
  protected = {real(f): f for f in files}
  if prior and os.path.isdir(prior):
    protected.update({real(os.path.join(prior, f)): os.path.join(prior, f) for f in os.listdir(prior)})
  elif prior:
    protected[real(prior)] = prior
  for f in files:
    target = _target(out_dir, f)
    if real(target) in protected:
      raise ValueError(f"--out={out_dir}: the output {target} would overwrite the input "
                       f"{protected[real(target)]}; choose another folder")


def _target(out_dir: str, path: str) -> str:
  return os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")


def _write(target: str, pixels: np.ndarray) -> None:
  """`images.replace_png`: a temporary file renamed over `target` (a link there is replaced, not followed)."""
  images.replace_png(target, pixels)


def restore_files(workdir: str, inputs: list[str], out_dir: str, *, prior: Optional[str] = None,
                  tile: int = 512, overlap: int = 64, tile_batch: int = 1, seed: int = 0,
                  sample_steps: Optional[int] = None) -> list[tuple[str, str]]:
  """Restores `inputs` (files or folders) into `out_dir`; returns the (file, reason) of each failure.

  An SR3 run samples instead (`SampleSR3`: `seed`, `sample_steps`; the tiling flags are the run's own).

  Raises ValueError for a user mistake that stops everything (no run, bad flags, empty folder).
  """
  files = input_files(inputs)
  if not files:
    raise ValueError("no input images given")
  if prior and not os.path.exists(prior):
    raise ValueError(f"--prior={prior}: no such file or folder")
  if prior and not os.path.isdir(prior) and len(files) > 1:
    raise ValueError(f"--prior={prior}: one prior file serves one input; give a folder of priors paired "
                     "by stem for several")
  _check_outputs(files, out_dir, prior, inputs)
  if sr3_cascade.is_sr3_run(workdir):
    if prior:
      raise ValueError(f"--prior={prior}: an SR3 run takes no prior (it samples from the input alone)")
    restore = SampleSR3(workdir, seed=seed, sample_steps=sample_steps)
  else:
    restore = Restore(workdir, tile=tile, overlap=overlap, tile_batch=tile_batch)
  if prior and not restore.takes_prior:
    raise ValueError(f"--prior={prior}: the network of {workdir} takes no prior (config.model.fusion is "
                     "'none'); leave out --prior, or train with a fusion")
  os.makedirs(out_dir, exist_ok=True)
  failures, written = [], {}
  for path in files:
    start = time.time()
    target = _target(out_dir, path)
    try:
      if target in written:
        raise images.ImageError(path, f"its output {target} is already taken by {written[target]}")
      image = images.read(path)
      p = _prior_for(path, prior, len(files) == 1)
      prior_px = datasets.resize_rgb8(datasets.read_rgb8(p), image.size) if p else None
      restored = restore(image, prior_px)
      _write(target, restored)
    except images.ImageError as e:
      failures.append((path, e.reason))
      cli.error(str(e), PROG)
      continue
    written[target] = path
    logging.info("%s -> %s (%dx%d %s, %d-bit) in %.1fs", path, target, image.size[0], image.size[1],
                 image.mode, image.bits, time.time() - start)
  return failures


def main(argv: list[str]) -> None:
  inputs = argv[1:]
  cli.require("workdir", "a run directory holding config.json")
  cli.require("out", "the folder to write restored images to")
  if not inputs:
    cli.fail("no input images given (files or folders after the flags)")
  cli.start()
  try:
    failures = restore_files(FLAGS.workdir, inputs, FLAGS.out, prior=FLAGS.prior, tile=FLAGS.tile,
                             overlap=FLAGS.overlap, tile_batch=FLAGS.tile_batch, seed=FLAGS.seed,
                             sample_steps=FLAGS.sample_steps)
  except ValueError as e:
    cli.fail(str(e))
  if failures:
    print(f"{PROG}: {len(failures)} of {len(input_files(inputs))} file(s) failed",
          file=sys.stderr, flush=True)
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  return cli.parse_flags(argv, refused={
      "config": "--config is not used by restorejax-restore: the run's own config.json is"})


def run() -> None:
  """Console entry point `restorejax-restore`."""
  define_flags()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
