"""Correspondence fusion 'match' (restorejax.models.fusion_match): the matching finds a known shift through a
tone change, an initialised network computes its backbone exactly on every network with feature stages,
a masked or absent prior's pixels do not reach the output, and NAFNet trains with it under bfloat16, remat
and scan, with priors present, masked and absent.

Cost: one forward program per network (float32) and one training program (NAFNet, bf16/remat/scan), all
compiled with XLA's cheapest options; the matching and warping checks run eagerly on tiny arrays.
"""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from restorejax import models
from restorejax.models import fusion, fusion_match

TINY = {
    "nafnet": dict(width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1)),
    "restormer": dict(dim=8, num_blocks=(1, 0, 0, 1), num_refinement_blocks=0, heads=(1, 2, 2, 4)),
    "swinir": dict(embed_dim=8, depths=(2,), num_heads=(2,), window_size=4, upscale=1, upsampler=""),
    "rrdbnet": dict(scale=2, num_feat=8, num_block=1, num_grow_ch=4),
}
SCALE = {"rrdbnet": 2}
SHAPE = (2, 27, 21, 3)
QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def build(name, mode="match", **overrides):
  cfg = models.default_config(name)
  cfg.update(TINY[name])
  cfg.update(fusion=mode, fusion_width=4, scan=False)
  cfg.update(overrides)
  return models.build(cfg)


def backbone(params):
  return {k: v for k, v in params.items() if not k.startswith(fusion.PREFIX)}


def scene(rng, n, h, w):
  """Smooth random colour fields with some edges: something to match."""
  coarse = rng.uniform(size=(n, 5, 5, 3))
  smooth = np.asarray(jax.image.resize(coarse, (n, h, w, 3), "linear"))
  blocks = np.repeat(np.repeat(rng.uniform(size=(n, -(-h // 6), -(-w // 6), 3)), 6, 1), 6, 2)[:, :h, :w]
  return np.clip(0.6 * smooth + 0.4 * blocks, 0, 1).astype(np.float32)


def random_params(model, x, seed, *, identity):
  """Sensible random values everywhere; `identity`: the transfers' zero-initialised `value` at zero."""
  tree = jax.eval_shape(model.init, jax.random.key(0), x, x)["params"]
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if identity and "['value']" in name:
      return np.zeros(leaf.shape, np.float32)
    if name.endswith("['kernel']"):
      return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
    if name.endswith("['scale']") and fusion.PREFIX not in name:
      return (1 + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
    if name.endswith(("['beta']", "['gamma']")):
      return (0.5 * rng.normal(size=leaf.shape)).astype(np.float32)
    if name.endswith("['learned_weight']"):
      return np.float32(0.5)
    if name.endswith("['log_temperature']"):
      return np.float32(np.log(10.0))
    if name.endswith("['zero_offset_bias']"):
      return np.float32(fusion_match.ZERO_OFFSET_BIAS)
    return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, tree)


@functools.lru_cache(maxsize=None)
def probe(name):
  """One forward program of (network, 'match'): the initialised network and its backbone; a probe with
  example 1 masked under two different priors; the same with both masked; prior=None."""
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
            "absent": model.apply({"params": params}, x)}

  return jax.tree.map(np.asarray, jax.jit(program, compiler_options=QUICK_COMPILE)(start, params))


@pytest.mark.parametrize("name", sorted(TINY))
def test_starts_as_its_backbone_exactly(name):
  out = probe(name)
  s = SCALE.get(name, 1)
  assert out["start"].shape == (SHAPE[0], SHAPE[1] * s, SHAPE[2] * s, 3)
  np.testing.assert_array_equal(out["start"], out["start_plain"])


@pytest.mark.parametrize("name", sorted(TINY))
def test_masked_or_absent_prior_does_not_reach_the_output(name):
  out = probe(name)
  a, b, both_masked = np.split(out["probe"], 3)
  assert np.isfinite(out["probe"]).all()
  assert np.abs(a[0] - b[0]).max() > 1e-4  # a present prior matters
  np.testing.assert_allclose(a[1], b[1], atol=1e-6)  # a masked one does not, whatever its pixels
  np.testing.assert_allclose(a[1], both_masked[1], atol=1e-6)
  np.testing.assert_allclose(both_masked, out["absent"], atol=1e-5)  # masked == prior=None


def test_transfer_starts_as_identity_with_its_initialisers():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 6, 5, 8)), jnp.float32)
  feats = jnp.asarray(rng.normal(size=(2, 6, 5, 4)), jnp.float32)
  flow, conf = jnp.asarray(rng.normal(size=(2, 3, 3, 2)), jnp.float32), jnp.ones((2, 3, 3, 1))
  present = jnp.array([True, False])
  layer = fusion_match.Transfer()
  p = layer.init(jax.random.key(0), x, feats, flow, conf, present)
  np.testing.assert_array_equal(layer.apply(p, x, feats, flow, conf, present), x)
  moved = jax.tree.map(lambda a: a + 0.1, p)
  out = layer.apply(moved, x, feats, flow, conf, present)
  assert np.abs(out[0] - x[0]).max() > 1e-3
  np.testing.assert_array_equal(out[1], x[1])  # no prior: the backbone's features, whatever the weights


def test_warp_moves_features_by_the_flow():
  f = jnp.arange(2 * 6 * 7 * 3, dtype=jnp.float32).reshape(2, 6, 7, 3)
  np.testing.assert_array_equal(fusion_match.warp(f, jnp.zeros((2, 6, 7, 2))), f)
  shifted = fusion_match.warp(f, jnp.broadcast_to(jnp.array([1.0, 2.0]), (2, 6, 7, 2)))
  np.testing.assert_array_equal(shifted[:, :5, :5], f[:, 1:, 2:])
  half = fusion_match.warp(f, jnp.broadcast_to(jnp.array([0.0, 0.5]), (2, 6, 7, 2)))
  np.testing.assert_allclose(half[:, :, :6], (f[:, :, :6] + f[:, :, 1:]) / 2)


def test_correspondence_finds_a_shift_through_a_tone_change():
  """A prior that is the image moved by (+8, -4) pixels, darker, warmer and gamma-changed: the flow at
  1/4 scale reads (2, -1) cells inside the image, and matches better than an unrelated prior."""
  rng = np.random.default_rng(3)
  big = scene(rng, 2, 64 + 16, 64 + 16)
  image = big[:, 8:72, 8:72]
  prior = big[:, 16:80, 4:68]  # prior[y, x] = image[y + 8, x - 4]: image[y, x] is at prior[y - 8, x + 4]
  prior = np.clip((0.7 * prior * np.array([1.1, 1.0, 0.8])) ** 1.2, 0, 1).astype(np.float32)
  noisy = np.clip(image + 0.1 * rng.normal(size=image.shape), 0, 1).astype(np.float32)
  corr = fusion_match.Correspondence(width=4)
  params = corr.init(jax.random.key(0), noisy, prior)  # the learned similarity's weight starts at 0
  both = jax.jit(corr.apply, compiler_options=QUICK_COMPILE)(
      params, np.concatenate([noisy, noisy]), np.concatenate([prior, scene(rng, 2, 64, 64)]))
  (flow, _), (conf, unrelated) = (np.split(a, 2) for a in both)
  assert flow.shape == (2, 16, 16, 2) and conf.shape == (2, 16, 16, 1)
  inner = flow[:, 3:-3, 3:-3]
  np.testing.assert_allclose(np.median(inner.reshape(-1, 2), axis=0), [-2.0, 1.0], atol=0.25)
  assert float(conf[:, 3:-3, 3:-3].mean()) > float(unrelated[:, 3:-3, 3:-3].mean()) + 0.1


def test_an_aligned_prior_is_taken_where_it_is():
  """A prior that is the clean image itself, matched from a noisy copy (dead-leaves-like scenes with flat
  regions and straight edges): the initialised correspondence reads no offset, so warping passes the prior
  through. (The first version's soft-argmax over the whole window at temperature 10 spread over near-equal
  matches and moved an aligned prior by 0.3 cells, 1.2 px, on average.)"""
  rng = np.random.default_rng(5)
  image = scene(rng, 4, 64, 64)
  noisy = np.clip(image + 0.1 * rng.normal(size=image.shape), 0, 1).astype(np.float32)
  corr = fusion_match.Correspondence(width=4)
  params = corr.init(jax.random.key(0), noisy, image)
  flow, _ = jax.jit(corr.apply, compiler_options=QUICK_COMPILE)(params, noisy, image)
  flow = np.asarray(flow)
  assert float(np.abs(flow).mean()) < 0.03, float(np.abs(flow).mean())  # cells of 4 px; was 0.34
  assert float(np.abs(flow).max()) < 0.5  # was 1.5
  up = jax.image.resize(flow, (4, 64, 64, 2), "linear") * 4
  assert float(np.abs(fusion_match.warp(jnp.asarray(image), up) - image).mean()) < 0.003  # was 0.033


def test_trains_under_bfloat16_remat_and_scan():
  """Adam steps on NAFNet (two blocks per stage, scanned and rematerialised, bfloat16) with priors
  present, masked and absent: the loss falls and every parameter moves, the zero-initialised ones too."""
  model = build("nafnet", enc_blocks=(2,), middle_blocks=2, dec_blocks=(2,), scan=True, remat=True,
                dtype="bfloat16")
  rng = np.random.default_rng(1)
  target = scene(rng, 2, 16, 16)
  x = np.clip(target + 0.1 * rng.normal(size=target.shape), 0, 1).astype(np.float32)
  prior = target[:, ::-1].copy()  # a prior that is there but misplaced
  # As initialised (test_transfer_starts_as_identity_with_its_initialisers), without an eager init.
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


def test_remat_and_dtype_reach_the_matching():
  """Traced only: under remat the prior encoder and the matching features (one region per image) are
  recomputed in the backward pass, and the transfers compute in bfloat16."""
  rng = np.random.default_rng(0)
  x = scene(rng, 2, 16, 16)

  def count_remat(jaxpr):
    n = 0
    for e in jaxpr.eqns:
      n += e.primitive.name in ("checkpoint", "remat", "remat2")
      n += sum(count_remat(j.jaxpr if hasattr(j, "jaxpr") else j) for j in jax.core.jaxprs_in_params(e.params))
    return n

  counts = {}
  for mode in ("none", "match"):
    m = build("nafnet", mode, dtype="bfloat16", remat=True)
    params = random_params(m, x, 0, identity=False)
    grad = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x, x))))(params)
    counts[mode] = count_remat(grad.jaxpr)
    if mode == "match":
      _, state = jax.eval_shape(lambda: m.apply({"params": params}, x, x, capture_intermediates=True,
                                                mutable=["intermediates"]))
      hooks = {k: v for k, v in state["intermediates"].items() if k.startswith("fusion_match_")}
      assert len(hooks) == 5  # encoders_0, encoders_1, middle_blks, decoders_0, decoders_1
      assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(hooks))
  assert counts["match"] == counts["none"] + 3, counts


def test_unknown_and_unsupported_modes_are_named():
  with pytest.raises(ValueError, match="'match' is not supported by DehazeNet"):
    cfg = models.default_config("dehazenet")
    cfg.update(fusion="match")
    jax.eval_shape(models.build(cfg).init, jax.random.key(0), jnp.zeros(SHAPE))
