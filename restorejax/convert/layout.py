"""From an official PyTorch state dict to our Flax params: weight layouts, key accounting, final checks.

A converter reads keys through a `Reader`, which transposes PyTorch layouts (conv OIHW -> HWIO, linear
(out, in) -> (in, out)) and remembers what was read. `finish` then fails, naming them, if any official key
was left unread or any expected key was missing, checks every array against the shapes our model expects
(so a wrong preset is an error naming the parameter) and returns the tree in the model's scan or unrolled
layout.
"""

from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from restorejax import checkpoint, models
from restorejax.models import fusion, stack


class Reader:
  """Hands out the arrays of a state dict in Flax layouts and records which keys were used or missing."""

  def __init__(self, state_dict: Mapping[str, np.ndarray]):
    self.state = dict(state_dict)
    self.used: set[str] = set()
    self.missing: list[str] = []

  def has(self, key: str) -> bool:
    return key in self.state

  def take(self, key: str) -> Optional[np.ndarray]:
    """The array under `key` as float32 (None, recorded as missing, when absent)."""
    if key not in self.state:
      self.missing.append(key)
      return None
    self.used.add(key)
    return np.asarray(self.state[key], dtype=np.float32)

  def skip(self, key: str, check: Optional[Callable[[np.ndarray], Optional[str]]] = None) -> None:
    """Marks a derived buffer as read; `check(array)` returns an error message when it is not as derived."""
    if key not in self.state:
      return
    self.used.add(key)
    if check is not None:
      problem = check(np.asarray(self.state[key]))
      if problem:
        raise ValueError(f"state dict key {key!r}: {problem}")

  def conv(self, prefix: str, bias: bool = True) -> dict:
    """`prefix.weight` (O, I, kh, kw) -> kernel (kh, kw, I, O), plus `prefix.bias`."""
    w = self.take(f"{prefix}.weight")
    out = {"kernel": None if w is None else w.transpose(2, 3, 1, 0)}
    if bias:
      out["bias"] = self.take(f"{prefix}.bias")
    return out

  def linear(self, prefix: str, bias: bool = True) -> dict:
    """`prefix.weight` (out, in) -> kernel (in, out), plus `prefix.bias`."""
    w = self.take(f"{prefix}.weight")
    out = {"kernel": None if w is None else w.T}
    if bias:
      out["bias"] = self.take(f"{prefix}.bias")
    return out

  def norm(self, prefix: str, bias: bool = True) -> dict:
    """LayerNorm `prefix.weight` / `prefix.bias` -> scale / bias (any leading singleton dims dropped)."""
    w = self.take(f"{prefix}.weight")
    out = {"scale": None if w is None else w.reshape(-1)}
    if bias:
      b = self.take(f"{prefix}.bias")
      out["bias"] = None if b is None else b.reshape(-1)
    return out

  def vector(self, key: str) -> Optional[np.ndarray]:
    """A per-channel parameter stored as (1, C, 1, 1) or (C, 1, 1): flattened to (C,)."""
    v = self.take(key)
    return None if v is None else v.reshape(-1)

  def check_complete(self, arch: str) -> None:
    leftover = sorted(set(self.state) - self.used)
    problems = []
    if self.missing:
      problems.append(f"{len(self.missing)} missing key(s): {first_keys(self.missing)}")
    if leftover:
      problems.append(f"{len(leftover)} unused key(s): {first_keys(leftover)}")
    if problems:
      raise ValueError(f"{arch} state dict does not match the model config: " + "; ".join(problems))


def first_keys(keys: list[str], shown: int = 10) -> str:
  """The first `shown` keys, then how many more: a mismatch of a large network stays one readable line."""
  more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
  return ", ".join(keys[:shown]) + more


def blocks(name: str, trees: Iterable[Any]) -> dict:
  """Per-block trees as the unrolled layout's `<name>_<i>` entries (`finish` restacks them for scan)."""
  return {f"{name}_{i}": t for i, t in enumerate(trees)}


def template(model_cfg: ml_collections.ConfigDict, channels: int, scan: bool) -> Any:
  """Our params' shapes for `model_cfg` in the scan or unrolled layout (abstract, nothing computed)."""
  cfg = ml_collections.ConfigDict(model_cfg.to_dict())
  cfg.scan = scan
  model = models.build(cfg)
  x = jax.ShapeDtypeStruct((1, 16, 16, channels), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]


def _pad_prior_inputs(params: dict, tmpl: dict, path: tuple) -> None:
  """Zero weights for the prior channels of the first conv (fusion='concat'): the converted network
  then computes the official function and can learn to use the prior by fine-tuning."""
  node, t = params, tmpl
  for key in path[:-1]:
    node, t = node[key], t[key]
  kernel, want = node[path[-1]], t[path[-1]].shape
  if kernel.shape[:-2] != want[:-2] or kernel.shape[-1] != want[-1] or kernel.shape[-2] > want[-2]:
    return  # a genuine mismatch: reported by the shape check
  extra = np.zeros(kernel.shape[:-2] + (want[-2] - kernel.shape[-2], kernel.shape[-1]), kernel.dtype)
  node[path[-1]] = np.concatenate([kernel, extra], axis=-2)


def _init_fusion(params: dict, model_cfg: ml_collections.ConfigDict, channels: int) -> None:
  """The fusion's own parameters ('sft', 'xattn', 'match': top-level `fusion_*` trees) from their initialisers
  (seed 0). Their output layers start at zero, so the network computes the official function."""
  model = models.build(model_cfg)
  # Run once: XLA's cheapest compilation (the network's forward is dead code here anyway).
  init = jax.jit(lambda key: {k: v for k, v in model.init(key, jnp.zeros((1, 16, 16, channels)))[
      "params"].items() if k.startswith(fusion.PREFIX)},
                 compiler_options={"xla_backend_optimization_level": 0,
                                   "xla_llvm_disable_expensive_passes": True})
  params.update(jax.tree.map(np.asarray, init(jax.random.key(0))))


def _check_shapes(params: Any, tmpl: Any, arch: str) -> None:
  checkpoint.fit(params, tmpl, f"{arch}: converted")


def finish(
    reader: Reader,
    params: dict,
    model_cfg: ml_collections.ConfigDict,
    *,
    arch: str,
    channels: int,
    first_conv: tuple,
) -> dict:
  """Checks completeness and shapes; returns params (numpy/jax arrays) in `model_cfg.scan`'s layout.

  `channels` is the input channel count for the template, `first_conv` the path of the kernel that gets
  zero prior-channel weights under fusion='concat'; 'sft' and 'xattn' get their own parameters from
  their initialisers (identity at the start).
  """
  reader.check_complete(arch)
  unrolled = template(model_cfg, channels, scan=False)
  mode = model_cfg.get("fusion", "none")
  if mode == "concat":
    _pad_prior_inputs(params, unrolled, first_conv)
  elif mode in ("sft", "xattn", "match"):
    _init_fusion(params, model_cfg, channels)
  _check_shapes(params, unrolled, arch)
  params = jax.tree.map(np.asarray, params)
  if not model_cfg.get("scan", False):
    return params
  scanned = template(model_cfg, channels, scan=True)
  params = jax.tree.map(np.asarray, stack.scan_params(params, scanned))
  _check_shapes(params, scanned, arch)
  return params
