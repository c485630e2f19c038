"""Hand-written gradients (convs.depthwise, layernorm.layer_norm) equal autodiff of the plain formulation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from restorejax.models import convs, layernorm


def close(a, b, tol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                               atol=tol * float(np.max(np.abs(np.asarray(y, np.float32))) + 1e-12), rtol=0)


@pytest.mark.parametrize("k", [3, 5])
def test_depthwise_vjp_equals_autodiff_of_the_shifted_sum(k):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 7, 6))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (k, k, 6))
  g = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  ours = jax.vjp(convs.depthwise, x, kernel)
  plain = jax.vjp(convs.shifted_sum, x, kernel)
  close(ours[0], plain[0])
  close(ours[1](g), plain[1](g))
  # and both equal XLA's grouped convolution, the definition
  ref = jax.lax.conv_general_dilated(x, kernel[:, :, None, :], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6)
  close(ours[0], ref)


def test_layer_norm_matches_flax_forward_and_gradients():
  x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, 16))
  g = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  ref = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False)
  ours = layernorm.LayerNorm(epsilon=1e-6)
  params = ref.init(jax.random.PRNGKey(2), x)
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.PRNGKey(3), p.shape), params)
  assert jax.tree.structure(ours.init(jax.random.PRNGKey(2), x)) == jax.tree.structure(params)
  y_ref, vjp_ref = jax.vjp(lambda p, x: ref.apply(p, x), params, x)
  y, vjp = jax.vjp(lambda p, x: ours.apply(p, x), params, x)
  close(y, y_ref, 1e-6)
  close(vjp(g), vjp_ref(g))


def test_layer_norm_keeps_the_compute_dtype():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 8)).astype(jnp.bfloat16)
  mod = layernorm.LayerNorm(dtype=jnp.bfloat16)
  params = mod.init(jax.random.PRNGKey(1), x)
  y, vjp = jax.vjp(lambda x: mod.apply(params, x), x)
  assert y.dtype == jnp.bfloat16 and vjp(y)[0].dtype == jnp.bfloat16
  ref = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=jnp.bfloat16).apply(params, x)
  close(y, ref, 1e-2)
