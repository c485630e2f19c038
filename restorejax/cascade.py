"""Command line: super-resolve images with one SR3 run or a cascade of them (cascaded diffusion, CDM).

    python -m restorejax.cascade --stages=RUN[,RUN2,...] in.png [more files or folders] --out=OUTDIR
        [--sample_steps=100] [--sampler=ddpm|ddim] [--eta=0] [--seed=0] [--tile=0] [--overlap=16]
        [--save_stages]

Each stage is the run directory of an `sr3` task (config.json + checkpoints or params/); it samples an
image `config.data.scale` times larger from the previous stage's output (rounded to 8 bits, as the LR
images it was trained on), conditioned on augmentation level 0 (conditioning augmentation is a training
matter only). A 16 -> 32 -> 64 cascade is `--stages=runs/c16,runs/c32`. Sampling flags left out take each
stage's own `config.sr3` values; `--tile` > 0 samples in tiles of that many output pixels, blended at
every step. Stage i uses the key `fold_in(PRNGKey(seed), i)`: the same command gives the same images.
Inputs are read as 8-bit RGB (16-bit, grey and alpha are converted); OUTDIR/<stem>.png is the last
stage's output, with `--save_stages` also OUTDIR/<stem>_stage<i>.png for the intermediate ones.

`restorejax.tasks.sr3_cascade.run_cascade(stages, lr, key)` is the same as a function (`load_stage(run_dir)`
makes a stage); `restorejax-restore` on one SR3 run samples through it too. A file
that cannot be read is reported and skipped (exit status 1); a bad run directory or flag is one line and
exit status 2.
"""

import os
import sys
from typing import Any, Optional, Sequence

import jax
import numpy as np
from absl import app, flags

from restorejax import cli
from restorejax.data import images
from restorejax.tasks import sr3_cascade

FLAGS = flags.FLAGS
PROG = "restorejax-cascade"


def define_flags() -> None:
  """The command's flags: the compilation cache and its own."""
  with cli.command_flags(compilation_cache=True):
    flags.DEFINE_list("stages", None, "SR3 run directories, lowest resolution first.")
    flags.DEFINE_string("out", None, "Output folder (created); each input becomes <stem>.png there.")
    flags.DEFINE_integer("sample_steps", None, "Sampling steps (default: each stage's config.sr3.sample_steps).")
    flags.DEFINE_enum("sampler", None, ["ddpm", "ddim"], "Sampler (default: each stage's own).")
    flags.DEFINE_float("eta", None, "DDIM eta (default: each stage's config.sr3.sample_eta).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_integer("tile", None, "Tile side in output pixels, 0 = whole image (default: the stage's).")
    flags.DEFINE_integer("overlap", None, "Tile overlap in output pixels (default: the stage's).")
    flags.DEFINE_bool("save_stages", False, "Also write every intermediate stage's output.")


def cascade_files(stages: Sequence[sr3_cascade.Stage], inputs: list[str], out_dir: str, *, seed: int = 0,
                  save_stages: bool = False, **sampling: Optional[Any]) -> list[str]:
  """Runs the cascade (`sr3_cascade.load_stage` of each run directory) on every input file; returns the files that
  failed (each reported on stderr)."""
  files = images.files_in(inputs)
  os.makedirs(out_dir, exist_ok=True)
  sampling = {k: v for k, v in sampling.items() if v is not None}
  failures = []
  for path in files:
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
      pixels, _ = images.to_rgb8(images.read(path))
    except images.ImageError as e:
      cli.error(str(e), PROG)
      failures.append(path)
      continue
    lr = pixels[None].astype(np.float32) / 255.0
    outputs = sr3_cascade.run_cascade(stages, lr, jax.random.PRNGKey(seed), **sampling)
    to8 = lambda x: np.round(x[0] * 255.0).astype(np.uint8)
    if save_stages:
      for i, o in enumerate(outputs[:-1]):
        images.replace_png(os.path.join(out_dir, f"{stem}_stage{i}.png"), to8(o))
    images.replace_png(os.path.join(out_dir, f"{stem}.png"), to8(outputs[-1]))
    print(f"{path} -> {os.path.join(out_dir, stem + '.png')} ({outputs[-1].shape[2]}x{outputs[-1].shape[1]})",
          flush=True)
  return failures


def main(argv: list[str]) -> None:
  inputs = argv[1:]
  cli.require("stages", "SR3 run directories, lowest resolution first")
  cli.require("out", "the folder to write images to")
  if not inputs:
    cli.fail("no input images given (files or folders after the flags)")
  cli.start()
  try:
    failures = cascade_files([sr3_cascade.load_stage(d) for d in FLAGS.stages], inputs, FLAGS.out, seed=FLAGS.seed,
                             save_stages=FLAGS.save_stages, sample_steps=FLAGS.sample_steps,
                             sampler=FLAGS.sampler, sample_eta=FLAGS.eta, tile=FLAGS.tile,
                             tile_overlap=FLAGS.overlap)
  except ValueError as e:
    cli.fail(str(e))
  if failures:
    print(f"{PROG}: {len(failures)} file(s) failed", file=sys.stderr, flush=True)
    sys.exit(1)


def run() -> None:
  """Console entry point `restorejax-cascade`."""
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
