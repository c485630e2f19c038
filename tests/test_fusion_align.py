"""Registration fusion 'align' (restorejax.models.fusion_align): ECC recovers a known view change through a
tone change and noise and leaves an aligned prior where it is; an initialised network computes its
backbone exactly on every network with feature stages; a masked or absent prior's pixels do not reach the
output; NAFNet trains with it under bfloat16, remat and scan, with priors present, masked and absent.

Cost: one forward program per network (float32), one training program (NAFNet, bf16/remat/scan) and one
registration program, compiled with XLA's cheapest options where they are large.
"""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from restorejax import models
from restorejax.models import fusion, fusion_align

TINY = {
    "nafnet": dict(width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1)),
    "restormer": dict(dim=8, num_blocks=(1, 0, 0, 1), num_refinement_blocks=0, heads=(1, 2, 2, 4)),
    "swinir": dict(embed_dim=8, depths=(2,), num_heads=(2,), window_size=4, upscale=1, upsampler=""),
    "rrdbnet": dict(scale=2, num_feat=8, num_block=1, num_grow_ch=4),
}
SHAPE = (2, 27, 21, 3)
QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def build(name, mode="align", **overrides):
  cfg = models.default_config(name)
  cfg.update(TINY[name])
  cfg.update(fusion=mode, fusion_width=4, scan=False)
  cfg.update(overrides)
  return models.build(cfg)


def backbone(params):
  return {k: v for k, v in params.items() if not k.startswith(fusion.PREFIX)}


def scene(rng, n, h, w):
  """Smooth random colour fields with some edges: something to register."""
  coarse = rng.uniform(size=(n, 5, 5, 3))
  smooth = np.asarray(jax.image.resize(coarse, (n, h, w, 3), "linear"))
  blocks = np.repeat(np.repeat(rng.uniform(size=(n, -(-h // 6), -(-w // 6), 3)), 6, 1), 6, 2)[:, :h, :w]
  return np.clip(0.6 * smooth + 0.4 * blocks, 0, 1).astype(np.float32)


def random_params(model, x, seed, *, identity):
  """Random values everywhere; `identity`: the injection's zero-initialised last conv at zero."""
  tree = jax.eval_shape(model.init, jax.random.key(0), x, x)["params"]
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if identity and "['out']" in name and fusion.PREFIX in name:
      return np.zeros(leaf.shape, np.float32)
    if name.endswith("['kernel']"):
      return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
    if name.endswith("['scale']"):
      return (1 + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
    if name.endswith(("['beta']", "['gamma']")):
      return (0.5 * rng.normal(size=leaf.shape)).astype(np.float32)
    return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, tree)


@functools.lru_cache(maxsize=None)
def probe(name):
  """One forward program of (network, 'align'): the initialised network and its backbone; a probe with
  example 1 masked under two different priors; prior=None."""
  model, plain = build(name), build(name, "none")
  rng = np.random.default_rng(0)
  x, prior, other = (scene(rng, SHAPE[0], *SHAPE[1:3]) for _ in range(3))
  start = random_params(model, x, 0, identity=True)
  params = random_params(model, x, 1, identity=False)

  def program(start, params):
    x3, p3 = jnp.concatenate([x, x, x]), jnp.concatenate([prior, other, prior])
    m3 = jnp.array([True, False, True, False, False, False])
    return {"start": model.apply({"params": start}, x, prior),
            "start_plain": plain.apply({"params": backbone(start)}, x),
            "probe": model.apply({"params": params}, x3, p3, prior_mask=m3),
            "absent": model.apply({"params": params}, x),
            "absent_plain": plain.apply({"params": backbone(params)}, x)}

  return jax.tree.map(np.asarray, jax.jit(program, compiler_options=QUICK_COMPILE)(start, params))


@pytest.mark.parametrize("name", sorted(TINY))
def test_starts_as_its_backbone_exactly(name):
  out = probe(name)
  np.testing.assert_array_equal(out["start"], out["start_plain"])


@pytest.mark.parametrize("name", sorted(TINY))
def test_masked_or_absent_prior_does_not_reach_the_output(name):
  out = probe(name)
  p = out["probe"]
  # Example 1 masked under two priors: the same output; masked ones as with no prior at all.
  np.testing.assert_array_equal(p[1], p[3])
  np.testing.assert_allclose(p[4:], out["absent"], rtol=0, atol=1e-5)
  # An absent prior: the backbone exactly, whatever the fusion's (non-zero) weights.
  np.testing.assert_array_equal(out["absent"], out["absent_plain"])
  # ... and a present one does reach it.
  assert np.abs(p[0] - out["absent"][0]).max() > 1e-3


def _corner_error(m, truth):
  c = jnp.array([-1.0, 1.0, -1.0, 1.0]), jnp.array([-1.0, -1.0, 1.0, 1.0])
  a, b = fusion_align.apply(m, *c), fusion_align.apply(truth, *c)
  return float(jnp.max(jnp.abs(jnp.stack(a) - jnp.stack(b))))


@functools.lru_cache(maxsize=None)
def _registrations():
  """Known view changes of a 64x64 scene, re-toned, against a noisy template: (found, truth) pairs."""
  rng = np.random.default_rng(3)
  target = jnp.asarray(scene(rng, 1, 64, 64)[0])
  degraded = jnp.clip(target + 0.1 * jnp.asarray(rng.normal(size=target.shape), jnp.float32), 0, 1)
  a = np.deg2rad(4.0)
  views = [np.eye(3, dtype=np.float32),
           np.array([[1.06 * np.cos(a), -np.sin(a), 0.08], [np.sin(a), 0.95 * np.cos(a), -0.06],
                     [0.02, -0.03, 1.0]], np.float32)]
  x, y = fusion_align.grid(64, 64)
  pairs = []
  for m in views:
    prior, _ = fusion_align.sample(target, *fusion_align.apply(jnp.asarray(m), x, y))
    prior = 0.2 + 0.6 * prior ** 1.4 * jnp.array([1.1, 0.9, 1.0])  # a tone change ECC must ignore
    found, _ = jax.jit(fusion_align.register)(degraded, prior)
    pairs.append((found, jnp.linalg.inv(jnp.asarray(m))))  # the prior shows the target at m x
  return pairs


def test_registration_recovers_a_view_change_through_a_tone_change():
  """Corners moved by more than 4 px (of 64) are found within 1 px (0.03 half-sides; measured 0.018)."""
  found, truth = _registrations()[1]
  assert _corner_error(jnp.eye(3), truth) > 0.12
  assert _corner_error(found, truth) < 0.03


def test_an_aligned_prior_stays_where_it_is():
  found, truth = _registrations()[0]
  assert _corner_error(found, truth) < 0.006  # 0.2 px


def test_trains_under_bfloat16_remat_and_scan():
  """Adam steps on NAFNet (two blocks per stage, scanned and rematerialised, bfloat16) with priors
  present, masked and absent: the loss falls and every parameter moves, the zero-initialised ones too."""
  model = build("nafnet", enc_blocks=(2,), middle_blocks=2, dec_blocks=(2,), scan=True, remat=True,
                dtype="bfloat16")
  rng = np.random.default_rng(1)
  target = scene(rng, 2, 16, 16)
  x = np.clip(target + 0.1 * rng.normal(size=target.shape), 0, 1).astype(np.float32)
  prior = np.roll(target, 1, axis=2)  # a prior that is there but shifted by a pixel
  params = random_params(model, x, 0, identity=True)
  out = jax.eval_shape(lambda: model.apply({"params": params}, x, prior))
  masks = np.array([[True, True], [True, False], [False, False], [True, True]])

  def program(params):
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def step(carry, mask):
      flat, m, v, t = carry
      loss, g = jax.value_and_grad(lambda f: jnp.mean(jnp.abs(
          model.apply({"params": unravel(f)}, x, prior, prior_mask=mask) - target)))(flat)
      t = t + 1
      m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
      flat = flat - 1e-2 * (m / (1 - 0.9 ** t)) / (jnp.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
      return (flat, m, v, t), loss

    zeros = jnp.zeros_like(flat)
    (flat, *_), losses = jax.lax.scan(step, (flat, zeros, zeros, 0), masks)
    changed = jnp.stack([jnp.any(a != b) for a, b in zip(jax.tree.leaves(params),
                                                         jax.tree.leaves(unravel(flat)))])
    return losses, changed

  losses, changed = jax.jit(program, compiler_options=QUICK_COMPILE)(params)
  assert out.dtype == jnp.float32
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  assert np.asarray(changed).all(), [n for n, c in zip(names, changed) if not c]
  assert any("fusion_align_inject" in n for n in names)


def test_dehazenet_refuses_align():
  with pytest.raises(ValueError, match="'align' is not supported by DehazeNet"):
    cfg = models.default_config("dehazenet")
    cfg.update(fusion="align")
    jax.eval_shape(models.build(cfg).init, jax.random.key(0), jnp.zeros(SHAPE))
