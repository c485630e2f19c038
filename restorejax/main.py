"""Command line: `python -m restorejax.main --config=configs/default.py --workdir=DIR [--config.x=y ...]`.

Also installed as `restorejax-train`. Several processes (multi-host) are joined with
`jax.distributed.initialize()` as the launcher's `RESTOREJAX_CLUSTER` says (see restorejax/distributed.py
and launch/), or with explicit `--coordinator_address --num_processes --process_id`. `--dry_run` prints
the resolved set-up and the mesh, then stops: no training, no work directory.

A user mistake (misspelt config key, unknown model or loss, unwritable work directory, ...) ends with one
line `restorejax: error: ...` and exit status 2, no traceback (set RESTOREJAX_TRACEBACK=1 to see it).
"""

import errno

import jax
from absl import app, flags, logging

from restorejax import allocator, cli, distributed, sharding, train

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Training's flags (the shared --config, --workdir, distributed and cache flags, and --dry_run)."""
  with cli.command_flags(config=True, workdir=True, distributed=True, compilation_cache=True):
    flags.DEFINE_bool("dry_run", False, "Start jax.distributed as the launcher asks, print processes, devices "
                      "and the mesh, and stop: no training, no work directory.")


def parse_flags(argv: list[str]) -> list[str]:
  """Training's flags parsed (defined first if need be): --config and --workdir required; any mistake,
  a misspelt config override included, is one line."""
  define_flags()
  return cli.parse_flags(argv, required=("config", "workdir"))


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  allocator.keep_freed_memory()  # XLA:CPU steps reuse their pages instead of faulting them in again
  plan = cli.start(distributed=True)
  try:
    mesh = sharding.mesh(FLAGS.config)
  except ValueError as e:
    cli.fail(str(e))
  logging.info("Start: %s", distributed.devices_line(mesh))
  if FLAGS.dry_run:
    print(f"restorejax dry run, process {jax.process_index()}: {plan}\n"
          f"restorejax dry run, process {jax.process_index()}: {distributed.devices_line(mesh)}", flush=True)
    return
  try:
    summary = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, train.TrainingError) as e:
    cli.fail(str(e))
  except OSError as e:  # e.g. metrics or summaries on a full disk
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    cli.fail(f"no space left on device in --workdir={FLAGS.workdir} (writing {e.filename or 'a file'}); "
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
