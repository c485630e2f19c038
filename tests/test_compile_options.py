"""The train step's XLA options: LLVM level 1 on CPU (half the compile time, same step), defaults elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np

from restorejax import compile_options


def test_cpu_compiles_at_llvm_level_1_and_other_platforms_keep_the_defaults():
  assert compile_options.train_step("cpu") == {"xla_backend_optimization_level": 1}
  assert compile_options.train_step("gpu") == {} and compile_options.train_step("tpu") == {}
  # A copy: a caller changing it must not change what the trainer compiles with.
  compile_options.train_step("cpu")["xla_backend_optimization_level"] = 3
  assert compile_options.train_step("cpu") == {"xla_backend_optimization_level": 1}


def test_an_option_set_in_xla_flags_is_left_to_the_user(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false --xla_backend_optimization_level=0")
  assert compile_options.train_step("cpu") == {}
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  assert compile_options.train_step("cpu") == {"xla_backend_optimization_level": 1}


def test_a_step_compiled_with_them_computes_what_the_default_compile_computes():
  f = jax.jit(lambda w, x: jnp.tanh(x @ w).sum(axis=0))
  w, x = jnp.ones((8, 4)) / 8, jnp.arange(32.0).reshape(4, 8) / 32
  fast = f.lower(w, x).compile(compiler_options=compile_options.train_step())
  np.testing.assert_allclose(fast(w, x), f(w, x), rtol=1e-6)
