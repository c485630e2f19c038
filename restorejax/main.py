"""Command line: `python -m restorejax.main --config=configs/default.py --workdir=DIR [--config.x=y ...]`.

Also installed as `restorejax-train`. Several processes (multi-host) are joined with
`jax.distributed.initialize()` as the launcher's `RESTOREJAX_CLUSTER` says (see restorejax/distributed.py
and launch/), or with explicit `--coordinator_address --num_processes --process_id`. `--dry_run` prints
the resolved set-up and the mesh, then stops: no training, no work directory.

A user mistake (misspelt config key, unknown model or loss, unwritable work directory, ...) ends with one
line `restorejax: error: ...` and exit status 2, no traceback (set RESTOREJAX_TRACEBACK=1 to see it).
"""

import ast
import errno
import logging as std_logging
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (clu, tfds) start-up chatter

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
from ml_collections.config_flags import config_flags as config_file  # pylint: disable=g-import-not-at-top

from restorejax import distributed, sharding  # pylint: disable=g-import-not-at-top

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
flags.DEFINE_bool("dry_run", False, "Start jax.distributed as the launcher asks, print processes, devices "
                  "and the mesh, and stop: no training, no work directory.")


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
    fail(_override_error(_one_line(e), argv))
  return rest


def _config_keys(argv: list[str], path: list[str]) -> list[str]:
  """The fields of the config node at `path` (the config file loaded without overrides); [] if unknown."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  try:
    node = config_file.ConfigFileFlagParser(name="config").parse(spec)
    for key in path:
      node = node[key]
    return sorted(node.keys())
  except Exception:  # pylint: disable=broad-except  (only a hint)
    return []


def _override_error(message: str, argv: list[str]) -> str:
  """A misspelt override names the whole key and, for a missing part of it, the fields that exist there
  (e.g. `--config.losses.nope.weight`: the loss terms)."""
  overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
  for flag in overrides:
    parts = flag[len("--config."):].split(".")
    for i, field in enumerate(parts):
      if not message.startswith((f"'{field}'", f'"{field}"')):
        continue
      hint = message[len(field) + 2:].strip()
      parent = "config" + "".join(f".{p}" for p in parts[:i])
      keys = _config_keys(argv, parts[:i]) if i < len(parts) - 1 or not hint else []
      if field in keys:
        continue  # this part exists: the message is about another one
      text = f"{flag}: no such config field"
      if i < len(parts) - 1:
        text += f": {parent} has no {field!r}"
      if hint:
        text += f" ({hint})"
      if keys:
        text += f" ({parent} has: {', '.join(keys)})"
      return text
  return message


def parse_command_flags(argv: list[str]) -> list[str]:
  """absl flag parsing for the other commands (evaluate, restore, gir): a flag error is one line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(str(e))


def show_in_help(names) -> None:
  """Lists these flags under a command's --help: absl shows the key flags of the module named by
  sys.argv[0] (the console script, or the module run with `python -m`), not of the module defining them."""
  for name in names:
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def initialize_distributed() -> str:
  """Joins the other processes as the launcher says; returns the plan's description."""
  try:
    plan = distributed.resolve(os.environ, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  except distributed.DistributedError as e:
    fail(str(e))
  try:
    distributed.start(plan)
  except Exception as e:  # pylint: disable=broad-except  (e.g. no coordinator within the timeout)
    fail(f"joining the other processes failed ({plan.describe()}): {_one_line(e)}")
  return plan.describe()


def quiet_libraries() -> None:
  """orbax logs every save step at INFO; keep its warnings, and our own INFO lines.

  orbax's threads also log each failure of an asynchronous save with a traceback (four times for one
  full disk) before the main thread re-raises it, which `fail` reports in one line: their records keep
  one line, once per distinct error, unless RESTOREJAX_TRACEBACK is set.
  """
  seen = set()

  def keep(record) -> bool:
    if not any(f"{os.sep}{lib}{os.sep}" in record.pathname for lib in ("orbax", "grain")):
      return True
    if record.levelno < std_logging.WARNING:
      return False
    if record.exc_info and not os.environ.get("RESTOREJAX_TRACEBACK"):
      error = _one_line(record.exc_info[1])[:300]
      if error in seen:
        return False
      seen.add(error)
      message = record.getMessage().splitlines()[0][:300]
      record.msg, record.args = message if error[:60] in message else f"{message} ({error})", None
      record.exc_info, record.exc_text = None, None
    return True

  def not_orbax_leftover(record) -> bool:
    """asyncio logs orbax's failed writes once more, with tracebacks, as their tasks are collected."""
    error = record.exc_info[1] if record.exc_info else None
    if error is None or os.environ.get("RESTOREJAX_TRACEBACK"):
      return True
    return not any(f"{os.sep}orbax{os.sep}" in frame.filename
                   for frame in traceback.extract_tb(error.__traceback__))
  logging.get_absl_logger().addFilter(keep)
  std_logging.getLogger("asyncio").addFilter(not_orbax_leftover)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  quiet_libraries()
  allocator.keep_freed_memory()  # XLA:CPU steps reuse their pages instead of faulting them in again
  import jax  # pylint: disable=g-import-not-at-top
  from restorejax import train  # pylint: disable=g-import-not-at-top
  if FLAGS.compilation_cache and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.compilation_cache))
  plan = initialize_distributed()
  try:
    mesh = sharding.mesh(FLAGS.config)
  except ValueError as e:
    fail(str(e))
  logging.info("Start: %s", distributed.devices_line(mesh))
  if FLAGS.dry_run:
    print(f"restorejax dry run, process {jax.process_index()}: {plan}\n"
          f"restorejax dry run, process {jax.process_index()}: {distributed.devices_line(mesh)}", flush=True)
    return
  try:
    summary = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, train.TrainingError) as e:
    fail(str(e))
  except OSError as e:  # e.g. metrics or summaries on a full disk
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    fail(f"no space left on device in --workdir={FLAGS.workdir} (writing {e.filename or 'a file'}); "
         "its checkpoints are intact: free space and run the same command to resume")
  except jax.errors.JaxRuntimeError:
    if jax.process_count() > 1:  # a collective that failed because a peer died: the watchdog says which
      distributed.wait_for_lost_peer()
    raise
  if summary.get("preempted"):
    logging.warning("Stopped at step %d after SIGTERM; the checkpoint is saved.", summary["steps"])
    return
  keys = ("eval/psnr", "eval/input_psnr", "eval/ssim", "eval/input_ssim", "steps", "wall_time_s")
  logging.info("Summary: %s", {k: summary[k] for k in keys if k in summary})


def run() -> None:
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
