"""Command line: the GIR report of a run against two reference runs, on the 100-task suite.

    restorejax-gir --workdir=DIR --weak=DIR1 --strong=DIR2 \\
        --gt=FOLDER|default --out=REPORT [--seed=0] [--real=NAME=DEG_DIR,TGT_DIR[,PRIOR_DIR] ...] \\
        [--lines=LINES.json] [--crop_border=N] [--test_y_channel] [--perceptual]

1. builds the suite (`evaluation.gir_suite`) from the ground truth into REPORT/suite (or --suite_dir),
   or reuses the one already there; 'default' draws procedural dead-leaves images (16 of 64x64, see
   --default_images / --default_size), so nothing needs downloading;
2. scores the run and each reference on every task (BasicSR PSNR / SSIM, means over the task's
   images; with --perceptual also LPIPS (AlexNet) and NIQE, both lower-is-better, where the
   `perceptual` extra is installed and, for NIQE, the images are large enough) into REPORT/scores/<name>.json (gir.py's scores format); --weak / --strong may instead be
   such a scores file (e.g. kept from an earlier report), and --lines a lines file replacing both;
3. acceptance lines = the weak reference's scores, excellence lines = the strong one's; AR, ER and RPR
   per metric (`evaluation.gir`) into REPORT/gir_report.md, gir_report.png, gir_result.json.

Also `python -m restorejax.gir_report`. Several processes are joined like training runs
(`--coordinator_address --num_processes --process_id`, or as the launcher says); process 0 builds the
suite and writes the files. One-line errors (`restorejax: error: ...`, exit 2) for user mistakes.
"""

import json
import os
import time
from typing import Any, Optional

import jax
from absl import app, flags, logging
from jax.experimental import multihost_utils

from restorejax import cli
from restorejax.evaluation import gir, gir_suite, scoring, trained_restorer

FLAGS = flags.FLAGS
METRICS = ("psnr", "ssim")  # scored against lines; input scores are kept in the scores files only
PERCEPTUAL = ("lpips", "niqe")  # also scored against lines with --perceptual


def define_flags() -> None:
  """The command's flags: the run directory, distributed and cache flags, and its own."""
  with cli.command_flags(workdir=True, distributed=True, compilation_cache=True):
    flags.DEFINE_string("weak", None, "Weak reference (acceptance lines): run directory or scores JSON.")
    flags.DEFINE_string("strong", None, "Strong reference (excellence lines): run directory or scores JSON.")
    flags.DEFINE_string("lines", None, "Lines JSON (gir.py format) instead of --weak / --strong.")
    flags.DEFINE_string("gt", "default", "Ground-truth folder, or 'default' (procedural dead leaves).")
    flags.DEFINE_string("out", None, "Report directory.")
    flags.DEFINE_string("suite_dir", None, "Where the suite is built / reused (default: OUT/suite).")
    flags.DEFINE_integer("seed", 0, "Seed of the suite (which triples, every degradation parameter).")
    flags.DEFINE_multi_string("real", [], "A real-degradation set NAME=DEGRADED_DIR,TARGET_DIR[,PRIOR_DIR].")
    flags.DEFINE_integer("default_images", 16, "Images of the 'default' ground truth.")
    flags.DEFINE_integer("default_size", 64, "Side of the 'default' ground-truth images.")
    flags.DEFINE_integer("crop_border", 0, "Pixels cropped from every edge before the metrics.")
    flags.DEFINE_bool("test_y_channel", False, "Metrics on the Y channel (BT.601, MATLAB) only.")
    flags.DEFINE_integer("batch_size", 0, "Global images per batch; 0: the run's config.eval.batch_size.")
    flags.DEFINE_bool("perceptual", False, "Also LPIPS and NIQE (lower is better; pip install -e "
                      "'.[perceptual]' and `python -m restorejax.evaluation.niqe install`).")


def score_run(workdir: str, suite_dir: str, *, crop_border: int = 0, test_y_channel: bool = False,
              batch_size: int = 0, perceptual: bool = False) -> dict[str, dict[str, float]]:
  """Per-task scores of the run in `workdir` on a built suite (all devices, all processes)."""
  run = trained_restorer.load(workdir)
  m, batch_sh = trained_restorer.mesh_and_sharding(run.config)
  shards = scoring._num_shards(batch_sh)  # pylint: disable=protected-access
  if batch_size and batch_size % shards:
    raise ValueError(f"--batch_size={batch_size} is not divisible by the {shards} data-parallel shards")
  batch_size = batch_size or -(-run.config.eval.batch_size // shards) * shards
  return gir_suite.score(run.apply, trained_restorer.place_params(run.params, run.config, m), m, batch_sh,
                         suite_dir, batch_size=batch_size, multiple=run.multiple, pad_mode=run.pad_mode,
                         crop_border=crop_border, test_y_channel=test_y_channel, perceptual=perceptual)


def _model_name(path: str) -> str:
  return os.path.basename(os.path.normpath(path)) or "model"


def _scores_of(path: str, suite_dir: str, out: str, label: str, **options) -> tuple[str, dict]:
  """(name, task -> metric -> score) of a run directory (scored now, saved) or a scores JSON file."""
  if os.path.isfile(path):
    return gir.load_scores(path)
  if not os.path.isdir(path):
    raise ValueError(f"--{label}={path}: neither a run directory nor a scores file")
  start = time.time()
  scores = score_run(path, suite_dir, **options)
  name = _model_name(path)
  logging.info("Scored %s (%s) on %d tasks in %.1fs.", path, label, len(scores), time.time() - start)
  if jax.process_index() == 0:
    os.makedirs(os.path.join(out, "scores"), exist_ok=True)
    with open(os.path.join(out, "scores", f"{label}_{name}.json"), "w", encoding="utf-8") as f:
      json.dump({"model": name, "workdir": os.path.abspath(path), "metric_convention": "BasicSR",
                 "crop_border": options.get("crop_border", 0),
                 "test_y_channel": options.get("test_y_channel", False), "scores": scores}, f, indent=1)
  return name, scores


def gir_report(workdir: str, out: str, *, weak: Optional[str] = None, strong: Optional[str] = None,
               lines: Optional[str] = None, gt: str = "default", suite_dir: Optional[str] = None,
               seed: int = 0, real: tuple[str, ...] = (), default_images: int = 16, default_size: int = 64,
               crop_border: int = 0, test_y_channel: bool = False, batch_size: int = 0,
               perceptual: bool = False) -> dict[str, Any]:
  """Builds / reuses the suite, scores the runs, writes the report; returns gir.evaluate's result."""
  if bool(lines) == bool(weak or strong) or (not lines and not (weak and strong)):
    raise ValueError("give either --weak and --strong (run directories or scores files), or --lines")
  if gt != "default" and not os.path.isdir(gt):
    raise ValueError(f"--gt={gt}: no such directory (or 'default')")
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise ValueError(f"--workdir={workdir}: no config.json (is it a restorejax run directory?)")
  real_sets = [gir_suite.parse_real(r) for r in real]
  suite_dir = suite_dir or os.path.join(out, "suite")
  start = time.time()
  if jax.process_index() == 0:
    gir_suite.build(gt, suite_dir, seed=seed, real=real_sets, default_images=default_images,
                    default_size=default_size)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("gir_suite_built")
  logging.info("Suite ready in %s (%.1fs).", suite_dir, time.time() - start)

  options = {"crop_border": crop_border, "test_y_channel": test_y_channel, "batch_size": batch_size,
             "perceptual": perceptual}
  metrics = METRICS + (PERCEPTUAL if perceptual else ())
  name, scores = _scores_of(workdir, suite_dir, out, "model", **options)
  if lines:
    task_lines = gir.load_lines(lines)
  else:
    refs = [_scores_of(path, suite_dir, out, label, **options)[1]
            for path, label in ((weak, "weak"), (strong, "strong"))]
    task_lines = gir.lines_from_references(
        *[{t: {m: v for m, v in s.items() if m in metrics} for t, s in ref.items()} for ref in refs])
  only_scored, only_lined = sorted(set(scores) - set(task_lines)), sorted(set(task_lines) - set(scores))
  if only_scored or only_lined:  # e.g. lines from a suite of another seed
    show = lambda names: ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
    raise ValueError(f"the lines do not match the suite's tasks: without lines: {show(only_scored) or '-'}; "
                     f"lines without a task: {show(only_lined) or '-'}")
  keep = lambda by_metric: {m: v for m, v in by_metric.items() if m in metrics}
  result = gir.evaluate({t: keep(s) for t, s in scores.items()}, {t: keep(v) for t, v in task_lines.items()})
  if jax.process_index() == 0:
    gir.write_report(result, out, model=name)
  return result


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  cli.require("workdir")
  cli.require("out")
  cli.start(distributed=True)
  start = time.time()
  try:
    result = gir_report(FLAGS.workdir, FLAGS.out, weak=FLAGS.weak, strong=FLAGS.strong, lines=FLAGS.lines,
                        gt=FLAGS.gt, suite_dir=FLAGS.suite_dir, seed=FLAGS.seed, real=tuple(FLAGS.real),
                        default_images=FLAGS.default_images, default_size=FLAGS.default_size,
                        crop_border=FLAGS.crop_border, test_y_channel=FLAGS.test_y_channel,
                        batch_size=FLAGS.batch_size, perceptual=FLAGS.perceptual)
  except ValueError as e:
    cli.fail(str(e))
  for metric, r in result["metrics"].items():
    logging.info("%s: AR %.3f, ER %.3f, RPR %s over %d tasks", metric, r["ar"], r["er"],
                 "n/a" if r["rpr"] is None else f"{r['rpr']:.3f}", r["n"])
  logging.info("GIR report in %s (%.1fs).", FLAGS.out, time.time() - start)


def run() -> None:
  """Console entry point `restorejax-gir`."""
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
