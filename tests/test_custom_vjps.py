"""Hand-written gradients (convs.depthwise) equal autodiff of the plain formulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from restorejax.models import convs


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
