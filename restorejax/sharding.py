"""Device mesh, parameter sharding rules and batch placement: sharding is data in the config.

- `config.mesh`: `((axis_name, size), ...)`; one size may be -1 (all remaining devices).
- `config.sharding.rules`: `((regex, spec), ...)` matched with `re.search` against '/'-joined parameter
  paths; the first match wins. `spec` is a tuple with one mesh axis name (or None) per dimension, or the
  string 'fsdp': shard the largest dimension divisible by the 'fsdp' axis (parameters smaller than
  `config.sharding.fsdp_min_size` elements, and all when there is no 'fsdp' axis, stay replicated).
- Batches are sharded along their leading dimension over `config.sharding.batch_axes` (those present).

Models never mention devices: the same network runs on 1 CPU, 8 simulated devices or a pod.
"""

import re
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """The mesh named by `config.mesh` over all devices (of all processes)."""
  devices = jax.devices() if devices is None else devices
  names = tuple(name for name, _ in config.mesh)
  sizes = [int(size) for _, size in config.mesh]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh={config.mesh}: at most one axis may have size -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"config.mesh={config.mesh}: {len(devices)} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"config.mesh={config.mesh} needs {int(np.prod(sizes))} devices, "
                     f"{len(devices)} are present")
  # Auto axes: XLA propagates shardings through the model, which never mentions them.
  return jax.make_mesh(tuple(sizes), names, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def batch_axes(config: ml_collections.ConfigDict, m: Mesh) -> tuple[str, ...]:
  return tuple(a for a in config.sharding.batch_axes if a in m.axis_names)


def batch_sharding(config: ml_collections.ConfigDict, m: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes, the rest replicated."""
  return NamedSharding(m, P(batch_axes(config, m)))


def replicated(m: Mesh) -> NamedSharding:
  return NamedSharding(m, P())


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _spec_for(name: str, shape: tuple[int, ...], config: ml_collections.ConfigDict, m: Mesh) -> P:
  for pattern, spec in config.sharding.rules:
    if not re.search(pattern, name):
      continue
    if spec == "fsdp":
      size = m.shape.get("fsdp", 1)
      if size == 1 or int(np.prod(shape)) < config.sharding.fsdp_min_size:
        return P()
      # Largest dimension first; ties go to the last (output-feature) dimension.
      for dim in sorted(range(len(shape)), key=lambda d: (shape[d], d), reverse=True):
        if shape[dim] % size == 0:
          return P(*([None] * dim + ["fsdp"]))
      return P()
    spec = tuple(spec)
    if len(spec) > len(shape):
      raise ValueError(f"config.sharding.rules: spec {spec} for {name!r} has more entries than its "
                       f"shape {shape}")
    for dim, axis in enumerate(spec):
      if axis is not None and shape[dim] % m.shape[axis]:
        raise ValueError(f"config.sharding.rules: {name!r} dimension {dim} of size {shape[dim]} is not "
                         f"divisible by mesh axis {axis!r} ({m.shape[axis]})")
    return P(*spec)
  return P()


def param_shardings(params: Any, config: ml_collections.ConfigDict, m: Mesh) -> Any:
  """A NamedSharding for every leaf of a (possibly abstract) parameter tree, from the config's rules."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(m, _spec_for(path_str(path), tuple(x.shape), config, m)), params)


def host_to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's slice of a batch -> global arrays (each process passes its own rows)."""
  return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def replicated_to_global(tree: Any, shardings: Any) -> Any:
  """Host arrays that every process holds whole -> global arrays laid out by `shardings` (one sharding
  for every leaf, or a tree of them matching `tree`)."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree_util.tree_map(lambda _: shardings, tree)
  return jax.tree_util.tree_map(
      lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
      tree, shardings)


def to_host(tree: Any) -> Any:
  """Global arrays -> numpy on every process (gathers shards held by other processes)."""
  def fetch(x):
    if not isinstance(x, jax.Array):
      return np.asarray(x)
    if x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree_util.tree_map(fetch, tree)
