"""Command line: evaluate a run on full images with BasicSR metrics, sharded over all devices.

    python -m restorejax.evaluate --workdir=DIR [--dataset=default|folder:DEG,TGT[,PRIOR]]
        [--crop_border=N] [--test_y_channel] [--save_outputs] [--batch_size=B] [--canvas=bucket|max]

reads DIR/config.json, builds the network, loads the EMA parameters of the latest checkpoint (or an
exported `params/`), evaluates every image whole (`evaluation.evaluator`) and writes, on process 0:
- DIR/eval/<name>.json: the dataset, the metric conventions (BasicSR, crop_border, test_y_channel,
  restored images rounded to 8 bits), the means and one row per image;
- DIR/eval/<name>.md: the same as Markdown tables; DIR/eval/<name>_grid.png: degraded | restored |
  target of the first images; with --save_outputs, DIR/eval/<name>/<image>.png (written by the process
  that restored each image).
<name> is 'default' or the folders' common parent, plus `_y` / `_crop<N>` for non-default conventions;
when DIR/eval/<name>.json already holds the report of other folders (two test sets under parents of one
name), `-<hash of the folders>` is added, so neither report replaces the other.

Super-resolution runs (a network whose output is `scale` x its input): DEGRADED_DIR holds the LR images
(1/scale of the mod-cropped targets; DIV2K names such as `0001x4.png` pair with `0001.png`), the
metrics default to SR papers' conventions, `--crop_border=scale --test_y_channel` (give either flag to
override), and the report's input row is the bicubic-upsampling baseline (`bicubic_psnr`, `bicubic_ssim`).

The mesh is the run's when it fits the devices present, else data-parallel over all of them. Several
processes are joined like training runs (`--coordinator_address --num_processes --process_id`, or
automatically under SLURM / Open MPI / TPU pods); each process reads only the images it evaluates.
A user mistake (no config.json, unknown dataset kind, missing folders, unpaired or unreadable images)
ends with one line `restorejax: error: ...` and exit status 2.
"""

import hashlib
import json
import os
import time
from typing import Any, Optional

import jax
from absl import app, flags, logging
from PIL import Image

from restorejax import cli
from restorejax.evaluation import datasets, scoring, trained_restorer

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags: the run directory, distributed and cache flags, and its own."""
  with cli.command_flags(workdir=True, distributed=True, compilation_cache=True):
    flags.DEFINE_string("dataset", "default", "default | folder:DEGRADED_DIR,TARGET_DIR[,PRIOR_DIR]")
    flags.DEFINE_integer("crop_border", 0, "Pixels cropped from every edge before the metrics "
                         "(super-resolution runs: the scale unless given).")
    flags.DEFINE_bool("test_y_channel", False, "Metrics on the Y channel (BT.601, MATLAB) only "
                      "(super-resolution runs: on unless given).")
    flags.DEFINE_bool("save_outputs", False, "Write the restored images to DIR/eval/<name>/.")
    flags.DEFINE_integer("batch_size", 0, "Global images per batch; 0: config.eval.batch_size.")
    flags.DEFINE_enum("canvas", "bucket", ["bucket", "max"],
                      "bucket: one compile per distinct size rounded up to the network's stride, scores "
                      "independent of batch-mates; max: one canvas for all (one compile).")
    flags.DEFINE_string("name", "", "Name of the outputs in DIR/eval/ (default: from --dataset).")


def output_name(dataset: str, crop_border: int, test_y_channel: bool) -> str:
  name = datasets.name_of(dataset)
  if test_y_channel:
    name += "_y"
  if crop_border:
    name += f"_crop{crop_border}"
  return name


def folders_of(dataset: str) -> list[str]:
  """The absolute folders a dataset spec names ([] for 'default')."""
  return [os.path.abspath(a) for a in datasets.parse(dataset)[1]]


def unclaimed_name(out_dir: str, name: str, dataset: str) -> str:
  """`name`, or `name-<hash>` when out_dir/<name>.json is the report of other folders."""
  try:
    with open(os.path.join(out_dir, f"{name}.json"), encoding="utf-8") as f:
      earlier = json.load(f)
  except (OSError, ValueError):
    return name
  folders = folders_of(dataset)
  try:  # reports written before "folders" existed: from their spec
    claimed = earlier["folders"] if "folders" in earlier else folders_of(earlier["dataset"])
  except (KeyError, TypeError, ValueError):
    claimed = None
  if claimed == folders:
    return name
  return f"{name}-{hashlib.sha1(chr(0).join(folders).encode()).hexdigest()[:8]}"


def markdown(report: dict[str, Any]) -> str:
  m = report["means"]
  inp = "bicubic upsampling (input)" if report.get("scale", 1) > 1 else "input"
  out = [f"# Evaluation of {report['workdir']} on {report['dataset']}", "",
         f"{report['num_images']} images, metrics as BasicSR computes them: crop_border="
         f"{report['crop_border']}, test_y_channel={report['test_y_channel']}, restored images rounded "
         "to 8 bits; means over images.", "",
         "| | PSNR (dB) | SSIM |", "| --- | --- | --- |",
         f"| restored | {m['psnr']:.4f} | {m['ssim']:.4f} |",
         f"| {inp} | {m['input_psnr']:.4f} | {m['input_ssim']:.4f} |", "",
         "| image | size | PSNR | SSIM | input PSNR | input SSIM |", "| --- | --- | --- | --- | --- | --- |"]
  for r in report["per_image"]:
    out.append(f"| {r['name']} | {r['height']}x{r['width']} | {r['psnr']:.4f} | {r['ssim']:.4f} | "
               f"{r['input_psnr']:.4f} | {r['input_ssim']:.4f} |")
  out += ["", perceptual_markdown(m, report.get("notes", []))]
  return "\n".join(out) + "\n"


def perceptual_markdown(m: dict[str, float], notes: list[str]) -> str:
  """LPIPS (AlexNet, lower is closer) / NIQE (lower is more natural) means, or why they are absent."""
  rows = [f"| {label} | {m[k]:.4f} | {m['input_' + k]:.4f} |" for k, label in
          (("lpips", "LPIPS (AlexNet, v0.1)"), ("niqe", "NIQE (BasicSR)")) if k in m]
  table = "| | restored | input |\n| --- | --- | --- |\n" + "\n".join(rows) if rows else ""
  note = "".join(f"Perceptual metrics absent: {n}\n" for n in notes)
  return (table + "\n\n" if table else "") + note


def evaluate_run(workdir: str, dataset: str = "default", *, crop_border: Optional[int] = None,
                 test_y_channel: Optional[bool] = None, save_outputs: bool = False, batch_size: int = 0,
                 canvas: str = "bucket", name: Optional[str] = None) -> dict[str, Any]:
  """Evaluates the run in `workdir` on `dataset`, writes DIR/eval/<name>.{json,md} and returns the report.

  `crop_border` / `test_y_channel` None: 0 / False for restoration, scale / True for super-resolution.
  """
  start = time.time()
  datasets.parse(dataset)  # a misspelt spec fails before the checkpoint is read
  run = trained_restorer.load(workdir)
  crop_border = (run.scale if run.scale > 1 else 0) if crop_border is None else crop_border
  test_y_channel = run.scale > 1 if test_y_channel is None else test_y_channel
  m, batch_sh = trained_restorer.mesh_and_sharding(run.config)
  shards = scoring._num_shards(batch_sh)  # pylint: disable=protected-access
  if batch_size:
    if batch_size % shards:
      raise ValueError(f"--batch_size={batch_size} is not divisible by the {shards} data-parallel shards")
  else:
    batch_size = -(-run.config.eval.batch_size // shards) * shards
  out_dir = os.path.join(workdir, "eval")
  name = name or unclaimed_name(out_dir, output_name(dataset, crop_border, test_y_channel), dataset)
  examples = datasets.build(dataset, run.config, scale=run.scale)
  ev = scoring.Evaluator(
      run.apply, m, batch_sh, examples, batch_size=batch_size, multiple=run.multiple,
      pad_mode=run.pad_mode, crop_border=crop_border, test_y_channel=test_y_channel, canvas=canvas,
      cache=False, scale=run.scale, perceptual=True,
      save_dir=os.path.join(out_dir, name) if save_outputs else None)
  result = ev(trained_restorer.place_params(run.params, run.config, m))
  logging.info("Process %d loaded %d of the %d images.", jax.process_index(), ev.decoded, len(examples))
  report = {
      "workdir": os.path.abspath(workdir), "dataset": dataset, "folders": folders_of(dataset), "name": name,
      "num_images": len(result.per_image),
      **scoring.conventions(crop_border, test_y_channel, run.scale),
      "canvas": canvas, "canvases": [list(c) for c in ev.canvases], "batch_size": batch_size,
      "devices": jax.device_count(), "processes": jax.process_count(),
      "wall_time_s": time.time() - start,
      "means": result.means, "per_image": result.per_image, "notes": result.notes,
  }
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, f"{name}.md"), "w", encoding="utf-8") as f:
      f.write(markdown(report))
    if len(result.grid):
      Image.fromarray(result.grid.reshape(-1, *result.grid.shape[2:])).save(
          os.path.join(out_dir, f"{name}_grid.png"))
  return report


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  cli.require("workdir", "a run directory holding config.json")
  cli.start(distributed=True)
  try:
    given = lambda flag: FLAGS[flag].value if FLAGS[flag].present else None
    report = evaluate_run(FLAGS.workdir, FLAGS.dataset, crop_border=given("crop_border"),
                          test_y_channel=given("test_y_channel"), save_outputs=FLAGS.save_outputs,
                          batch_size=FLAGS.batch_size, canvas=FLAGS.canvas, name=FLAGS.name or None)
  except ValueError as e:  # images.ImageError is one
    cli.fail(str(e))
  m = report["means"]
  logging.info("%s on %s (%d images, crop_border=%d, test_y_channel=%s): PSNR %.4f dB, SSIM %.4f "
               "(input %.4f dB, %.4f); wrote %s", FLAGS.workdir, FLAGS.dataset, report["num_images"],
               report["crop_border"], report["test_y_channel"], m["psnr"], m["ssim"], m["input_psnr"],
               m["input_ssim"], os.path.join(FLAGS.workdir, "eval", report["name"] + ".json"))


def parse_flags(argv: list[str]) -> list[str]:
  return cli.parse_flags(argv, refused={
      "config": "--config is not used by restorejax.evaluate: the run's own config.json is"})


def run() -> None:
  define_flags()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
