"""Command line: write a folder of generated priors for a folder of degraded images (no target needed).

    restorejax-make-priors --degraded=DIR --run=RUN_DIR --out=PRIOR_DIR [--strength=0.5] [--sample_steps=N]
        [--sampler=ddim|ddpm] [--eta=0] [--tile=N] [--overlap=N] [--downscale=N] [--severity=0.2:0.6]
        [--seed=0]

`--run` is a run directory of task 'diffusion' (SDEdit: the degraded image noised to `--strength` of the
sampling chain and denoised back; configs/diffusion_prior.py trains one) or 'sr3' (a conditional
diffusion model of the degraded image, Palette-style with `data.scale` 1; strength 1 by default). The
generator's output then gets the GPT-4o-like geometric and tonal changes of `data/priors.py` at
`--severity` (a value in [0, 1], or `LO:HI` drawn per image). Nothing here reads a ground truth: the prior
is made from the degraded image alone (`restorejax.tasks.prior_generator`). Flags left out take the run's
own values (module doc there).

Each image file directly in `--degraded` becomes `PRIOR_DIR/<stem>.png` (8-bit RGB, the degraded image's
size, `scale` times it for an SR3 run), so that

    python -m restorejax.data.build --degraded DIR --target T --prior PRIOR_DIR --out DATA

pairs degraded, target and prior by stem: generated priors and priors a user brings (GPT-4o outputs) take
the same path into training (`configs/triples.py:DATA`). Image i's key is `fold_in(PRNGKey(seed),
crc32(stem))`: the same seed gives the same prior for a file whatever else the folder holds.

Images are processed one at a time, each compiled once per distinct size (a folder of one size compiles
once); the network runs on all tiles of an image in one batch.

Outputs never overwrite inputs: `--out` may not be the `--degraded` folder or the run directory; each
prior is written to a temporary file renamed into place (`images.replace_png`), so an interrupted command
leaves no half-written PNG, and a rerun replaces the priors of an earlier one. A file that cannot be read
is reported (`restorejax-make-priors: error: <file>: <reason>`) and skipped, the others are still
written, and the exit status is 1. A user mistake (a missing or empty folder, a bad flag or sampling
option, a run directory that is not a diffusion or sr3 run) ends with one line and exit status 2.
"""

import os
import sys
import zlib
from typing import Optional

import jax
import numpy as np
from absl import app, flags

from restorejax import cli
from restorejax.data import images
from restorejax.tasks import prior_generator

FLAGS = flags.FLAGS
PROG = "restorejax-make-priors"


def parse_severity(text: str) -> tuple[float, float]:
  """'0.4' -> (0.4, 0.4); '0.2:0.6' -> (0.2, 0.6); ValueError naming the flag otherwise."""
  try:
    lo, hi = (float(v) for v in text.split(":")) if ":" in text else (float(text),) * 2
  except ValueError:
    raise ValueError(f"--severity={text}: need a number in [0, 1] or LO:HI") from None
  if not 0.0 <= lo <= hi <= 1.0:
    raise ValueError(f"--severity={text}: need 0 <= LO <= HI <= 1")
  return lo, hi


def image_key(seed: int, stem: str) -> jax.Array:
  """The key of the file named `stem`: independent of the other files and their order."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(stem.encode("utf-8")) & 0x7FFFFFFF)


def check_out(out_dir: str, degraded_dir: str, run_dir: str) -> None:
  """ValueError when `--out` is the input folder or the run directory (outputs would replace inputs)."""
  real = os.path.realpath
  for flag, path in (("--degraded", degraded_dir), ("--run", run_dir)):
    if real(out_dir) == real(path):
      raise ValueError(f"--out={out_dir} is the {flag} folder: priors would mix with or replace its files; "
                       "choose another folder")


def make_priors(generator: prior_generator.Generator, files: list[str], out_dir: str, *, seed: int = 0,
                severity: tuple[float, float] = (0.2, 0.6)) -> list[tuple[str, str]]:
  """Writes `out_dir/<stem>.png` for each degraded file; returns the (file, reason) of each failure."""
  os.makedirs(out_dir, exist_ok=True)
  failures, written = [], {}
  for path in files:
    stem = os.path.splitext(os.path.basename(path))[0]
    target = os.path.join(out_dir, stem + ".png")
    try:
      if target in written:
        raise images.ImageError(path, f"its output {target} is already taken by {written[target]}")
      pixels, _ = images.to_rgb8(images.read(path))
      key = image_key(seed, stem)
      s = float(jax.random.uniform(jax.random.fold_in(key, 1), (), minval=severity[0], maxval=severity[1])) \
          if severity[1] > severity[0] else severity[0]
      prior = prior_generator.generated_prior(generator, pixels.astype(np.float32) / 255.0, key, s)
      images.replace_png(target, np.round(np.clip(prior, 0.0, 1.0) * 255.0).astype(np.uint8))
    except images.ImageError as e:
      failures.append((path, e.reason))
      print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
      continue
    written[target] = path
    print(f"{path} -> {target} ({prior.shape[1]}x{prior.shape[0]}, severity {s:.3f})", flush=True)
  return failures


def define_flags() -> None:
  """The command's flags: the compilation cache and its own."""
  with cli.command_flags(compilation_cache=True):
    _own_flags()


def _own_flags() -> None:
  flags.DEFINE_string("degraded", None, "Folder of degraded images (the image files directly in it).")
  flags.DEFINE_string("run", None, "Run directory of a 'diffusion' (SDEdit) or 'sr3' run.")
  flags.DEFINE_string("out", None, "Output folder (created); each input becomes <stem>.png there.")
  flags.DEFINE_float("strength", None, "Fraction of the sampling chain run, (0, 1] (default: 0.5 diffusion, "
                     "1 sr3).")
  flags.DEFINE_integer("sample_steps", None, "Steps of the whole sampling chain (default: the run's "
                       "sample_steps).")
  flags.DEFINE_enum("sampler", None, ["ddim", "ddpm"], "Sampler (default: ddim; an sr3 run's own).")
  flags.DEFINE_float("eta", None, "DDIM eta (default: the run's).")
  flags.DEFINE_integer("tile", None, "Tile side the network sees, 0 = whole image (default: a diffusion "
                       "run's image size, an sr3 run's tile).")
  flags.DEFINE_integer("overlap", None, "Tile overlap (default: tile / 4; an sr3 run's own).")
  flags.DEFINE_integer("downscale", None, "Reduce the image by this factor for a diffusion run (default: "
                       "patch_size / image_size of the run).")
  flags.DEFINE_string("severity", "0.2:0.6", "GPT-4o-like changes: a value in [0, 1] or LO:HI per image.")
  flags.DEFINE_integer("seed", 0, "Seed of the noise and the changes.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected argument(s) {' '.join(argv[1:])}: the images are the folder given by --degraded")
  for name, what in (("degraded", "the folder of degraded images"), ("run", "a diffusion or sr3 run "
                     "directory"), ("out", "the folder to write priors to")):
    cli.require(name, what)
  if not os.path.isdir(FLAGS.degraded):
    cli.fail(f"--degraded={FLAGS.degraded}: no such folder")
  if not os.path.isdir(FLAGS.run):
    cli.fail(f"--run={FLAGS.run}: no such run directory")
  cli.start()
  try:
    severity = parse_severity(FLAGS.severity)
    check_out(FLAGS.out, FLAGS.degraded, FLAGS.run)
    files = images.files_in([FLAGS.degraded])
    generator = prior_generator.load(FLAGS.run, strength=FLAGS.strength, sample_steps=FLAGS.sample_steps,
                                     sampler=FLAGS.sampler, eta=FLAGS.eta, tile=FLAGS.tile,
                                     overlap=FLAGS.overlap, downscale=FLAGS.downscale)
  except ValueError as e:
    cli.fail(str(e))
  print(generator.describe(), flush=True)
  failures = make_priors(generator, files, FLAGS.out, seed=FLAGS.seed, severity=severity)
  if failures:
    print(f"{PROG}: {len(failures)} of {len(files)} file(s) failed", file=sys.stderr, flush=True)
    sys.exit(1)


def run(argv: Optional[list[str]] = None) -> None:
  """Console entry point `restorejax-make-priors`."""
  define_flags()
  app.run(main, argv=argv, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
