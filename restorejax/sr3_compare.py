"""Command line: SR3 against regression super-resolution and bicubic, on the same held-out images.

    python -m restorejax.sr3_compare --sr3=RUN --regression=RUN[,RUN...] --out=DIR [--images=16]
        [--seed=0] [--sample_steps=N] [--sampler=ddpm|ddim]

Every method super-resolves the same LR images: the first `--images` held-out pairs of the SR3 run's
config (`tasks.sr3.held_out`, what SR3's evaluator samples: LR = MATLAB bicubic downsampling of the
target rounded to 8 bits unless the source has its own). Methods: SR3 (EMA parameters, one batch through
`tasks.sr3_cascade.run_stage` with the key PRNGKey(seed)), each regression run (an `evaluation.trained_restorer`
run directory, e.g. RRDBNet x4: EMA parameters, each whole LR image in one pass, reflect-padded to the
network's multiple and cropped back) and MATLAB bicubic upsampling. Every output is rounded to 8 bits, then
scored per image and averaged: PSNR and SSIM (BasicSR, Y channel of BT.601, crop_border = scale), SR3's
consistency (MSE on [0, 1] between the bicubic-downsampled output and the LR input; `tasks.sr3.sr_scores`,
as the SR3 evaluator reports them) and LPIPS (AlexNet v0.1 on the crop_border-cropped RGB images,
`evaluation.perceptual`) when its weights are installed. The regression runs must have the SR3 run's scale.

Writes DIR/comparison.json (conventions, means and per-image scores per method, wall time), DIR/comparison.md
(the table) and DIR/comparison.png (rows: bicubic | SR3 | each regression run | target). A bad run
directory or flag is one line and exit status 2.
"""

import json
import os
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from restorejax import checkpoint, cli, reporting
from restorejax.data import images
from restorejax.evaluation import perceptual, scoring, trained_restorer
from restorejax.tasks import sr3, sr3_cascade

FLAGS = flags.FLAGS
PROG = "restorejax.sr3_compare"
SCORES = ("psnr", "ssim", "consistency", "lpips")


def define_flags() -> None:
  """The command's flags: the compilation cache and its own."""
  with cli.command_flags(compilation_cache=True):
    flags.DEFINE_string("sr3", None, "The SR3 run directory (task 'sr3'); its held-out images are used.")
    flags.DEFINE_list("regression", [], "Regression super-resolution run directories of the same scale.")
    flags.DEFINE_string("out", None, "Output folder for comparison.{json,md,png} (created).")
    flags.DEFINE_integer("images", 16, "Held-out images compared (the first ones; at most the set's size).")
    flags.DEFINE_integer("seed", 0, "SR3 sampling seed.")
    flags.DEFINE_integer("sample_steps", None, "SR3 sampling steps (default: the run's config.sr3.sample_steps).")
    flags.DEFINE_enum("sampler", None, ["ddpm", "ddim"], "SR3 sampler (default: the run's own).")


def regression_outputs(run: trained_restorer.TrainedRestorer, lr: np.ndarray) -> np.ndarray:
  """A regression network's outputs (B, h * scale, w * scale, 3) in [0, 1], 8-bit levels, for LR in [0, 1]."""
  b, h, w, _ = lr.shape
  m, s = run.multiple, run.scale
  ph, pw = -h % m, -w % m
  if ph or pw:
    lr = np.pad(lr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=run.pad_mode)
  out = jax.jit(run.apply)(run.params, jnp.asarray(lr, jnp.float32))
  out = np.asarray(out, np.float32)[:, :h * s, :w * s]
  return np.round(np.clip(out, 0.0, 1.0) * 255.0) / 255.0


def scores(sr: np.ndarray, hr: np.ndarray, lr: np.ndarray, scale: int) -> dict[str, list[float]]:
  """Per-image PSNR, SSIM, consistency (and LPIPS when available) of outputs `sr` in [0, 1] against uint8
  `hr` / `lr`, with SR conventions (see the module docstring)."""
  per = [sr3.sr_scores(sr[i:i + 1], hr[i:i + 1], lr[i:i + 1], scale) for i in range(len(sr))]
  out = {k: [p[k] for p in per] for k in ("psnr", "ssim", "consistency")}
  border = scale if 2 * scale < min(hr.shape[1:3]) else 0
  restored = list(np.round(np.clip(sr, 0.0, 1.0) * 255.0).astype(np.uint8))
  lp = perceptual.score(restored, list(hr), [], crop_border=border, with_input=False).get("lpips")
  if lp is not None:
    out["lpips"] = [float(v) for v in lp]
  return out


def _unique(name: str, taken: Sequence[str]) -> str:
  n, i = name, 2
  while n in taken:
    n, i = f"{name}_{i}", i + 1
  return n


def compare(sr3_dir: str, regression_dirs: Sequence[str], *, count: int = 16, seed: int = 0,
            **sampling: Optional[Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """The report (see the module docstring) and each method's outputs in [0, 1] (plus 'target')."""
  start = time.time()
  stage = sr3_cascade.load_stage(sr3_dir)
  config = checkpoint.read_config(sr3_dir)
  runs = [trained_restorer.load(d) for d in regression_dirs]
  for d, run in zip(regression_dirs, runs):
    if run.scale != stage.scale:
      raise ValueError(f"{d}: a x{run.scale} network; the SR3 run {sr3_dir} is x{stage.scale}")
  hr, lr = sr3.held_out(config, stage.scale, stage.multiple, count)
  lr01 = lr.astype(np.float32) / 255.0
  sampling = {k: v for k, v in sampling.items() if v is not None}
  outputs = {"bicubic": np.stack([scoring.bicubic_upsample(x, stage.scale) for x in lr]).astype(np.float32) / 255.0}
  t = time.time()
  outputs["sr3"] = np.asarray(sr3_cascade.run_stage(stage, lr01, jax.random.PRNGKey(seed), **sampling), np.float32)
  seconds = {"sr3": time.time() - t}
  names = {"sr3": os.path.abspath(sr3_dir), "bicubic": "MATLAB imresize bicubic"}
  for d, run in zip(regression_dirs, runs):
    name = _unique(str(run.config.model.name), list(outputs))
    t = time.time()
    outputs[name] = regression_outputs(run, lr01)
    seconds[name] = time.time() - t
    names[name] = os.path.abspath(d)
  methods = {}
  for name, sr in outputs.items():
    per = scores(sr, hr, lr, stage.scale)
    methods[name] = {"source": names[name], "means": {k: float(np.mean(v)) for k, v in per.items()},
                     "per_image": per, **({"seconds": seconds[name]} if name in seconds else {})}
  border = stage.scale if 2 * stage.scale < min(hr.shape[1:3]) else 0
  report = {
      "sr3": os.path.abspath(sr3_dir), "regression": [os.path.abspath(d) for d in regression_dirs],
      "num_images": len(hr), "hr_size": list(hr.shape[1:3]), "lr_size": list(lr.shape[1:3]),
      "seed": seed, "sampling": {k: stage.block[k] for k in ("sampler", "sample_steps", "sample_eta")} | sampling,
      **scoring.conventions(border, True, stage.scale),
      "consistency": "MSE on [0, 1] between the MATLAB-bicubic-downsampled output and the LR input",
      "lpips": f"LPIPS v0.1 ({perceptual.LPIPS_NET}) on crop_border-cropped RGB" if "lpips" in methods["sr3"]["means"]
               else f"absent: {perceptual.missing()}",
      "methods": methods, "wall_time_s": time.time() - start,
  }
  return report, {**outputs, "target": hr.astype(np.float32) / 255.0}


def markdown(report: dict[str, Any]) -> str:
  """The comparison as a Markdown table, conventions stated."""
  have = [k for k in SCORES if all(k in m["means"] for m in report["methods"].values())]
  heads = {"psnr": "PSNR (dB)", "ssim": "SSIM", "consistency": "consistency (MSE)", "lpips": "LPIPS"}
  out = [f"{report['num_images']} held-out images of {report['sr3']}, {report['lr_size'][0]}x{report['lr_size'][1]}"
         f" -> {report['hr_size'][0]}x{report['hr_size'][1]} (x{report['scale']}); PSNR/SSIM: BasicSR, Y channel, "
         f"crop_border={report['crop_border']}, outputs rounded to 8 bits; consistency: {report['consistency']}; "
         f"LPIPS: {report['lpips']}. SR3 sampling: {report['sampling']}, seed {report['seed']}.", "",
         "| method | " + " | ".join(heads[k] for k in have) + " |", "| --- |" + " --- |" * len(have)]
  for name, m in report["methods"].items():
    cells = [f"{m['means'][k]:.3e}" if k == "consistency" else f"{m['means'][k]:.4f}" for k in have]
    out.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(out) + "\n"


def write(report: dict[str, Any], outputs: dict[str, np.ndarray], out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "comparison.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(out_dir, "comparison.md"), "w", encoding="utf-8") as f:
    f.write(markdown(report))
  order = ["bicubic", "sr3"] + [k for k in outputs if k not in ("bicubic", "sr3", "target")] + ["target"]
  grid = reporting.image_grid(*(outputs[k] for k in order), count=len(outputs["target"]))
  images.replace_png(os.path.join(out_dir, "comparison.png"), grid.reshape((-1,) + grid.shape[2:]))


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  cli.require("sr3", "an SR3 run directory")
  cli.require("out", "the folder to write the comparison to")
  if FLAGS.images < 1:
    cli.fail(f"--images={FLAGS.images}: need at least 1")
  cli.start()
  try:
    report, outputs = compare(FLAGS.sr3, FLAGS.regression, count=FLAGS.images, seed=FLAGS.seed,
                              sample_steps=FLAGS.sample_steps, sampler=FLAGS.sampler)
    write(report, outputs, FLAGS.out)
  except ValueError as e:  # images.ImageError is one
    cli.fail(cli.one_line(e), PROG)
  print(markdown(report), flush=True)


def run() -> None:
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
