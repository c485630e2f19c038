"""Mesh construction and rule-based parameter shardings (rules are data in the config)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from restorejax import sharding
from conftest import tiny_config


class FakeMesh:
  """Just what the rule matcher reads: axis sizes."""

  def __init__(self, **shape):
    self.shape = shape
    self.axis_names = tuple(shape)


def spec(name, shape, mesh, rules=((".*", "fsdp"),), min_size=0):
  config = tiny_config(**{"sharding.rules": rules, "sharding.fsdp_min_size": min_size})
  return sharding._spec_for(name, shape, config, mesh)


def test_fsdp_shards_the_largest_divisible_dimension():
  m = FakeMesh(data=4, fsdp=2)
  assert spec("conv/kernel", (3, 3, 16, 32), m) == P(None, None, None, "fsdp")
  assert spec("dense/kernel", (64, 7), m) == P("fsdp")           # 7 is not divisible: next largest
  assert spec("odd", (3, 5), m) == P()                              # nothing divisible: replicated


def test_fsdp_leaves_small_parameters_and_meshes_without_fsdp_replicated():
  assert spec("bias", (32,), FakeMesh(data=4, fsdp=2), min_size=1000) == P()
  assert spec("conv/kernel", (3, 3, 16, 32), FakeMesh(data=8)) == P()


def test_first_matching_rule_wins_and_explicit_specs_are_checked():
  m = FakeMesh(data=2, model=4)
  rules = ((r"attn/.*kernel", (None, "model")), (".*", ()))
  assert spec("block/attn/qkv/kernel", (8, 16), m, rules) == P(None, "model")
  assert spec("block/mlp/kernel", (8, 16), m, rules) == P()
  with pytest.raises(ValueError, match="not divisible by mesh axis 'model'"):
    spec("block/attn/qkv/kernel", (8, 6), m, rules)


def test_mesh_fills_the_minus_one_axis_and_rejects_impossible_shapes():
  devices = jax.devices()
  config = tiny_config(mesh=(("data", -1),))
  assert sharding.mesh(config).shape["data"] == len(devices)
  with pytest.raises(ValueError, match="needs 2 devices, 1 are present"):
    sharding.mesh(tiny_config(mesh=(("data", 2),)), devices=devices[:1])
  with pytest.raises(ValueError, match="at most one axis"):
    sharding.mesh(tiny_config(mesh=(("data", -1), ("fsdp", -1))))


def test_param_shardings_follow_paths():
  m = sharding.mesh(tiny_config())
  params = {"a": {"kernel": np.zeros((4, 8))}, "b": np.zeros(3)}
  config = tiny_config(**{"sharding.rules": ((r"^a/", (None, "data")), (".*", ()))})
  sh = sharding.param_shardings(params, config, m)
  assert sh["a"]["kernel"].spec == P(None, "data") and sh["b"].spec == P()


def test_host_round_trip():
  m = sharding.mesh(tiny_config())
  bs = sharding.batch_sharding(tiny_config(), m)
  x = {"t": np.arange(24, dtype=np.float32).reshape(4, 6)}
  g = sharding.host_to_global(x, bs)
  assert g["t"].sharding == bs
  assert np.array_equal(sharding.to_host(g)["t"], x["t"])
