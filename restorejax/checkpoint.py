"""Checkpoints and run directories (orbax).

A run directory holds `config.json` (the run's config), `checkpoints/<step>/` with two items saved in the
same step (`state`: the whole TrainState; `data`: the grain iterator position of every process), and, for
parameters imported from elsewhere (converted official weights), `params/` with `{"params": ...}`.
Saves are asynchronous and atomic (orbax writes to a temporary directory and renames it when complete),
so a run killed at any moment resumes from its last complete step.
"""

import json
import os
from typing import Any, Optional

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from restorejax import sharding

CONFIG_FILE = "config.json"


def manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints,
      enable_async_checkpointing=True,
      create=True,
  )
  return ocp.CheckpointManager(epath.Path(workdir) / "checkpoints", options=options)


def save(mgr: ocp.CheckpointManager, step: int, state: Any, data_iter: Any) -> bool:
  """Saves state and data position as step `step` (asynchronously); returns whether it saved."""
  if step in mgr.all_steps():
    return False
  return mgr.save(step, force=True, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iter)))


def restore_latest(mgr: ocp.CheckpointManager, abstract_state: Any, data_iter: Any) -> Optional[Any]:
  """The latest complete checkpoint restored onto `abstract_state`'s shardings (None if there is none).

  The data iterator is moved to the saved position in place.
  """
  step = mgr.latest_step()
  if step is None:
    return None
  restored = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iter)))
  return restored["state"]


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
  p = epath.Path(path)
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
  problems = [f"{name} missing" for name, _ in want if name not in have]
  problems += [f"{name} has shape {tuple(np.shape(have[name]))}, the model expects {tuple(v.shape)}"
               for name, v in want if name in have and tuple(np.shape(have[name])) != tuple(v.shape)]
  problems += [f"{name} unexpected" for name in sorted(set(have) - {name for name, _ in want})]
  if problems:
    raise ValueError(f"{what}: parameters do not fit the model: " + "; ".join(problems[:5])
                     + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like),
                                      [np.asarray(have[name], v.dtype) for name, v in want])


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  path = epath.Path(workdir) / CONFIG_FILE
  path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise ValueError(f"{workdir}: no {CONFIG_FILE} (is it a restorejax run directory?)")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def export_params(workdir: str, config: ml_collections.ConfigDict, params: Any) -> None:
  """Writes a run directory holding only parameters (e.g. converted official weights).

  `config.init_from=workdir` warm-starts from it and the evaluation / restore commands take it as it is.
  """
  p = epath.Path(workdir)
  p.mkdir(parents=True, exist_ok=True)
  write_config(workdir, config)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(p / "params", {"params": jax.tree_util.tree_map(np.asarray, params)}, force=True)
