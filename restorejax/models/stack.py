"""Repeated blocks: N copies of one block applied in sequence, scanned (compiled once) or unrolled.

Every network in the zoo builds its stages with `repeat`, so the compute dtype, rematerialisation and scan
options behave the same everywhere. With `scan=True` the parameters of the N blocks are stacked along a
leading axis (`<name>/<param>` of shape `(N, ...)`); unrolled, they are `<name>_<i>/<param>`.
`scan_params` / `unroll_params` move a params tree between the two layouts.
"""

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def repeat(
    block: Callable[..., nn.Module],
    num: int,
    x: Any,
    *,
    name: str,
    scan: bool = True,
    remat: bool = False,
    **kwargs: Any,
) -> Any:
  """Applies `num` blocks `block(**kwargs)` to `x` in sequence; call from inside a compact method."""
  if num == 0:
    return x
  cls = nn.remat(block, prevent_cse=not scan) if remat else block
  if not scan:
    for i in range(num):
      x = cls(name=f"{name}_{i}", **kwargs)(x)
    return x

  def body(module, carry, _):
    return module(carry), None

  scanned = nn.scan(
      body,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      length=num,
  )
  x, _ = scanned(cls(name=name, **kwargs), x, None)
  return x


def scan_params(unrolled: Any, scanned_template: Any) -> Any:
  """An unrolled params tree (`<name>_<i>/...`) in the scan layout of `scanned_template` (`<name>/...`
  with a leading block axis); a template shape is all it needs (e.g. from jax.eval_shape)."""
  if not isinstance(scanned_template, Mapping):
    return unrolled
  out = {}
  for key, sub in scanned_template.items():
    if key in unrolled:
      out[key] = scan_params(unrolled[key], sub)
      continue
    blocks = []
    while f"{key}_{len(blocks)}" in unrolled:
      blocks.append(unrolled[f"{key}_{len(blocks)}"])
    if not blocks:
      raise ValueError(f"params: no {key!r} or {key}_0 to stack")
    xp = np if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(blocks)) else jnp
    stacked = jax.tree.map(lambda *leaves: xp.stack(leaves), *blocks)
    out[key] = scan_params(stacked, sub)
  return out


def unroll_params(scanned: Any, unrolled_template: Any) -> Any:
  """The inverse of `scan_params`: a scan-layout tree in the unrolled layout of `unrolled_template`."""
  if not isinstance(unrolled_template, Mapping):
    return scanned
  out = {}
  for key, sub in unrolled_template.items():
    if key in scanned:
      out[key] = unroll_params(scanned[key], sub)
      continue
    base, _, index = key.rpartition("_")
    if base not in scanned or not index.isdigit():
      raise ValueError(f"params: no {key!r} or stacked {base!r} to take it from")
    out[key] = unroll_params(jax.tree.map(lambda leaf: leaf[int(index)], scanned[base]), sub)
  return out
