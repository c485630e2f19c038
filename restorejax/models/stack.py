"""Repeated blocks: N copies of one block applied in sequence, scanned (compiled once) or unrolled.

Every network in the zoo builds its stages with `repeat`, so the compute dtype, rematerialisation and scan
options behave the same everywhere. With `scan=True` the parameters of the N blocks are stacked along a
leading axis (`<name>/block/<param>` of shape `(N, ...)`); unrolled, they are `<name>_<i>/<param>`.
"""

from typing import Any, Callable

import flax.linen as nn


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
