"""What every command shares: its flags, one-line failures, distributed start, the compilation cache.

A command module (main, evaluate, restore, gir_report, cascade, pod_check, bench, sweep, convert) holds
only its own work; it defines its flags when it runs, never on import:

    def define_flags() -> None:
      with cli.command_flags(workdir=True, distributed=True, compilation_cache=True):
        flags.DEFINE_string("out", None, "...")        # the command's own flags

    def main(argv):
      cli.require("workdir", "a run directory holding config.json")
      cli.start(distributed=True)                     # quiet logging, compilation cache, join processes
      try:
        ...
      except ValueError as e:
        cli.fail(str(e))                              # `restorejax: error: ...`, exit status 2

    def run():
      define_flags()
      app.run(main, flags_parser=cli.parse_flags)

The shared flags (`--config`, `--workdir`, `--coordinator_address --num_processes --process_id`,
`--compilation_cache`) have one definition, here; a command's own flags replace those of any command that
ran before in the same process (tests run several), so no flag is ever defined twice and `--tile` is
restore's or the cascade's as the running command says. A user mistake ends with one line
`<prog>: error: ...` and exit status 2, no traceback (set RESTOREJAX_TRACEBACK=1 to see it).
"""

import ast
import contextlib
import logging as std_logging
import os
import sys
import traceback
from typing import Iterator, Mapping, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (clu, tfds) start-up chatter

import jax  # pylint: disable=g-import-not-at-top
from absl import flags, logging  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
from ml_collections.config_flags import config_flags as config_file  # pylint: disable=g-import-not-at-top

from restorejax import distributed as processes  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
PROG = "restorejax"
DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id")
_own_flags: set[str] = set()  # the flags the last command_flags block defined: one command's own


# --- One-line failures ----------------------------------------------------------------------------------

def error(message: str, prog: str = PROG) -> None:
  """Prints `<prog>: error: <message>` on stderr (with the traceback being handled when
  RESTOREJAX_TRACEBACK is set)."""
  if os.environ.get("RESTOREJAX_TRACEBACK") and sys.exc_info()[0] is not None:
    traceback.print_exc()
  print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def fail(message: str, prog: str = PROG) -> None:
  """A user mistake: one line on stderr (`error`) and exit status 2."""
  error(message, prog)
  sys.exit(2)


def one_line(e: BaseException) -> str:
  """An exception's message on one line; for a wrapped traceback, its final line."""
  text = str(e)
  if text[:1] in "'\"":  # KeyError / AttributeError messages arrive as the repr of the real one
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      pass
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    lines = lines[-1:]
  return " ".join(lines) or repr(e)


# --- Flags -----------------------------------------------------------------------------------------------

def _define_shared(config: bool, workdir: bool, distributed: bool, compilation_cache: bool) -> list[str]:
  """Defines the shared flags asked for that are not defined yet (one definition each); returns their names."""
  wanted = []
  if config:
    wanted.append("config")
    if "config" not in FLAGS:
      config_flags.DEFINE_config_file("config", None, "Config file (file.py or file.py:variant).",
                                      lock_config=True)
  if workdir:
    wanted.append("workdir")
    if "workdir" not in FLAGS:
      flags.DEFINE_string("workdir", None, "Run directory: config.json, checkpoints, logs, summary.json "
                          "(training resumes it when present).")
  if distributed:
    wanted += DISTRIBUTED_FLAGS
    if "coordinator_address" not in FLAGS:
      flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for explicit multi-process runs.")
      flags.DEFINE_integer("num_processes", None, "Number of processes, for explicit multi-process runs.")
      flags.DEFINE_integer("process_id", None, "This process's index, for explicit multi-process runs.")
  if compilation_cache:
    wanted.append("compilation_cache")
    if "compilation_cache" not in FLAGS:
      flags.DEFINE_string("compilation_cache", os.path.join("~", ".cache", "restorejax", "xla"),
                          "Persistent XLA compilation cache, so a resumed or repeated run skips compiling; "
                          "'' turns it off. JAX_COMPILATION_CACHE_DIR, when set, wins.")
  return wanted


@contextlib.contextmanager
def command_flags(*, config: bool = False, workdir: bool = False, distributed: bool = False,
                  compilation_cache: bool = False) -> Iterator[None]:
  """A command defines its own flags inside this block, when it runs; the shared ones it names are
  defined here (once per process).

  The flags an earlier block defined (another command's, or this one's before: tests run several commands
  in one process) are removed first, so the block's DEFINE_* calls never collide and each command gets
  its own definitions. All the command's flags are listed under its --help.
  """
  for name in _own_flags & set(FLAGS):
    delattr(FLAGS, name)
  _own_flags.clear()
  shared = _define_shared(config, workdir, distributed, compilation_cache)
  before = set(FLAGS)
  yield
  own = set(FLAGS) - before
  _own_flags.update(own)
  show_in_help(shared + sorted(own))


def show_in_help(names: Sequence[str]) -> None:
  """Lists these flags under a command's --help: absl shows the key flags of the module named by
  sys.argv[0] (the console script, or the module run with `python -m`), not of the module defining them."""
  for name in names:
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def parse_flags(argv: list[str], *, required: Sequence[str] = (),
                refused: Optional[Mapping[str, str]] = None) -> list[str]:
  """absl's parser (app.run's `flags_parser`) with every mistake as one line (`fail`): an unknown or
  malformed flag, a misspelt config override (with the fields that exist there), a config file that does
  not load, a `required` flag left out, or a flag in `refused` (name -> the whole message), e.g. --config
  given to a command that reads the run's own config.json."""
  for name, message in (refused or {}).items():
    for arg in argv[1:argv.index("--") if "--" in argv else len(argv)]:
      if arg.split("=", 1)[0] in (f"--{name}", f"-{name}") or arg.startswith((f"--{name}.", f"-{name}.")):
        fail(message)
  try:
    rest = FLAGS(argv)
    for name in required:
      if FLAGS[name].value is None:
        fail(f"--{name} is required")
    if "config" in FLAGS and FLAGS["config"].present:
      FLAGS.config.keys()  # the file is loaded lazily: make its errors surface here
  except Exception as e:  # pylint: disable=broad-except
    fail(config_override_error(one_line(e), argv))
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


def config_override_error(message: str, argv: list[str]) -> str:
  """A misspelt override names the whole key and, for a missing part of it, the fields that exist there
  (e.g. `--config.losses.nope.weight`: the loss terms); any other message is returned as it is."""
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


def no_arguments(argv: list[str]) -> None:
  """Fails on positional arguments (a command that takes flags only)."""
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")


def require(name: str, what: str = "") -> None:
  """Fails when flag --name was left empty; `what` says what it names."""
  if not FLAGS[name].value:
    fail(f"--{name} is required" + (f" ({what})" if what else ""))


# --- Start-up --------------------------------------------------------------------------------------------

def start(*, distributed: bool = False) -> Optional[str]:
  """What a command does before its work: libraries' logging quietened, the compilation cache, and with
  `distributed` the other processes joined; returns the distributed plan's description (or None)."""
  quiet_libraries()
  use_compilation_cache()
  return start_distributed() if distributed else None


def use_compilation_cache() -> None:
  """JAX's persistent compilation cache in --compilation_cache (JAX_COMPILATION_CACHE_DIR, when set, wins)."""
  if FLAGS.compilation_cache and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.compilation_cache))


def start_distributed() -> str:
  """Joins the other processes as the launcher (or the explicit flags) says; returns the plan's description."""
  try:
    plan = processes.resolve(os.environ, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  except processes.DistributedError as e:
    fail(str(e))
  try:
    processes.start(plan)
  except Exception as e:  # pylint: disable=broad-except  (e.g. no coordinator within the timeout)
    fail(f"joining the other processes failed ({plan.describe()}): {one_line(e)}")
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
      message_of_error = one_line(record.exc_info[1])[:300]
      if message_of_error in seen:
        return False
      seen.add(message_of_error)
      message = record.getMessage().splitlines()[0][:300]
      record.msg, record.args = (message if message_of_error[:60] in message
                                 else f"{message} ({message_of_error})"), None
      record.exc_info, record.exc_text = None, None
    return True

  def not_orbax_leftover(record) -> bool:
    """asyncio logs orbax's failed writes once more, with tracebacks, as their tasks are collected."""
    e = record.exc_info[1] if record.exc_info else None
    if e is None or os.environ.get("RESTOREJAX_TRACEBACK"):
      return True
    return not any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in traceback.extract_tb(e.__traceback__))
  logging.get_absl_logger().addFilter(keep)
  std_logging.getLogger("asyncio").addFilter(not_orbax_leftover)
