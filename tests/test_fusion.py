"""Prior fusion (restorejax.models.fusion): each network with each fusion mode it supports, on odd-sized
27x21 inputs (every network pads and crops): masked examples ignore their prior, prior=None equals all
masked, 'sft'/'xattn' with their zero-initialised output layers compute their backbone exactly, and
training steps mixing present, masked and absent (None) priors reduce the loss.

Cost: one compiled program per (network, mode). Parameters are random (numpy, from the abstract shapes),
so probing needs no init compile; the initialisers themselves are tested on the fusion layers alone.
Training runs for every mode on NAFNet, 'sft' on SwinIR and 'xattn' on RRDBNet (single-scale hooks);
the rest of the cross product is probed forward only (same hooks and layers; Restormer's training
program alone would cost a minute of compilation on the shared CPU).
"""

import functools

import jax
import jax.extend.core
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from restorejax import models
from restorejax.evaluation import datasets
from restorejax.models import fusion

TINY = {
    "nafnet": dict(width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1)),
    "restormer": dict(dim=8, num_blocks=(1, 0, 0, 1), num_refinement_blocks=0, heads=(1, 2, 2, 4)),
    "swinir": dict(embed_dim=8, depths=(2,), num_heads=(2,), window_size=4, upscale=1, upsampler=""),
    "rrdbnet": dict(scale=2, num_feat=8, num_block=1, num_grow_ch=4),
    "dehazenet": dict(features=8, scale_features=4, refine_radius=3),
}
FUSION = dict(fusion_width=4, fusion_heads=2)
SCALE = {"rrdbnet": 2}
SHAPE = (2, 27, 21, 3)
CASES = [(n, m) for n in ("nafnet", "restormer", "swinir", "rrdbnet") for m in ("concat", "sft", "xattn")]
CASES.append(("dehazenet", "concat"))
TRAINED = {("nafnet", "concat"), ("nafnet", "sft"), ("nafnet", "xattn"), ("swinir", "sft"),
           ("rrdbnet", "xattn")}
# Masks of the training steps (example 0, example 1); NAFNet-sft's also train on prior=None batches (the
# other cases check that prior=None equals all masked).
STEP_MASKS = np.array([[True, True], [True, False], [False, False], [True, False]])
# The output layers the fusion initialises at zero (tested in test_fusion_layers_start_as_identity).
ZERO_INIT = ("['scale']", "['shift']", "['proj']")
QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def build(name, fusion_mode, **overrides):
  cfg = models.default_config(name)
  cfg.update(TINY[name])
  if name != "dehazenet":
    cfg.update(FUSION)
  cfg.update(fusion=fusion_mode, scan=False, **overrides)  # one block per stage: nothing to scan
  return models.build(cfg)


def backbone(params):
  return {k: v for k, v in params.items() if not k.startswith(fusion.PREFIX)}


def data():
  """(degraded, target (2x larger, cropped for restoration), prior, another prior): images with coarse
  structure, which is what the prior encoder's coarse levels and the attention tokens see."""
  rng = np.random.default_rng(0)

  def image(h, w):
    coarse = rng.uniform(size=(SHAPE[0], 4, 4, 3))
    smooth = jax.image.resize(coarse, (SHAPE[0], h, w, 3), "linear")
    return np.clip(np.asarray(smooth) + 0.1 * rng.normal(size=smooth.shape), 0, 1).astype(np.float32)

  h, w = SHAPE[1:3]
  return image(h, w), image(2 * h, 2 * w), image(h, w), image(h, w)


def random_params(model, seed=0, *, identity=False):
  """Random values of a sensible scale; `identity`: the fusion's zero-initialised layers at zero."""
  tree = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(SHAPE))["params"]
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if identity and name.startswith(f"['{fusion.PREFIX}") and any(z in name for z in ZERO_INIT):
      return np.zeros(leaf.shape, np.float32)
    if name.endswith("['kernel']"):
      return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
    if name.endswith(("['scale']", "['temperature']")) and "fusion_" not in name:
      return (1 + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
    if name.endswith(("['beta']", "['gamma']", "['log_locality']")):
      return (0.5 * rng.normal(size=leaf.shape)).astype(np.float32)
    return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(fill, tree)
  if "cnn" in params:  # DehazeNet: keep the transmission inside BReLU's (0, 1) so the input matters
    params["cnn"]["ip"]["kernel"] *= 0.1
    params["cnn"]["ip"]["bias"][:] = 0.6
  return params


@functools.lru_cache(maxsize=None)
def probe(name, mode):
  """Runs the one program of (network, mode); returns host arrays."""
  model, plain = build(name, mode), build(name, "none")
  train = (name, mode) in TRAINED
  x, target, prior, other = data()
  s = SCALE.get(name, 1)
  y = target[:, :SHAPE[1] * s, :SHAPE[2] * s]
  start = random_params(model, identity=True)
  params = random_params(model, seed=1)  # nonzero fusion outputs: the prior matters where present

  def program(start, params):
    out = {"start": model.apply({"params": start}, x, prior)}
    if mode != "concat":  # concat widens the first conv: no backbone apart
      out["start_plain"] = plain.apply({"params": backbone(start)}, x)
    if train:
      flat, unravel = jax.flatten_util.ravel_pytree(start)

      def loss_fn(flat, mask):
        p = {"params": unravel(flat)}
        loss = jnp.mean(jnp.abs(model.apply(p, x, prior, prior_mask=mask) - y))
        if (name, mode) == ("nafnet", "sft"):
          loss += jnp.mean(jnp.abs(model.apply(p, x) - y))
        return loss

      def step(carry, mask):
        flat, m, v, t = carry
        loss, g = jax.value_and_grad(loss_fn)(flat, mask)
        t = t + 1
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        flat = flat - 1e-2 * (m / (1 - 0.9 ** t)) / (jnp.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        return (flat, m, v, t), loss

      zeros = jnp.zeros_like(flat)
      (flat, *_), out["losses"] = jax.lax.scan(step, (flat, zeros, zeros, 0), STEP_MASKS)
      out["changed"] = jnp.stack([jnp.any(a != b) for a, b in zip(jax.tree.leaves(start),
                                                                   jax.tree.leaves(unravel(flat)))])
    # One forward probes: prior A with example 1 masked, prior B likewise, and both masked.
    x3 = jnp.concatenate([x, x, x])
    p3 = jnp.concatenate([prior, other, prior])
    m3 = jnp.array([True, False, True, False, False, False])
    out["probe"] = model.apply({"params": params}, x3, p3, prior_mask=m3)
    out["absent"] = model.apply({"params": params}, x)
    return out

  out = jax.jit(program, compiler_options=QUICK_COMPILE)(start, params)
  return jax.tree.map(np.asarray, out)


@pytest.mark.parametrize("name,mode", CASES)
def test_masked_example_ignores_its_prior(name, mode):
  out = probe(name, mode)
  s = SCALE.get(name, 1)
  for key in ("start", "probe", "absent"):
    assert out[key].shape[1:] == (SHAPE[1] * s, SHAPE[2] * s, 3) and out[key].dtype == np.float32
    assert np.isfinite(out[key]).all()
  a, b, both_masked = np.split(out["probe"], 3)
  # Example 0 is present: its prior matters.
  assert np.abs(a[0] - b[0]).max() > 1e-4
  # Example 1 is masked: another prior does not change its output, nor does masking example 0.
  np.testing.assert_allclose(a[1], b[1], atol=1e-6)
  np.testing.assert_allclose(a[1], both_masked[1], atol=1e-6)
  # A masked prior is an absent one: prior=None gives the same outputs.
  np.testing.assert_allclose(both_masked, out["absent"], atol=1e-5)


@pytest.mark.parametrize("name,mode", [c for c in CASES if c[1] in ("sft", "xattn")])
def test_sft_and_xattn_start_as_their_backbone(name, mode):
  out = probe(name, mode)
  # The backbone's parameters without the fusion give the same output, whatever the prior.
  np.testing.assert_allclose(out["start"], out["start_plain"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,mode", sorted(TRAINED))
def test_trains_with_priors_present_masked_and_absent(name, mode):
  out = probe(name, mode)
  losses = out["losses"]
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  assert out["changed"].all()  # every parameter, the fusion's zero-initialised ones included, moved


def test_fusion_layers_start_as_identity():
  """The initialisers: SFT returns its input, cross-attention adds zero; their outputs do depend on the
  prior once the zero-initialised layers move."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 6, 5, 8)), jnp.float32)
  cond = jnp.asarray(rng.normal(size=(2, 6, 5, 4)), jnp.float32)
  present = jnp.array([True, False])
  sft = fusion.SFT()
  p = sft.init(jax.random.key(0), x, cond)
  np.testing.assert_array_equal(sft.apply(p, x, cond), x)
  xattn = fusion.CrossAttention(heads=2)
  p = xattn.init(jax.random.key(0), x, cond[:, :3, :2], present)
  np.testing.assert_array_equal(xattn.apply(p, x, cond[:, :3, :2], present), np.zeros(x.shape))
  moved = jax.tree.map(lambda a: a + 0.1, p)
  out = xattn.apply(moved, x, cond[:, :3, :2], present)
  assert np.abs(out - xattn.apply(moved, x, cond[:, 3:, 3:], present)).max() > 1e-3


@pytest.mark.parametrize("mode", ["sft", "xattn"])
def test_dehazenet_refuses_stage_fusion(mode):
  with pytest.raises(ValueError, match=f"'{mode}' is not supported by DehazeNet"):
    jax.eval_shape(build("dehazenet", mode).init, jax.random.key(0), jnp.zeros(SHAPE))


def test_bad_prior_inputs_are_named():
  x = jnp.zeros(SHAPE)
  init = lambda m, *a, **k: jax.eval_shape(lambda: m.init(jax.random.key(0), x, *a, **k))
  with pytest.raises(ValueError, match="unknown mode 'film'"):
    init(build("nafnet", "film"))
  with pytest.raises(ValueError, match="prior_mask of shape"):
    init(build("nafnet", "sft"), jnp.zeros(SHAPE), prior_mask=jnp.ones((3,), bool))
  with pytest.raises(ValueError, match="prior of shape"):
    init(build("nafnet", "concat"), jnp.zeros((2, 20, 21, 3)))
  with pytest.raises(ValueError, match="fusion_heads"):
    init(build("nafnet", "xattn", fusion_heads=3))
  with pytest.raises(ValueError, match="power of two"):
    init(build("nafnet", "xattn", fusion_scale=6))


def test_sft_and_xattn_resize_a_prior_of_another_size():
  x = jnp.zeros(SHAPE)
  for mode in ("sft", "xattn"):
    m = build("nafnet", mode)
    shapes = jax.eval_shape(lambda: m.init_with_output(
        jax.random.key(0), x, jnp.zeros((2, 40, 13, 3)), prior_mask=jnp.ones((2,), bool)))
    assert shapes[0].shape == SHAPE


def test_fusion_parameters_live_apart_from_the_backbone():
  x = jnp.zeros(SHAPE)
  plain = jax.eval_shape(build("restormer", "none").init, jax.random.key(0), x)["params"]
  for mode in ("sft", "xattn"):
    fused = jax.eval_shape(build("restormer", mode).init, jax.random.key(0), x)["params"]
    assert jax.tree.structure(backbone(fused)) == jax.tree.structure(plain)
    assert {k for k in fused if k.startswith(fusion.PREFIX)} >= {"fusion_encoder"}
  sft = jax.eval_shape(build("restormer", "sft").init, jax.random.key(0), x)["params"]
  assert {k for k in sft if k.startswith("fusion_sft_")} == {
      f"fusion_sft_{s}" for s in ("encoder_level1", "encoder_level2", "encoder_level3", "latent",
                                  "decoder_level3", "decoder_level2", "decoder_level1")}


def test_bfloat16_and_remat_reach_the_fusion_layers():
  """Traced only (no compilation): the fusion computes in the network's dtype, and `remat` recomputes the
  prior encoder in the backward pass like the backbone's blocks."""
  x, _, prior, _ = data()

  def count_remat(jaxpr):
    n = 0
    for e in jaxpr.eqns:
      n += e.primitive.name in ("checkpoint", "remat", "remat2")
      n += sum(count_remat(j.jaxpr if hasattr(j, "jaxpr") else j) for j in jax.extend.core.jaxprs_in_params(e.params))
    return n

  counts = {}
  for mode in ("none", "sft", "xattn"):
    m = build("nafnet", mode, dtype="bfloat16", remat=True)
    params = random_params(m)
    out, state = jax.eval_shape(lambda: m.apply({"params": params}, x, prior, capture_intermediates=True,
                                                mutable=["intermediates"]))
    assert out.dtype == jnp.float32
    fused = {k: v for k, v in state["intermediates"].items() if k.startswith(fusion.PREFIX)}
    assert len(fused) == {"none": 0, "sft": 6, "xattn": 2}[mode]  # the encoder and the hooks
    for key, value in fused.items():
      assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(value)), key
    if mode != "xattn":  # same encoder as 'sft'
      grad = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x, prior))))(params)
      counts[mode] = count_remat(grad.jaxpr)
  assert counts["sft"] == counts["none"] + 1 > 1, counts


def test_held_out_set_keeps_simulated_priors():
  """A fused network is evaluated with the priors it trains with: the procedural held-out set carries the
  simulated prior the trainer's `prepare_batch` makes (misaligned, so not the target)."""
  examples = datasets.procedural(tiny_config(**{"data.simulated_prior.enabled": True}))
  assert all(e["prior"].shape == e["target"].shape and e["prior"].dtype == np.uint8 for e in examples)
  assert all(not np.array_equal(e["prior"], e["target"]) for e in examples)
