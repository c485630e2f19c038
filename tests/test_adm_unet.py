"""ADM UNet: shapes, timestep embedding, block maths against numpy references, attention orders, bf16,
remat, dropout, conditioning hooks, sharding rules, and the official-checkpoint converter.

Numerical parity with the official PyTorch code needs torch and is checked out-of-band (see the README);
here the converter runs on synthetic state dicts whose key names and shapes were dumped from the official
`create_model` (tests/data/adm_official_keys.json).
"""

import json
import math
import os
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from restorejax.convert import adm as convert_adm
from restorejax.models import adm_unet

KEYS_FILE = os.path.join(os.path.dirname(__file__), "data", "adm_official_keys.json")


def randomize(params, seed):
  """Every parameter random (the zero-initialised output convs would hide whole paths otherwise)."""
  flat = flax.traverse_util.flatten_dict(params)
  rng = np.random.default_rng(seed)
  out = {}
  for path, v in flat.items():
    if path[-1] == "scale":
      out[path] = 1 + 0.1 * rng.standard_normal(v.shape)
    elif path[-1] == "kernel":
      out[path] = rng.standard_normal(v.shape) / math.sqrt(np.prod(v.shape[:-1]))
    else:
      out[path] = 0.1 * rng.standard_normal(v.shape)
  return flax.traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in out.items()})


def random_params(model, seed, *args, **kwargs):
  """Random parameters from the shapes alone (tracing only: compiling `init` costs more than the tests)."""
  return randomize(jax.eval_shape(model.init, jax.random.key(0), *args, **kwargs)["params"], seed)


@pytest.fixture(scope="module")
def tiny():
  # Eager applies: the first one compiles every op once; later variants of the model reuse them.
  model = adm_unet.build("tiny")
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  t = jnp.array([3.0, 517.5])
  params = random_params(model, 0, x, t)
  out, h = model.apply({"params": params}, x, t)
  return dict(model=model, params=params, x=x, t=t, out=np.asarray(out), h=np.asarray(h))


def test_tiny_shapes_and_dtypes(tiny):
  assert tiny["out"].shape == (2, 32, 32, 6) and tiny["out"].dtype == np.float32
  assert tiny["h"].shape == (2, 16, 16, 64) and tiny["h"].dtype == np.float32
  assert np.isfinite(tiny["out"]).all() and np.abs(tiny["out"]).max() > 0


def test_official_256_uncond_shapes_and_param_count():
  model = adm_unet.build("imagenet256-uncond")
  x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
  (out, h), variables = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, jnp.zeros((1,))), x)
  assert out.shape == (1, 256, 256, 6)
  assert h.shape == (1, 8, 8, 1024)
  # Parameter count of the official UNetModel built with the same flags (measured with torch).
  assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables)) == 552_814_086


@pytest.mark.parametrize("dim", [32, 33])
def test_timestep_embedding_matches_formula(dim):
  t = np.array([0.0, 1.0, 17.25, 999.0])
  half = dim // 2
  ref = np.zeros((4, dim))
  for i in range(half):
    freq = 10000.0 ** (-i / half)
    ref[:, i] = np.cos(t * freq)
    ref[:, half + i] = np.sin(t * freq)
  np.testing.assert_allclose(adm_unet.timestep_embedding(jnp.asarray(t), dim), ref, atol=2e-5)


# --- numpy references of the official blocks (NHWC) ---------------------------------------------------

def np_group_norm(x, p, groups):
  b, c = x.shape[0], x.shape[-1]
  xs = x.reshape(b, -1, groups, c // groups).astype(np.float64)
  y = (xs - xs.mean(axis=(1, 3), keepdims=True)) / np.sqrt(xs.var(axis=(1, 3), keepdims=True) + 1e-5)
  return y.reshape(x.shape) * p["scale"] + p["bias"]


def np_conv(x, p):
  k = np.asarray(p["kernel"], np.float64)
  pad, (hh, ww) = k.shape[0] // 2, x.shape[1:3]
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = sum(np.einsum("bhwi,io->bhwo", xp[:, i:i + hh, j:j + ww], k[i, j])
            for i in range(k.shape[0]) for j in range(k.shape[1]))
  return out + p["bias"]


def np_silu(x):
  return x / (1 + np.exp(-x))


def np_resblock(p, x, emb, scale_shift, up, down, groups):
  h = np_silu(np_group_norm(x, p["in_norm"], groups))
  if up:
    h, x = (a.repeat(2, axis=1).repeat(2, axis=2) for a in (h, x))
  if down:
    h, x = (a.reshape(a.shape[0], a.shape[1] // 2, 2, a.shape[2] // 2, 2, -1).mean(axis=(2, 4)) for a in (h, x))
  h = np_conv(h, p["in_conv"])
  e = (np_silu(emb) @ p["emb_dense"]["kernel"] + p["emb_dense"]["bias"])[:, None, None, :]
  if scale_shift:
    scale, shift = np.split(e, 2, axis=-1)
    h = np_group_norm(h, p["out_norm"], groups) * (1 + scale) + shift
  else:
    h = np_group_norm(h + e, p["out_norm"], groups)
  h = np_conv(np_silu(h), p["out_conv"])
  return (np_conv(x, p["skip"]) if "skip" in p else x) + h


def np_attention(p, x, heads, legacy, groups):
  """The official channels-first QKVAttentionLegacy / QKVAttention on (B, C, T)."""
  b, hh, ww, c = x.shape
  xt = x.reshape(b, hh * ww, c)
  qkv = (np_group_norm(xt, p["norm"], groups) @ p["qkv"]["kernel"] + p["qkv"]["bias"]).transpose(0, 2, 1)
  ch = c // heads
  if legacy:
    q, k, v = np.split(qkv.reshape(b * heads, 3 * ch, -1), 3, axis=1)
  else:
    q, k, v = (a.reshape(b * heads, ch, -1) for a in np.split(qkv, 3, axis=1))
  w = np.einsum("bct,bcs->bts", q, k) / math.sqrt(ch)
  w = np.exp(w - w.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  a = np.einsum("bts,bcs->bct", w, v).reshape(b, c, -1).transpose(0, 2, 1)
  return (xt + a @ p["proj_out"]["kernel"] + p["proj_out"]["bias"]).reshape(x.shape)


@pytest.mark.parametrize("scale_shift,up,down,out_channels", [
    (True, False, False, 64), (False, False, False, 32), (True, False, True, 32), (False, True, False, 32)])
def test_resblock_matches_numpy_reference(scale_shift, up, down, out_channels):
  block = adm_unet.ResBlock(out_channels=out_channels, use_scale_shift_norm=scale_shift, up=up, down=down,
                            norm_groups=8)
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 32))
  emb = jax.random.normal(jax.random.key(3), (2, 24))
  params = random_params(block, 1, x, emb)
  ours = block.apply({"params": params}, x, emb)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  ref = np_resblock(p, np.asarray(x, np.float64), np.asarray(emb, np.float64), scale_shift, up, down, 8)
  np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("legacy", [True, False])
def test_attention_matches_numpy_reference(legacy):
  block = adm_unet.AttentionBlock(num_heads=4, legacy_order=legacy, norm_groups=8)
  x = jax.random.normal(jax.random.key(4), (2, 4, 4, 32))
  params = random_params(block, 2, x)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  np.testing.assert_allclose(block.apply({"params": params}, x),
                             np_attention(p, np.asarray(x, np.float64), 4, legacy, 8), atol=1e-4, rtol=1e-4)


def legacy_to_new_qkv(a, heads):
  """Columns [head][q,k,v][ch] -> [q,k,v][head][ch] along the last axis."""
  ch = a.shape[-1] // (3 * heads)
  lead = a.shape[:-1]
  return a.reshape(*lead, heads, 3, ch).swapaxes(-3, -2).reshape(*lead, 3 * heads * ch)


def test_attention_orders_agree_after_permutation(tiny):
  model = adm_unet.build("tiny", use_new_attention_order=True)
  flat = flax.traverse_util.flatten_dict(tiny["params"])
  permuted = {}
  for path, v in flat.items():
    if "qkv" in path:
      heads = v.shape[-1] // 3 // model.num_head_channels
      v = legacy_to_new_qkv(v, heads)
    permuted[path] = v
  out, h = model.apply({"params": flax.traverse_util.unflatten_dict(permuted)}, tiny["x"], tiny["t"])
  np.testing.assert_allclose(out, tiny["out"], atol=1e-4)
  np.testing.assert_allclose(h, tiny["h"], atol=1e-4)
  unpermuted, _ = model.apply({"params": tiny["params"]}, tiny["x"], tiny["t"])
  assert np.abs(unpermuted - tiny["out"]).max() > 1e-2  # the order matters when weights are not permuted


def test_bfloat16_compute_keeps_float32_params_and_output(tiny):
  model = adm_unet.build("tiny", dtype="bfloat16")
  shapes = jax.eval_shape(model.init, jax.random.key(0), tiny["x"], tiny["t"])
  assert {v.dtype for v in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  out, h = jax.jit(lambda p: model.apply({"params": p}, tiny["x"], tiny["t"]))(tiny["params"])
  assert out.dtype == jnp.float32 and h.dtype == jnp.float32
  scale = np.abs(tiny["out"]).max()
  err = np.abs(np.asarray(out) - tiny["out"]).max() / scale
  assert 0 < err < 0.05, err


def test_remat_same_gradient_and_checkpointed_blocks(tiny):
  block = adm_unet.ResBlock(out_channels=32, use_scale_shift_norm=True, norm_groups=8)
  x = jax.random.normal(jax.random.key(8), (1, 8, 8, 32))
  emb = jax.random.normal(jax.random.key(9), (1, 16))
  params = random_params(block, 5, x, emb)

  def grads(cls):
    loss = lambda p, x: jnp.mean(cls(out_channels=32, use_scale_shift_norm=True, norm_groups=8).apply(
        {"params": p}, x, emb) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)

  plain, remat = grads(adm_unet.ResBlock), grads(flax.linen.remat(adm_unet.ResBlock))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), remat, plain)
  # The model's `remat` flag wraps its blocks: the traced forward holds checkpoint regions only then.
  trace = lambda model: str(jax.make_jaxpr(lambda p: model.apply({"params": p}, tiny["x"], tiny["t"]))(
      tiny["params"]))
  assert "remat" in trace(adm_unet.build("tiny", remat=True))
  assert "remat" not in trace(tiny["model"])


def test_dropout_only_in_training(tiny):
  model = adm_unet.build("tiny", dropout=0.3)
  out_eval, _ = model.apply({"params": tiny["params"]}, tiny["x"], tiny["t"])
  np.testing.assert_allclose(out_eval, tiny["out"], atol=1e-5)
  out_train, _ = model.apply({"params": tiny["params"]}, tiny["x"], tiny["t"], train=True,
                             rngs={"dropout": jax.random.key(5)})
  assert np.abs(out_train - tiny["out"]).max() > 1e-3


def test_class_conditioning():
  model = adm_unet.build("tiny", num_classes=10)
  x, t = jnp.zeros((2, 32, 32, 3)), jnp.array([5.0, 5.0])
  params = random_params(model, 3, x, t, jnp.array([0, 1]))
  assert params["label_emb"]["embedding"].shape == (10, 128)
  out, _ = model.apply({"params": params}, x, t, jnp.array([0, 1]))
  assert np.abs(out[0] - out[1]).max() > 1e-3  # same image and time, different class
  with pytest.raises(ValueError, match="labels y"):
    model.apply({"params": params}, x, t)
  with pytest.raises(ValueError, match="labels y"):
    adm_unet.build("tiny").apply({"params": {}}, x, t, jnp.array([0, 1]))


def test_sr3_conditioning_channels_and_continuous_time():
  model = adm_unet.build("tiny", in_channels=6, out_channels=3)
  x = jax.random.normal(jax.random.key(6), (2, 32, 32, 3))
  cond = jax.random.uniform(jax.random.key(7), (2, 32, 32, 3))
  t = jnp.array([0.37, 812.9])
  params = random_params(model, 4, x, t, cond=cond)
  out, _ = model.apply({"params": params}, x, t, cond=cond)
  joined, _ = model.apply({"params": params}, jnp.concatenate([x, cond], -1), t)
  np.testing.assert_array_equal(out, joined)
  assert out.shape == (2, 32, 32, 3)
  shifted, _ = model.apply({"params": params}, x, t + 0.5, cond=cond)
  assert np.abs(shifted - out).max() > 1e-4  # fractional times reach the network
  with pytest.raises(ValueError, match="in_channels is 6"):
    model.apply({"params": params}, x, t)


def test_config_errors():
  x, t = jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,))
  with pytest.raises(ValueError, match="attention_resolutions: 12"):
    adm_unet.build("tiny", attention_resolutions=(12,)).init(jax.random.key(0), x, t)
  with pytest.raises(ValueError, match="not a multiple of 2"):
    adm_unet.build("tiny").init(jax.random.key(0), jnp.zeros((1, 31, 32, 3)), t)
  with pytest.raises(ValueError, match="unknown option"):
    adm_unet.build("tiny", widht=3)
  with pytest.raises(ValueError, match="unknown flag"):
    adm_unet.config_from_flags(image_size=64, num_channels=32, num_res_blocks=1, clas_cond=True)


def test_config_from_flags_matches_official_semantics():
  cfg = adm_unet.ADM_PRESETS["imagenet256-uncond"]
  assert cfg["channel_mult"] == (1, 1, 2, 2, 4, 4) and cfg["out_channels"] == 6
  assert adm_unet.build(cfg).attention_ds() == (8, 16, 32)  # resolutions 32,16,8 at 256
  default, preset = adm_unet.ADMUNet(), adm_unet.build("imagenet256-uncond")
  for field in cfg:  # the module's defaults are the official 256x256 unconditional model
    assert getattr(default, field) == getattr(preset, field), field
  assert adm_unet.build("imagenet512-cond").channel_mult[0] == 0.5
  tiny_cfg = adm_unet.default_config("tiny")
  tiny_cfg.num_classes = 10
  assert adm_unet.build(tiny_cfg).num_classes == 10 and tiny_cfg.dtype == "float32"


def test_sharding_rules_cover_every_parameter(tiny):
  for path, v in flax.traverse_util.flatten_dict(tiny["params"], sep="/").items():
    specs = [spec for pattern, spec in adm_unet.ADM_SHARDING_RULES if re.search(pattern, path)]
    assert specs, path
    assert specs[0] == "fsdp" or len(specs[0]) == v.ndim, (path, specs[0])
    assert (specs[0] == "fsdp") == (v.ndim > 1), path


# --- converter ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def official_keys():
  with open(KEYS_FILE) as f:
    return json.load(f)


def synthetic_state_dict(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


@pytest.mark.parametrize("name", ["tiny", "tiny_plain"])
def test_convert_consumes_every_official_key(official_keys, name):
  entry = official_keys[name]
  cfg = adm_unet.config_from_flags(**entry["flags"])
  sd = synthetic_state_dict(entry["state_dict_shapes"])
  params = convert_adm.convert(sd, cfg)
  flat = flax.traverse_util.flatten_dict(params)
  model = adm_unet.build(cfg)
  expected = flax.traverse_util.flatten_dict(adm_unet.param_shapes(model))
  assert flat.keys() == expected.keys()
  assert len(flat) == len(sd)  # one parameter per key, none left over
  for path, v in flat.items():
    key = convert_adm.official_key(path)
    w = sd[key]
    assert v.shape == expected[path].shape, path
    if w.ndim == 4:  # conv (O, I, kh, kw) -> (kh, kw, I, O)
      np.testing.assert_array_equal(v[-1, 0], w[:, :, -1, 0].T)
      np.testing.assert_array_equal(v[0, -1], w[:, :, 0, -1].T)
    elif w.ndim == 3:  # 1-D 1x1 conv (O, I, 1) -> dense (I, O)
      np.testing.assert_array_equal(v, w[:, :, 0].T)
    elif w.ndim == 2 and path[-1] == "kernel":  # linear (O, I) -> (I, O)
      np.testing.assert_array_equal(v, w.T)
    else:
      np.testing.assert_array_equal(v, w)
  y = jnp.array([3, 7]) if model.num_classes else None
  out, h = model.apply({"params": params}, jnp.zeros((2, 32, 32, 3)), jnp.array([1.0, 2.0]), y)
  assert np.isfinite(out).all() and np.isfinite(h).all() and np.abs(out).max() > 0


def test_convert_names_missing_leftover_and_misshaped_keys(official_keys):
  entry = official_keys["tiny"]
  cfg = adm_unet.config_from_flags(**entry["flags"])
  sd = synthetic_state_dict(entry["state_dict_shapes"])
  missing = dict(sd)
  del missing["middle_block.1.qkv.weight"]
  with pytest.raises(ValueError, match=r"missing key\(s\) middle_block\.1\.qkv\.weight"):
    convert_adm.convert(missing, cfg)
  extra = dict(sd, **{"label_emb.weight": np.zeros((10, 128), np.float32)})
  with pytest.raises(ValueError, match=r"unused key\(s\) label_emb\.weight"):
    convert_adm.convert(extra, cfg)
  bad = dict(sd, **{"out.2.weight": np.zeros((3, 32, 3, 3), np.float32)})
  with pytest.raises(ValueError, match=r"out\.2\.weight converts to shape"):
    convert_adm.convert(bad, cfg)
  # The tiny_plain checkpoint (class-conditional, new order) does not fit the tiny config.
  with pytest.raises(ValueError, match="label_emb.weight"):
    convert_adm.convert(synthetic_state_dict(official_keys["tiny_plain"]["state_dict_shapes"]), cfg)


def test_params_file_round_trip(official_keys, tmp_path):
  entry = official_keys["tiny"]
  params = convert_adm.convert(synthetic_state_dict(entry["state_dict_shapes"]),
                               adm_unet.config_from_flags(**entry["flags"]))
  path = str(tmp_path / "adm.msgpack")
  convert_adm.save_params(params, path)
  restored = convert_adm.load_params(path)
  jax.tree.map(np.testing.assert_array_equal, restored, params)


def test_command_line_converts_and_writes(official_keys, tmp_path, monkeypatch, capsys):
  entry = official_keys["tiny"]
  sd = synthetic_state_dict(entry["state_dict_shapes"])
  monkeypatch.setattr(convert_adm, "load_state_dict", lambda path: sd)  # no torch in the test env
  out = str(tmp_path / "tiny.msgpack")
  convert_adm.main(["--checkpoint", "unused.pt", "--preset", "tiny", "--out", out])
  params = convert_adm.load_params(out)
  np.testing.assert_array_equal(params["out_conv"]["kernel"], sd["out.2.weight"].transpose(2, 3, 1, 0))
  assert f"{sum(v.size for v in sd.values()):,} parameters" in capsys.readouterr().out
