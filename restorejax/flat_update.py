"""The optimizer's elementwise work on one vector per parameter-shaped tree, for a mesh of one device.

XLA:CPU compiles each parameter leaf's clipping / AdamW / EMA / skip-if-non-finite update as fusions of
their own; over the default NAFNet's 139 leaves that code generation is a third of the train step's
compile (BENCHMARKS.md, 2026-12-07). `to_flat` turns every subtree shaped like the parameters (gradients,
parameters, EMA, the optimizer's moments) into one vector, so the same update is a few fusions over
vectors; `from_flat` gives the results back in their own tree structure, so the stored state (and its
checkpoints) does not change. Only for a mesh of one device: on larger meshes the leaves are sharded one
by one (FSDP), and one vector would gather them.
"""

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp


def usable(params: Any) -> bool:
  """Whether `params` can be one vector: more than one leaf, all of one dtype."""
  leaves = jax.tree_util.tree_leaves(params)
  return len(leaves) > 1 and len({x.dtype for x in leaves}) == 1


def _shaped_like(params: Any) -> Callable[[Any], bool]:
  """Whether a subtree has the parameters' structure and shapes, and one dtype."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  shapes = [tuple(x.shape) for x in leaves]

  def match(tree):
    sub, sub_def = jax.tree_util.tree_flatten(tree)
    return (sub_def == treedef and [tuple(x.shape) for x in sub] == shapes
            and len({x.dtype for x in sub}) == 1)

  return match


def to_flat(tree: Any, params: Any) -> Any:
  """`tree` with each subtree shaped like `params` concatenated into one vector (leaf order)."""
  match = _shaped_like(params)
  ravel = lambda sub: jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(sub)])
  return jax.tree_util.tree_map(lambda sub: ravel(sub) if match(sub) else sub, tree, is_leaf=match)


def from_flat(flat: Any, like: Any, params: Any) -> Any:
  """The inverse of `to_flat`: `flat` (shaped as `to_flat(like, params)`) in the structure of `like`."""
  match = _shaped_like(params)

  def unravel(vector, template):
    leaves, treedef = jax.tree_util.tree_flatten(template)
    out, start = [], 0
    for leaf in leaves:
      size = math.prod(leaf.shape)
      out.append(jax.lax.slice_in_dim(vector, start, start + size).reshape(leaf.shape))
      start += size
    return jax.tree_util.tree_unflatten(treedef, out)

  return jax.tree_util.tree_map(lambda sub, f: unravel(f, sub) if match(sub) else f, like, flat,
                                is_leaf=match)
