"""Checkpoints and run directories (orbax).

A run directory holds `config.json` (the run's config), `checkpoints/<step>/` with two items saved in the
same step (`state`: the whole TrainState; `data`: the grain iterator position of every process), and, for
parameters imported from elsewhere (converted official weights), `params/` with `{"params": ...}`.
Saves are asynchronous and atomic (orbax writes to a temporary directory and renames it when complete),
so a run killed at any moment resumes from its last complete step. Checkpoints are never deleted here
(orbax deletes beyond `keep_checkpoints`): one that does not restore, or the steps after a chosen
`resume_step`, move to `checkpoints_set_aside/`. Failures to write or restore are one-line
`CheckpointError`s naming the directory and step.
"""

import errno
import json
import os
import sys
import time
from typing import Any, Optional

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from restorejax import sharding

CONFIG_FILE = "config.json"


def manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints,
      enable_async_checkpointing=True,
      create=True,
  )
  # orbax's tensorstore back end needs absolute paths; a relative --workdir is the user's right.
  return ocp.CheckpointManager(epath.Path(os.path.abspath(workdir)) / "checkpoints", options=options)


class CheckpointError(ValueError):
  """A checkpoint that cannot be written or restored; the message names the directory and the step."""


SET_ASIDE_DIR = "checkpoints_set_aside"


def _reason(error: BaseException, limit: int = 240) -> str:
  """The first line of an error (orbax / tensorstore messages run to kilobytes), shortened."""
  text = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
  return text if len(text) <= limit else text[:limit] + "..."


def _no_space(error: BaseException) -> bool:
  text = str(error)
  return (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or \
      "No space left on device" in text or "os_error_code='28'" in text or "Disk quota exceeded" in text


def _write_error(mgr: ocp.CheckpointManager, error: BaseException) -> CheckpointError:
  directory = os.fspath(mgr.directory)
  steps = sorted(mgr.all_steps())
  intact = (f"the checkpoints already there are intact (latest: step {steps[-1]})" if steps
            else "no checkpoint had been saved yet")
  rerun = "run the same command to resume" if steps else "run the same command to start again"
  if _no_space(error):
    return CheckpointError(f"no space left on device in {os.path.dirname(directory)} (writing a checkpoint "
                           f"to {directory}); {intact}; free space and {rerun}")
  return CheckpointError(f"a checkpoint could not be written to {directory} ({_reason(error)}); {intact}")


def save(mgr: ocp.CheckpointManager, step: int, state: Any, data_iter: Any) -> bool:
  """Saves state and data position as step `step` (asynchronously); returns whether it saved.

  A failed write (this one or the previous asynchronous one) raises a one-line `CheckpointError`.
  """
  if step in mgr.all_steps():
    return False
  try:
    return mgr.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter)))
  except Exception as e:  # pylint: disable=broad-except  (orbax re-raises its writer threads' errors)
    raise _write_error(mgr, e) from e


def wait(mgr: ocp.CheckpointManager) -> None:
  """Waits for the asynchronous save in flight; its failure raises a one-line `CheckpointError`."""
  try:
    mgr.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise _write_error(mgr, e) from e


def config_differences(saved: Any, config: ml_collections.ConfigDict, limit: int = 8) -> str:
  """The fields whose values differ between a saved config (JSON dict) and `config`, on one line."""
  def flat(tree, prefix=""):
    if isinstance(tree, dict):
      out = {}
      for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}."))
      return out
    return {prefix[:-1]: tree}
  now = flat(json.loads(config.to_json_best_effort()))
  before = flat(saved)
  names = sorted((k for k in set(now) | set(before) if now.get(k, "<absent>") != before.get(k, "<absent>")),
                 key=lambda k: (k not in now or k not in before, k))  # fields new to the code last
  parts = [f"{k} ({before.get(k, '<absent>')!r} saved, {now.get(k, '<absent>')!r} now)" for k in names[:limit]]
  if len(names) > limit:
    parts.append(f"and {len(names) - limit} more")
  return ", ".join(parts)


def _param_problems(have: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]]) -> list[str]:
  problems = [f"{name} missing" for name in want if name not in have]
  problems += [f"{name} has shape {have[name]}, the model expects {shape}"
               for name, shape in want.items() if name in have and have[name] != shape]
  problems += [f"{name} unexpected" for name in sorted(set(have) - set(want))]
  return problems


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {sharding.path_str(k): tuple(v.shape) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _params_misfit(step_dir: epath.Path, abstract_state: Any) -> list[str]:
  """How the saved parameters differ from the model's (empty if they fit or cannot be read)."""
  try:
    tree = ocp.PyTreeCheckpointHandler().metadata(step_dir / "state").tree
    return _param_problems(_shapes(tree["params"]), _shapes(abstract_state.params))
  except Exception:  # pylint: disable=broad-except  (unreadable metadata: restoring will say why)
    return []


def _quiet_closed_loop_callbacks() -> None:
  """After a failed restore, tensorstore's outstanding reads call back into the asyncio loop orbax has
  already closed, each printing a harmless 'Event loop is closed' traceback; this hides those only."""
  previous = sys.unraisablehook
  if getattr(previous, "restorejax", False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)
  hook.restorejax = True
  sys.unraisablehook = hook


def _restore_step(mgr: ocp.CheckpointManager, step: int, abstract_state: Any, data_iter: Any) -> Any:
  try:
    restored = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
  except Exception:
    _quiet_closed_loop_callbacks()
    raise
  return restored["state"]


def set_aside(mgr: ocp.CheckpointManager, steps: list[int], why: str) -> str:
  """Moves checkpoints out of the manager's sight (never deletes them) into `checkpoints_set_aside/`.

  Returns the folder they went to. Process 0 moves; every process then re-reads the step list.
  """
  directory = epath.Path(mgr.directory)
  target = directory.parent / SET_ASIDE_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{why}"
  if jax.process_index() == 0 and steps:
    target.mkdir(parents=True, exist_ok=True)
    for step in steps:
      (directory / str(step)).rename(target / str(step))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"restorejax_set_aside_{why}")
  mgr.reload()
  return os.fspath(target)


def restore(mgr: ocp.CheckpointManager, abstract_state: Any, data_iter: Any, *,
            config: ml_collections.ConfigDict, resume_step: int = -1) -> Optional[Any]:
  """A checkpoint restored onto `abstract_state`'s shardings, the data iterator moved to its position
  in place; None when there is no checkpoint. Raises a one-line `CheckpointError` when none fits.

  `resume_step` -1 takes the newest checkpoint that restores: a newer one that does not (truncated,
  corrupted) is set aside (`set_aside`), said in one warning line. `resume_step` N takes checkpoint N
  and sets aside the later ones, so that the run goes on from N and its new checkpoints are the ones a
  later resume finds (orbax would otherwise skip saving steps that exist and resume from the old ones);
  when the saved config already has this `resume_step` (the branch was made by an earlier, interrupted
  run of the same command), the newest checkpoint is taken instead. A config that builds other
  parameter shapes than the saved run is named field by field against the run's `config.json`.
  """
  directory = epath.Path(mgr.directory)
  workdir = directory.parent
  steps = sorted(mgr.all_steps())
  saved = _read_config_json(os.fspath(workdir))
  if resume_step >= 0:
    if resume_step not in steps:
      have = ", ".join(map(str, steps)) if steps else "none yet"
      raise CheckpointError(f"config.resume_step={resume_step}: no checkpoint {resume_step} in {directory} "
                            f"(checkpoints there: {have})")
    if saved is not None and saved.get("resume_step") == resume_step and steps[-1] > resume_step:
      logging.info("config.resume_step=%d was applied by an earlier run (%s); resuming from step %d.",
                   resume_step, workdir / CONFIG_FILE, steps[-1])
      resume_step = -1
  if not steps:
    return None
  candidates = [resume_step] if resume_step >= 0 else steps[::-1]

  failures: list[tuple[int, str]] = []
  for step in candidates:
    misfit = _params_misfit(directory / str(step), abstract_state)
    if misfit:
      differ = config_differences(saved, config) if saved is not None else ""
      raise CheckpointError(
          f"cannot resume {workdir} from checkpoint {step}: this config builds other parameters than the "
          f"saved run ({'; '.join(misfit[:2])}{f'; {len(misfit) - 2} more' if len(misfit) > 2 else ''})"
          + (f"; fields that differ from {workdir / CONFIG_FILE}: {differ}" if differ else "")
          + "; rerun with the saved values, or use a new --workdir")
    try:
      state = _restore_step(mgr, step, abstract_state, data_iter)
    except Exception as e:  # pylint: disable=broad-except  (any unreadable file: try an older step)
      failures.append((step, f"{type(e).__name__}: {_reason(e, 160)}"))
      continue
    if failures:
      bad = [s for s, _ in failures]
      moved = set_aside(mgr, bad, "unreadable")
      logging.warning("Checkpoint %s in %s does not restore (%s); moved to %s; resuming from step %d.",
                      " and ".join(map(str, bad)), directory, failures[0][1], moved, step)
    if resume_step >= 0 and steps[-1] > resume_step:
      later = [s for s in steps if s > resume_step]
      moved = set_aside(mgr, later, f"after-{resume_step}")
      logging.warning("Resuming from step %d (config.resume_step): later checkpoints %s moved to %s.",
                      resume_step, ", ".join(map(str, later)), moved)
    return state

  step, reason = failures[0]
  others = [s for s, _ in failures[1:]]
  if resume_step >= 0:
    hint = (f"choose another with --config.resume_step (checkpoints there: {', '.join(map(str, steps))})"
            if len(steps) > 1 else f"move {directory} away to start afresh")
    raise CheckpointError(f"checkpoint {step} in {directory} does not restore ({reason}); {hint}")
  raise CheckpointError(
      f"checkpoint {step} in {directory} does not restore ({reason})"
      + (f", nor do the older ones ({', '.join(map(str, others))})" if others else "")
      + f"; nothing was changed: move {directory} away (or use a new --workdir) to start afresh")


def _restore_subtree(directory: epath.Path, keys: tuple[str, ...]) -> dict[str, Any]:
  handler = ocp.PyTreeCheckpointHandler()
  tree = handler.metadata(directory).tree
  missing = [k for k in keys if k not in tree]
  if missing:
    raise ValueError(f"{directory}: checkpoint has no {', '.join(missing)} (it has {', '.join(tree)})")
  item = {k: tree[k] for k in keys}
  restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  with ocp.Checkpointer(handler) as ckptr:
    return ckptr.restore(directory, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))


def load_params(path: str, *, prefer_ema: bool = True) -> dict[str, Any]:
  """Parameters (numpy, on the host) from a run directory, a `checkpoints/<step>` dir, or a `params/` dir.

  From a training checkpoint the EMA parameters are returned when `prefer_ema` (what evaluation uses).
  """
  p = epath.Path(os.path.abspath(path))
  if not p.exists():
    raise ValueError(f"{path}: no such run directory or checkpoint")
  if (p / "state").exists():                     # checkpoints/<step>
    key = "ema_params" if prefer_ema else "params"
    return _restore_subtree(p / "state", (key,))[key]
  if (p / "checkpoints").exists():
    steps = sorted(int(s.name) for s in (p / "checkpoints").iterdir() if s.name.isdigit())
    if steps:
      return load_params(os.fspath(p / "checkpoints" / str(steps[-1])), prefer_ema=prefer_ema)
  if (p / "params").exists():
    return _restore_subtree(p / "params", ("params",))["params"]
  if (p / "_CHECKPOINT_METADATA").exists() or (p / "_METADATA").exists():
    return _restore_subtree(p, ("params",))["params"]
  raise ValueError(f"{path}: holds neither checkpoints/ nor params/ (is it a restorejax run directory?)")


def fit(loaded: Any, like: Any, what: str) -> Any:
  """`loaded` (host arrays) rearranged as the tree `like` (same '/'-paths and shapes, `like`'s dtypes).

  A ValueError names what does not fit (missing, unexpected, other shapes), prefixed by `what`.
  """
  want = [(sharding.path_str(k), v) for k, v in jax.tree_util.tree_flatten_with_path(like)[0]]
  have = {sharding.path_str(k): v for k, v in jax.tree_util.tree_flatten_with_path(loaded)[0]}
  problems = _param_problems({k: tuple(np.shape(v)) for k, v in have.items()},
                             {k: tuple(v.shape) for k, v in want})
  if problems:  # all of them, on one line: which ones are wrong is what tells the cause
    raise ValueError(f"{what}: parameters do not fit the model: " + "; ".join(problems))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like),
                                      [np.asarray(have[name], v.dtype) for name, v in want])


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """`config.json`, replaced atomically (a crash mid-write leaves the previous one)."""
  path = epath.Path(workdir) / CONFIG_FILE
  tmp = path.parent / f".{CONFIG_FILE}.tmp"
  tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(os.fspath(tmp), os.fspath(path))


def _read_config_json(workdir: str) -> Optional[dict[str, Any]]:
  try:
    return json.loads((epath.Path(workdir) / CONFIG_FILE).read_text())
  except (OSError, ValueError):
    return None


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise ValueError(f"{workdir}: no {CONFIG_FILE} (is it a restorejax run directory?)")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def export_params(workdir: str, config: ml_collections.ConfigDict, params: Any) -> None:
  """Writes a run directory holding only parameters (e.g. converted official weights).

  `config.init_from=workdir` warm-starts from it and the evaluation / restore commands take it as it is.
  """
  p = epath.Path(os.path.abspath(workdir))
  p.mkdir(parents=True, exist_ok=True)
  write_config(workdir, config)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(p / "params", {"params": jax.tree_util.tree_map(np.asarray, params)}, force=True)
