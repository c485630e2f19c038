"""Command line: `python -m restorejax.main --config=configs/default.py --workdir=DIR [--config.x=y ...]`.

Also installed as `restorejax-train`. Several processes (multi-host) are joined with
`jax.distributed.initialize()`: automatically under SLURM / Open MPI / multi-worker TPU VMs, or with
explicit `--coordinator_address --num_processes --process_id` (see launch/).

A user mistake (misspelt config key, unknown model or loss, unwritable work directory, ...) ends with one
line `restorejax: error: ...` and exit status 2, no traceback (set RESTOREJAX_TRACEBACK=1 to see it).
"""

import ast
import logging as std_logging
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (clu, tfds) start-up chatter

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

from restorejax import allocator  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (file.py or file.py:variant).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, summary.json; resumed if present.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for explicit multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for explicit multi-process runs.")
flags.DEFINE_integer("process_id", None, "This process's index, for explicit multi-process runs.")
flags.DEFINE_string("compilation_cache", os.path.join("~", ".cache", "restorejax", "xla"),
                    "Persistent XLA compilation cache, so a resumed or repeated run skips compiling; "
                    "'' turns it off. JAX_COMPILATION_CACHE_DIR, when set, wins.")


def fail(message: str) -> None:
  if os.environ.get("RESTOREJAX_TRACEBACK"):
    traceback.print_exc()
  print(f"restorejax: error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _one_line(error: BaseException) -> str:
  """An exception's message on one line; for a wrapped traceback, its final line."""
  text = str(error)
  if text[:1] in "'\"":  # KeyError / AttributeError messages arrive as the repr of the real one
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      pass
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    lines = lines[-1:]
  return " ".join(lines) or repr(error)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with a flag or config error reported as one line."""
  try:
    rest = FLAGS(argv)
    for name in ("config", "workdir"):
      if getattr(FLAGS, name) is None:
        fail(f"--{name} is required")
    FLAGS.config.keys()  # the file is loaded lazily: make its errors surface here
  except Exception as e:  # pylint: disable=broad-except
    message = _one_line(e)
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    for flag in overrides:  # a misspelt override: name the whole key
      field = flag.split(".")[-1]
      if message.startswith((f"'{field}'", f'"{field}"')):
        hint = message[len(field) + 2:].strip()
        message = f"{flag}: no such config field" + (f" ({hint})" if hint else "")
        break
    fail(message)
  return rest


def parse_command_flags(argv: list[str]) -> list[str]:
  """absl flag parsing for the other commands (evaluate, restore, gir): a flag error is one line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(str(e))


def _auto_distributed() -> bool:
  env = os.environ
  return (int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
          or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def initialize_distributed() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address or (FLAGS.num_processes or 1) > 1:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif _auto_distributed():
    jax.distributed.initialize()


def quiet_libraries() -> None:
  """orbax logs every save step at INFO; keep its warnings, and our own INFO lines."""
  def keep(record) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        f"{os.sep}{lib}{os.sep}" in record.pathname for lib in ("orbax", "grain"))
  logging.get_absl_logger().addFilter(keep)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  quiet_libraries()
  allocator.keep_freed_memory()  # XLA:CPU steps reuse their pages instead of faulting them in again
  import jax  # pylint: disable=g-import-not-at-top
  from restorejax import train  # pylint: disable=g-import-not-at-top
  if FLAGS.compilation_cache and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.compilation_cache))
  initialize_distributed()
  try:
    summary = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, train.TrainingError) as e:
    fail(str(e))
  if summary.get("preempted"):
    logging.warning("Stopped at step %d after SIGTERM; the checkpoint is saved.", summary["steps"])
    return
  keys = ("eval/psnr", "eval/input_psnr", "eval/ssim", "eval/input_ssim", "steps", "wall_time_s")
  logging.info("Summary: %s", {k: summary[k] for k in keys if k in summary})


def run() -> None:
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
