"""Prior-fusion losses: minimal at restored == prior, tolerant of what a generative prior changes
(shifts, patch order), sensitive to what it should not (noise, blur), finite gradients, clear errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from restorejax import losses
from restorejax.data import procedural
from restorejax.losses import prior

TERMS = ("prior_color", "prior_patch", "prior_gradient", "prior_shift_l1")


@pytest.fixture(scope="module")
def images():
  """Dead-leaves 64x64 crops `x`, the same scene shifted by 2 pixels (no wrap-around), and two damaged
  versions (noise, blur) of `x`."""
  src = procedural.DeadLeavesSource(num_images=2, size=72, seed=0)
  big = np.stack([src[i]["target"] for i in range(2)]).astype(np.float32) / 255.0
  x = big[:, 4:68, 4:68]
  noise = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
  blur = sum(np.roll(x, s, axis=a) for s in (-1, 1) for a in (1, 2)) / 4.0
  return {"x": x, "shifted": big[:, 6:70, 6:70], "noisy": np.clip(x + 0.05 * noise, 0, 1), "blurred": blur}


@functools.lru_cache(maxsize=None)
def _compiled(name, **options):
  return jax.jit(lambda restored, p: losses.TERMS[name](restored, {"prior": p}, **options))


def value(name, restored, p, **options):
  return float(_compiled(name, **options)(restored, p))


def l1(a, b):
  return float(np.mean(np.abs(a - b)))


@pytest.mark.parametrize("name", TERMS)
def test_minimal_at_the_prior_and_larger_when_damaged(images, name):
  x = images["x"]
  at_prior = value(name, x, x)
  if name == "prior_patch":  # flat regions repeat patches, which share their match: small, not zero
    assert at_prior < 0.1
  else:
    assert abs(at_prior) < 1e-6
  for damaged in ("noisy", "blurred"):
    assert value(name, images[damaged], x) > at_prior + 1e-3, damaged


@pytest.mark.parametrize("name", TERMS)
def test_gradients_are_finite_even_at_the_prior(images, name):
  x = images["x"]
  for restored in (x, images["noisy"]):
    g = jax.jit(jax.grad(lambda r: losses.TERMS[name](r, {"prior": x})))(restored)
    assert bool(jnp.isfinite(g).all()), name
    if restored is not x:
      assert float(jnp.abs(g).max()) > 0, name


def test_shifts_are_tolerated_where_l1_is_not(images):
  x, shifted = images["x"], images["shifted"]
  l1_shift = l1(x, shifted)
  assert l1_shift > 2 * l1(x, images["noisy"])  # to L1 the shift is worse than the noise
  assert value("prior_color", x, shifted) < 0.15 * l1_shift
  assert value("prior_shift_l1", x, shifted) < 1e-6  # the 2-pixel shift is found exactly
  # Patches and gradient statistics barely move: less than noise moves them.
  for name in ("prior_patch", "prior_gradient"):
    assert value(name, x, shifted) < value(name, images["noisy"], x), name


def test_patch_loss_ignores_the_order_of_prior_patches(images):
  x = images["x"][:, :60, :60]
  n = 12  # 5x5 blocks on a 12x12 grid, permuted
  blocks = x.reshape(2, n, 5, n, 5, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, n * n, 5, 5, 3)
  perm = np.random.default_rng(1).permutation(n * n)
  shuffled = blocks[:, perm].reshape(2, n, n, 5, 5, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 60, 60, 3)
  assert l1(x, shuffled) > 0.1
  np.testing.assert_allclose(value("prior_patch", x, shuffled, stride=5), value("prior_patch", x, x, stride=5),
                             rtol=1e-5)


def test_contextual_similarity_is_one_for_distinct_exact_matches():
  y = np.random.default_rng(0).standard_normal((1, 6, 8)).astype(np.float32)
  x = y[:, ::-1]  # the same features in another order, plus an unmatched one
  x = np.concatenate([x, 5 * np.ones((1, 1, 8), np.float32)], axis=1)
  np.testing.assert_allclose(prior.contextual_similarity(x, y, 0.5), [1.0], atol=1e-4)
  assert float(prior.contextual_similarity(x[:, :3], y, 0.5)[0]) < 0.7  # half the prior unmatched


def test_weak_supervision_never_reads_the_target(images):
  class NoTarget(dict):
    def __getitem__(self, key):
      if key == "target":
        raise AssertionError("a prior term read the target")
      return super().__getitem__(key)

    def get(self, key, default=None):
      return self[key] if key in self or key == "target" else default

  cfg = losses.default_config(prior_color=1.0, prior_patch=1.0, prior_gradient=1.0, prior_shift_l1=1.0)
  fn = losses.build(cfg)
  total, terms = jax.jit(lambda r, p: fn(r, NoTarget(prior=p)))(images["noisy"], images["x"])
  assert set(terms) == set(TERMS) and np.isfinite(float(total))


def test_missing_prior_is_named_at_trace_time(images):
  for name in TERMS:
    fn = losses.build(losses.default_config(**{name: 1.0}))
    with pytest.raises(ValueError, match=rf"config.losses.{name}: the batch has no 'prior'.*"
                                         r"config.data.use_prior.*config.data.simulated_prior"):
      jax.jit(lambda r, t: fn(r, {"target": t}))(images["x"], images["x"])
