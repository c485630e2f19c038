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

`run_cascade(stages, lr, key)` is the same as a function (`load_stage(run_dir)` makes a stage). A file
that cannot be read is reported and skipped (exit status 1); a bad run directory or flag is one line and
exit status 2.
"""

import dataclasses
import os
import sys
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from restorejax import checkpoint
from restorejax import main as cli
from restorejax.data import images
from restorejax.tasks import sr3

FLAGS = flags.FLAGS
SAMPLING = ("sample_steps", "sampler", "sample_eta", "tile", "tile_overlap")


@dataclasses.dataclass
class Stage:
  """One SR3 model of a cascade: network, parameters, its `config.sr3` block and its scale."""
  name: str
  model: Any
  params: Any
  block: Any
  scale: int
  multiple: int       # HR sides must be multiples of this (2 ** (UNet levels - 1))
  _compiled: dict = dataclasses.field(default_factory=dict)

  def sample_fn(self, **sampling):
    key = tuple(sorted(sampling.items()))
    if key not in self._compiled:
      self._compiled[key] = jax.jit(sr3.make_sample_fn(self.model, self.block, self.scale, **sampling))
    return self._compiled[key]


def load_stage(workdir: str) -> Stage:
  """A stage from an `sr3` run directory (EMA parameters of its latest checkpoint, or params/)."""
  config = checkpoint.read_config(workdir)
  if config.get("task") != "sr3":
    raise ValueError(f"{workdir}: a run of task {config.get('task', 'restoration')!r}, not 'sr3'")
  task = sr3.SR3(config)
  like = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
  params = checkpoint.fit(checkpoint.load_params(workdir), like, workdir)
  return Stage(workdir, task.model, params, config.sr3, task.scale, task.multiple)


def run_stage(stage: Stage, lr, key, **sampling):
  """One stage on an LR batch (B, h, w, 3) in [0, 1] -> (B, h * scale, w * scale, 3) in [0, 1], 8-bit
  levels. Sides are reflect-padded to what the UNet takes and the output cropped back."""
  lr = np.asarray(lr, np.float32)
  b, h, w, _ = lr.shape
  s, m = stage.scale, stage.multiple
  step = m // np.gcd(m, s)  # LR padding that makes HR sides multiples of m
  ph, pw = -h % step, -w % step
  if ph or pw:
    lr = np.pad(lr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
  out = stage.sample_fn(**sampling)(stage.params, jnp.asarray(lr), key)
  out = np.asarray(out)[:, :h * s, :w * s]
  return np.round(np.clip(out, 0.0, 1.0) * 255.0) / 255.0


def run_cascade(stages: Sequence[Stage], lr, key, **sampling) -> list:
  """Every stage's output for an LR batch in [0, 1]: [stage 0 output, stage 1 output, ...]."""
  outputs, x = [], lr
  for i, stage in enumerate(stages):
    x = run_stage(stage, x, jax.random.fold_in(key, i), **sampling)
    outputs.append(x)
  return outputs


def _define_flags() -> None:
  flags.DEFINE_list("stages", None, "SR3 run directories, lowest resolution first.")
  flags.DEFINE_string("out", None, "Output folder (created); each input becomes <stem>.png there.")
  flags.DEFINE_integer("sample_steps", None, "Sampling steps (default: each stage's config.sr3.sample_steps).")
  flags.DEFINE_enum("sampler", None, ["ddpm", "ddim"], "Sampler (default: each stage's own).")
  flags.DEFINE_float("eta", None, "DDIM eta (default: each stage's config.sr3.sample_eta).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_integer("tile", None, "Tile side in output pixels, 0 = whole image (default: the stage's).")
  flags.DEFINE_integer("overlap", None, "Tile overlap in output pixels (default: the stage's).")
  flags.DEFINE_bool("save_stages", False, "Also write every intermediate stage's output.")


def cascade_files(stages: Sequence[Stage], inputs: list[str], out_dir: str, *, seed: int = 0,
                  save_stages: bool = False, **sampling: Optional[Any]) -> list[str]:
  """Runs the cascade (`load_stage` of each run directory) on every input file; returns the files that
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
      print(f"restorejax-cascade: error: {e}", file=sys.stderr, flush=True)
      failures.append(path)
      continue
    outputs = run_cascade(stages, pixels[None].astype(np.float32) / 255.0, jax.random.PRNGKey(seed), **sampling)
    to8 = lambda x: np.round(x[0] * 255.0).astype(np.uint8)
    if save_stages:
      for i, o in enumerate(outputs[:-1]):
        images.write_png(os.path.join(out_dir, f"{stem}_stage{i}.png"), to8(o))
    images.write_png(os.path.join(out_dir, f"{stem}.png"), to8(outputs[-1]))
    print(f"{path} -> {os.path.join(out_dir, stem + '.png')} ({outputs[-1].shape[2]}x{outputs[-1].shape[1]})",
          flush=True)
  return failures


def main(argv: list[str]) -> None:
  inputs = argv[1:]
  if not FLAGS.stages:
    cli.fail("--stages is required (SR3 run directories, lowest resolution first)")
  if not FLAGS.out:
    cli.fail("--out is required (the folder to write images to)")
  if not inputs:
    cli.fail("no input images given (files or folders after the flags)")
  cli.quiet_libraries()
  if FLAGS.compilation_cache and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.compilation_cache))
  try:
    failures = cascade_files([load_stage(d) for d in FLAGS.stages], inputs, FLAGS.out, seed=FLAGS.seed,
                             save_stages=FLAGS.save_stages, sample_steps=FLAGS.sample_steps,
                             sampler=FLAGS.sampler, sample_eta=FLAGS.eta, tile=FLAGS.tile,
                             tile_overlap=FLAGS.overlap)
  except ValueError as e:
    cli.fail(str(e))
  if failures:
    print(f"restorejax-cascade: {len(failures)} file(s) failed", file=sys.stderr, flush=True)
    sys.exit(1)


def run() -> None:
  _define_flags()
  app.run(main, flags_parser=cli.parse_command_flags)


if __name__ == "__main__":
  run()
