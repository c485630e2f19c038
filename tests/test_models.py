"""The model zoo: shapes, dtypes, scan/unrolled and remat equivalence, prior fusion, and that each trains.

Tiny configurations on 13x11 inputs (odd, so every network pads and crops). Parameters are random
(not the initialisers), drawn in the unrolled layout and stacked for scan, so the same numbers feed both.
Compiled functions are shared through module-level caches.
"""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from restorejax import models
from restorejax.data import matlab_resize
from restorejax.models import restorer, stack, torch_compat

TINY = {
    "nafnet": dict(width=8, enc_blocks=(1,), middle_blocks=2, dec_blocks=(1,)),
    "restormer": dict(dim=8, num_blocks=(1, 0, 0, 1), num_refinement_blocks=2, heads=(1, 2, 2, 4)),
    "swinir": dict(embed_dim=8, depths=(4,), num_heads=(2,), window_size=4, upscale=2),
    "rrdbnet": dict(scale=2, num_feat=8, num_block=2, num_grow_ch=4),
    "dehazenet": dict(features=8, scale_features=4, refine_radius=3),
}
SCALE = {"swinir": 2, "rrdbnet": 2}
NAMES = sorted(TINY)
SHAPE = (2, 13, 11, 3)


# For functions run once or twice: half the compile time (XLA CPU), a slower run does not matter.
QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit_once(f):
  return jax.jit(f, compiler_options=QUICK_COMPILE)


@functools.lru_cache(maxsize=None)
def model(name, **overrides):
  cfg = models.default_config(name)
  cfg.update(TINY[name])
  cfg.update(overrides)
  return models.build(cfg)


def data(name, seed=0):
  """A degraded batch and a target of the network's output size."""
  rng = np.random.default_rng(seed)
  s = SCALE.get(name, 1)
  return (rng.uniform(size=SHAPE).astype(np.float32),
          rng.uniform(size=(SHAPE[0], SHAPE[1] * s, SHAPE[2] * s, SHAPE[3])).astype(np.float32))


def template(m):
  return jax.eval_shape(m.init, jax.random.key(0), jnp.zeros(SHAPE))["params"]


def random_params(tree, seed=0):
  """Random values of a sensible scale for an unrolled params tree (fan-in scaled kernels)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    shape = leaf.shape
    if name.endswith("['kernel']"):
      return (rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
    if name.endswith(("['scale']", "['temperature']")):
      return (1 + 0.1 * rng.normal(size=shape)).astype(np.float32)
    if name.endswith(("['beta']", "['gamma']", "['relative_position_bias_table']")):
      return (0.5 * rng.normal(size=shape)).astype(np.float32)
    return (0.1 * rng.normal(size=shape)).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(fill, tree)
  if "cnn" in params:  # DehazeNet: keep the transmission inside BReLU's (0, 1) so it has gradients
    params["cnn"]["ip"]["kernel"] *= 0.1
    params["cnn"]["ip"]["bias"][:] = 0.6
  return params


@functools.lru_cache(maxsize=None)
def params_for(name, fusion="none"):
  """(scan-layout params, unrolled params) with identical numbers."""
  unrolled = random_params(template(model(name, scan=False, fusion=fusion)))
  return stack.scan_params(unrolled, template(model(name, fusion=fusion))), unrolled


def l1(m, params, x, y):
  out = m.apply({"params": params}, x)
  return jnp.mean(jnp.abs(out - y)), out


@functools.lru_cache(maxsize=None)
def value_and_grad(name, **overrides):
  vg = jax.value_and_grad(functools.partial(l1, model(name, **overrides)), has_aux=True)
  return jax.jit(vg) if not overrides else jit_once(vg)  # the base one runs in the training test


@functools.lru_cache(maxsize=None)
def base_result(name):
  x, y = data(name)
  (loss, out), grads = value_and_grad(name)(params_for(name)[0], x, y)
  return loss, np.asarray(out), grads


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_dtype_for_odd_sizes(name):
  _, out, _ = base_result(name)
  s = SCALE.get(name, 1)
  assert out.shape == (SHAPE[0], SHAPE[1] * s, SHAPE[2] * s, 3)
  assert out.dtype == np.float32
  assert np.isfinite(out).all()
  assert np.abs(out).max() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_compute(name):
  m = model(name, dtype="bfloat16")
  params, _ = params_for(name)
  x, _ = data(name)
  assert "bf16" in str(jax.make_jaxpr(m.apply)({"params": params}, x))
  out = np.asarray(jit_once(m.apply)({"params": params}, x))
  ref = base_result(name)[1]
  assert out.dtype == np.float32 and out.shape == ref.shape
  assert jax.tree.leaves(params)[0].dtype == np.float32
  err = np.abs(out - ref)
  assert err.max() > 0  # it really ran in bfloat16
  assert err.mean() < 0.03 * np.abs(ref).mean() + 1e-3


@pytest.mark.parametrize("name", [n for n in NAMES if n != "dehazenet"])
def test_scan_matches_unrolled(name):
  scanned, unrolled = params_for(name)
  assert jax.tree.structure(scanned) != jax.tree.structure(unrolled)
  # the restacking is a bijection
  back = stack.scan_params(stack.unroll_params(scanned, unrolled), scanned)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(scanned)))
  x, _ = data(name)
  out = np.asarray(jit_once(model(name, scan=False).apply)({"params": unrolled}, x))
  np.testing.assert_allclose(out, base_result(name)[1], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_remat_same_outputs_and_gradients(name):
  x, y = data(name)
  (loss, out), grads = value_and_grad(name, remat=True)(params_for(name)[0], x, y)
  ref_loss, ref_out, ref_grads = base_result(name)
  np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4)
  assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))


FIRST_CONV = {"nafnet": ("intro",), "restormer": ("patch_embed",), "swinir": ("conv_first",),
              "rrdbnet": ("conv_first",), "dehazenet": ("cnn", "conv1")}


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


@pytest.mark.parametrize("name", NAMES)
def test_prior_concat(name):
  m = model(name, fusion="concat")
  params, _ = params_for(name, "concat")
  x, _ = data(name)
  prior, _ = data(name, 1)
  apply = jit_once(m.apply)
  with_prior = np.asarray(apply({"params": params}, x, prior))
  absent = np.asarray(apply({"params": params}, x))
  masked = np.asarray(apply({"params": params}, x, prior, np.array([True, False])))
  assert with_prior.shape == absent.shape == base_result(name)[1].shape
  assert np.abs(with_prior - absent).max() > 1e-4  # the prior is used
  np.testing.assert_allclose(masked[0], with_prior[0], atol=1e-6)  # a present example sees its prior
  np.testing.assert_allclose(masked[1], absent[1], atol=1e-6)  # a masked one is as if absent

  # The prior-free params with zero weights for the prior's input channels (and its presence plane) give
  # exactly the prior-free network: nothing else (global residual, mean shift, dehazing physics) reads it.
  plain = params_for(name)[0]
  kernel = np.asarray(_get(plain, FIRST_CONV[name])["kernel"])
  extra = _get(params, FIRST_CONV[name])["kernel"].shape[-2] - kernel.shape[-2]
  assert extra == 4 * kernel.shape[-2] // 3  # 3 prior channels and the presence plane (RRDBNet unshuffles)
  padded = jax.tree.map(lambda a: a, plain)
  node = _get(padded, FIRST_CONV[name][:-1])
  node[FIRST_CONV[name][-1]] = dict(node[FIRST_CONV[name][-1]], kernel=np.concatenate(
      [kernel, np.zeros(kernel.shape[:-2] + (extra, kernel.shape[-1]), np.float32)], axis=-2))
  out = np.asarray(apply({"params": padded}, x, prior))
  np.testing.assert_allclose(out, base_result(name)[1], atol=2e-5, rtol=1e-5)

  with pytest.raises(ValueError, match="prior"):
    m.apply({"params": params}, x, prior[:, :5])


@pytest.mark.parametrize("name", NAMES)
def test_fusion_none_ignores_the_prior(name):
  m = model(name)
  params, _ = params_for(name)
  x, _ = data(name)
  jaxpr = jax.make_jaxpr(lambda prior: m.apply({"params": params}, x, prior))(x).jaxpr
  (prior_var,) = jaxpr.invars
  assert not any(prior_var in e.invars for e in jaxpr.eqns) and prior_var not in jaxpr.outvars
  with pytest.raises(ValueError, match="fusion"):
    model(name, fusion="film").apply({"params": params}, x)


@pytest.mark.parametrize("name", NAMES)
def test_adam_steps_reduce_l1(name):
  x, y = data(name)
  vg = value_and_grad(name)
  opt = optax.adam(5e-4)
  # Adam on the flattened vector: the update compiles in a blink, the gradient function is shared.
  params = params_for(name)[0]
  state = opt.init(jax.flatten_util.ravel_pytree(params)[0])

  @jax.jit
  def update(params, state, grads):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    updates, state = opt.update(jax.flatten_util.ravel_pytree(grads)[0], state, flat)
    return unravel(flat + updates), state

  losses = []
  for _ in range(6):
    (loss, _), grads = vg(params, x, y)
    losses.append(float(loss))
    params, state = update(params, state, grads)
  assert losses[-1] < losses[0] * 0.99, losses


def test_pixel_shuffle_channel_order_and_inverse():
  r, c = 2, 3
  x = np.arange(1 * 2 * 3 * c * r * r, dtype=np.float32).reshape(1, 2, 3, c * r * r)
  y = np.asarray(torch_compat.pixel_shuffle(jnp.asarray(x), r))
  for h in range(2):
    for w in range(3):
      for ch in range(c):
        for i in range(r):
          for j in range(r):
            assert y[0, h * r + i, w * r + j, ch] == x[0, h, w, ch * r * r + i * r + j]
  np.testing.assert_array_equal(torch_compat.pixel_unshuffle(jnp.asarray(y), r), x)
  np.testing.assert_array_equal(torch_compat.upsample_nearest(jnp.asarray(x[..., :1]), 3)[0, 5, 7, 0],
                                x[0, 1, 2, 0])


def test_nafnet_tlsc_is_local_mean_and_global_on_small_inputs():
  from restorejax.models import nafnet  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).normal(size=(1, 7, 5, 2)).astype(np.float32)
  np.testing.assert_allclose(nafnet.local_mean(x, 8), x.mean(axis=(1, 2), keepdims=True), rtol=1e-6)
  local = np.asarray(nafnet.local_mean(x, 4))
  assert local.shape == x.shape
  # valid 4x4 windows (4x2 of them), edge-padded by (1, 2) rows and (0, 1) columns
  np.testing.assert_allclose(local[0, 1, 0], x[0, 0:4, 0:4].mean(axis=(0, 1)), rtol=1e-5)
  np.testing.assert_allclose(local[0, 0, 0], local[0, 1, 0])
  np.testing.assert_allclose(local[0, 6, 4], x[0, 3:7, 1:5].mean(axis=(0, 1)), rtol=1e-5)


def test_presets_build_and_bad_options_fail():
  from restorejax import convert  # pylint: disable=g-import-not-at-top
  for arch in convert.CONVERTERS:
    for preset in convert.presets(arch):
      models.build(convert.preset_config(arch, preset))
  cfg = models.default_config("swinir")
  cfg.depths = (3, 6)
  cfg.num_heads = (6, 6)
  with pytest.raises(ValueError, match="even"):
    jax.eval_shape(models.build(cfg).init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  cfg = models.default_config("restormer")
  with pytest.raises(ValueError, match="channels"):
    jax.eval_shape(models.build(cfg).init, jax.random.key(0), jnp.zeros((1, 8, 8, 4)))


def test_restorer_base_declares_the_shared_fields_and_each_network_its_padding_and_scale():
  for name in NAMES:
    cls = models.model_class(name)
    assert issubclass(cls, restorer.Restorer), name
    assert not set(vars(cls).get("__annotations__", {})) & set(restorer.SHARED_FIELDS), name  # declared once
  build = lambda name, **fields: models.build(_block(name, **fields))
  assert build("nafnet", enc_blocks=(1, 1, 1), dec_blocks=(1, 1, 1)).input_padding() == (8, "constant")
  assert build("restormer").input_padding() == (8, "reflect")
  assert build("swinir", window_size=7).input_padding() == (7, "reflect")
  assert build("swinir", upscale=3).output_scale() == 3 and build("rrdbnet", scale=2).output_scale() == 2
  for name in ("rrdbnet", "dehazenet"):
    assert build(name).input_padding() == (1, "constant")
  assert build("nafnet").output_scale() == build("restormer").output_scale() == 1
  assert "fusion_width" not in models.default_config("dehazenet")  # concat only: no feature-fusion fields


def _block(name, **fields):
  cfg = models.default_config(name)
  cfg.update(fields)
  return cfg


def test_rrdbnet_bicubic_skip_adds_bicubic_upsampling_only_when_on():
  """Off by default, so converted official weights compute what they did; on, the same parameters give
  the plain output plus the bicubic upsampling of the input (MATLAB's, up to the kernel's border and
  rounding differences), and the parameter tree is unchanged."""
  assert models.default_config("rrdbnet").bicubic_skip is False
  off, on = model("rrdbnet"), model("rrdbnet", bicubic_skip=True)
  assert jax.tree.structure(template(on)) == jax.tree.structure(template(off))
  params = random_params(template(off))
  x, _ = data("rrdbnet")
  delta = np.asarray(on.apply({"params": params}, x)) - np.asarray(off.apply({"params": params}, x))
  up = np.stack([matlab_resize.bicubic_resize(jnp.asarray(im), (26, 22)) for im in x])
  assert delta.shape == up.shape
  np.testing.assert_allclose(delta, up, atol=0.05)
  assert np.abs(delta - up).mean() < 0.01
  with pytest.raises(ValueError, match="bicubic_skip needs out_channels == in_channels"):
    jax.eval_shape(model("rrdbnet", bicubic_skip=True, out_channels=1).init, jax.random.key(0),
                   jnp.zeros(SHAPE))
