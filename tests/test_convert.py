"""Official-checkpoint conversion: key accounting, layouts, and outputs predicted by hand.

State dicts are built here with the official key names and shapes (tiny configurations, written from the
official module definitions); no PyTorch is needed. The "known function" tests set weights so that the
network computes something simple (a channel permutation with a one-pixel shift, a pixel shuffle with
distinct gains) and compare with a numpy computation of it.
"""

import functools
import json
import os
import re
import struct

import jax
import ml_collections
import ml_dtypes
import numpy as np
import pytest

from restorejax import convert, models
from restorejax.convert import torch_io
from restorejax.models import stack

# ----------------------------------------------------------------------------- official key sets


def _conv(key, cout, cin, k, bias=True):
  out = {f"{key}.weight": (cout, cin, k, k)}
  if bias:
    out[f"{key}.bias"] = (cout,)
  return out


def nafnet_keys(cfg):
  def block(p, c):
    dw = 2 * c
    return {**_conv(f"{p}.conv1", dw, c, 1), f"{p}.conv2.weight": (dw, 1, 3, 3), f"{p}.conv2.bias": (dw,),
            **_conv(f"{p}.conv3", c, dw // 2, 1), **_conv(f"{p}.sca.1", dw // 2, dw // 2, 1),
            **_conv(f"{p}.conv4", 2 * c, c, 1), **_conv(f"{p}.conv5", c, c, 1),
            f"{p}.norm1.weight": (c,), f"{p}.norm1.bias": (c,), f"{p}.norm2.weight": (c,),
            f"{p}.norm2.bias": (c,), f"{p}.beta": (1, c, 1, 1), f"{p}.gamma": (1, c, 1, 1)}
  keys = {**_conv("intro", cfg.width, cfg.channels, 3), **_conv("ending", cfg.channels, cfg.width, 3)}
  chan = cfg.width
  for i, n in enumerate(cfg.enc_blocks):
    for j in range(n):
      keys.update(block(f"encoders.{i}.{j}", chan))
    keys.update(_conv(f"downs.{i}", 2 * chan, chan, 2))
    chan *= 2
  for j in range(cfg.middle_blocks):
    keys.update(block(f"middle_blks.{j}", chan))
  for i, n in enumerate(cfg.dec_blocks):
    keys.update(_conv(f"ups.{i}.0", 2 * chan, chan, 1, bias=False))
    chan //= 2
    for j in range(n):
      keys.update(block(f"decoders.{i}.{j}", chan))
  return keys


def restormer_keys(cfg):
  def block(p, c, heads):
    hid = int(c * cfg.ffn_expansion_factor)
    return {f"{p}.norm1.body.weight": (c,), f"{p}.norm1.body.bias": (c,), f"{p}.attn.temperature": (heads, 1, 1),
            f"{p}.attn.qkv.weight": (3 * c, c, 1, 1), f"{p}.attn.qkv_dwconv.weight": (3 * c, 1, 3, 3),
            f"{p}.attn.project_out.weight": (c, c, 1, 1), f"{p}.norm2.body.weight": (c,),
            f"{p}.norm2.body.bias": (c,), f"{p}.ffn.project_in.weight": (2 * hid, c, 1, 1),
            f"{p}.ffn.dwconv.weight": (2 * hid, 1, 3, 3), f"{p}.ffn.project_out.weight": (c, hid, 1, 1)}
  d, (n1, n2, n3, n4), h = cfg.dim, cfg.num_blocks, cfg.heads
  keys = {"patch_embed.proj.weight": (d, cfg.in_channels, 3, 3), "output.weight": (cfg.out_channels, 2 * d, 3, 3),
          "down1_2.body.0.weight": (d // 2, d, 3, 3), "down2_3.body.0.weight": (d, 2 * d, 3, 3),
          "down3_4.body.0.weight": (2 * d, 4 * d, 3, 3), "up4_3.body.0.weight": (16 * d, 8 * d, 3, 3),
          "reduce_chan_level3.weight": (4 * d, 8 * d, 1, 1), "up3_2.body.0.weight": (8 * d, 4 * d, 3, 3),
          "reduce_chan_level2.weight": (2 * d, 4 * d, 1, 1), "up2_1.body.0.weight": (4 * d, 2 * d, 3, 3)}
  for name, n, c, heads in (("encoder_level1", n1, d, h[0]), ("encoder_level2", n2, 2 * d, h[1]),
                            ("encoder_level3", n3, 4 * d, h[2]), ("latent", n4, 8 * d, h[3]),
                            ("decoder_level3", n3, 4 * d, h[2]), ("decoder_level2", n2, 2 * d, h[1]),
                            ("decoder_level1", n1, 2 * d, h[0]),
                            ("refinement", cfg.num_refinement_blocks, 2 * d, h[0])):
    for j in range(n):
      keys.update(block(f"{name}.{j}", c, heads))
  return keys


def official_rel_index(ws):
  """The official buffer, transcribed from WindowAttention.__init__."""
  coords = np.stack(np.meshgrid(np.arange(ws), np.arange(ws), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0).copy()
  rel[:, :, 0] += ws - 1
  rel[:, :, 1] += ws - 1
  rel[:, :, 0] *= 2 * ws - 1
  return rel.sum(-1)


def official_attn_mask(size, ws):
  """The official buffer for a size x size training patch, transcribed from calculate_mask."""
  shift = ws // 2
  img = np.zeros((size, size))
  cnt = 0
  for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
    for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
      img[h, w] = cnt
      cnt += 1
  win = img.reshape(size // ws, ws, size // ws, ws).transpose(0, 2, 1, 3).reshape(-1, ws * ws)
  diff = win[:, None, :] - win[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


SWIN_IMG_SIZE = 8


def swinir_keys(cfg):
  e, ws, c = cfg.embed_dim, cfg.window_size, cfg.channels
  keys = {**_conv("conv_first", e, c, 3), "patch_embed.norm.weight": (e,), "patch_embed.norm.bias": (e,),
          "norm.weight": (e,), "norm.bias": (e,), **_conv("conv_after_body", e, e, 3)}
  for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
    for j in range(depth):
      p = f"layers.{i}.residual_group.blocks.{j}"
      keys.update({f"{p}.norm1.weight": (e,), f"{p}.norm1.bias": (e,), f"{p}.norm2.weight": (e,),
                   f"{p}.norm2.bias": (e,), f"{p}.attn.relative_position_bias_table": ((2 * ws - 1) ** 2, heads),
                   f"{p}.attn.relative_position_index": "index", f"{p}.attn.qkv.weight": (3 * e, e),
                   f"{p}.attn.qkv.bias": (3 * e,), f"{p}.attn.proj.weight": (e, e), f"{p}.attn.proj.bias": (e,),
                   f"{p}.mlp.fc1.weight": (2 * e, e), f"{p}.mlp.fc1.bias": (2 * e,),
                   f"{p}.mlp.fc2.weight": (e, 2 * e), f"{p}.mlp.fc2.bias": (e,)})
      if j % 2:
        keys[f"{p}.attn_mask"] = "mask"
    keys.update(_conv(f"layers.{i}.conv", e, e, 3))
  assert cfg.upsampler == "pixelshuffledirect"
  keys.update(_conv("upsample.0", cfg.upscale ** 2 * c, e, 3))
  return keys


def rrdbnet_keys(cfg, naming="basicsr"):
  nf, gc = cfg.num_feat, cfg.num_grow_ch
  body, rdb, names = (("body", "rdb", ("conv_body", "conv_up1", "conv_up2", "conv_hr")) if naming == "basicsr"
                      else ("RRDB_trunk", "RDB", ("trunk_conv", "upconv1", "upconv2", "HRconv")))
  keys = {**_conv("conv_first", nf, cfg.in_channels * (4 // cfg.scale) ** 2, 3),
          **_conv("conv_last", cfg.out_channels, nf, 3)}
  for name in names:
    keys.update(_conv(name, nf, nf, 3))
  for j in range(cfg.num_block):
    for k in range(1, 4):
      for c in range(1, 6):
        keys.update(_conv(f"{body}.{j}.{rdb}{k}.conv{c}", nf if c == 5 else gc, nf + (c - 1) * gc, 3))
  return keys


def dehazenet_keys(cfg):
  keys = {"weights_conv1": (3, 25, cfg.features), "biases_conv1": (cfg.features, 1),
          "weights_ip": (3 * cfg.scale_features, cfg.regression_size ** 2), "biases_ip": (1, 1)}
  for k in cfg.scales:
    keys[f"weights_conv{k}x{k}"] = (cfg.maxout_groups, k * k, cfg.scale_features)
    keys[f"biases_conv{k}x{k}"] = (cfg.scale_features, 1)
  return keys


TINY = {
    "nafnet": (dict(width=4, enc_blocks=(1,), middle_blocks=1, dec_blocks=(2,)), nafnet_keys, (1, 9, 7, 3)),
    "restormer": (dict(dim=4, num_blocks=(1, 0, 0, 1), num_refinement_blocks=1, heads=(1, 1, 1, 2)),
                  restormer_keys, (1, 8, 16, 3)),
    "swinir": (dict(embed_dim=8, depths=(2,), num_heads=(2,), window_size=4, upscale=2,
                    upsampler="pixelshuffledirect"), swinir_keys, (1, 7, 9, 3)),
    "rrdbnet": (dict(scale=4, num_feat=4, num_block=1, num_grow_ch=2), rrdbnet_keys, (1, 5, 6, 3)),
    "dehazenet": (dict(refine_radius=2), dehazenet_keys, (1, 12, 10, 3)),
}
ARCHS = sorted(TINY)


def tiny_cfg(arch, **overrides):
  cfg = models.default_config(arch)
  cfg.update(TINY[arch][0])
  cfg.update(overrides)
  return cfg


def state_dict(arch, seed=0, fill=None, **kw):
  """Official keys of the tiny config with random values (or `fill(key, shape)`), buffers derived."""
  cfg = tiny_cfg(arch)
  rng = np.random.default_rng(seed)
  out = {}
  for key, shape in TINY[arch][1](cfg, **kw).items():
    if shape == "index":
      out[key] = official_rel_index(cfg.window_size)
    elif shape == "mask":
      out[key] = official_attn_mask(SWIN_IMG_SIZE, cfg.window_size)
    elif fill is not None:
      out[key] = fill(key, shape)
    else:
      scale = 1 / np.sqrt(np.prod(shape[1:])) if len(shape) > 1 and not key.startswith("biases") else 0.1
      out[key] = (rng.normal(size=shape) * scale).astype(np.float32)
  return out


@functools.lru_cache(maxsize=None)
def forward(arch, **overrides):
  # Run a few times on tiny inputs: compile time matters, XLA CPU's optimisations do not.
  return jax.jit(models.build(tiny_cfg(arch, **overrides)).apply,
                 compiler_options={"xla_backend_optimization_level": 0,
                                   "xla_llvm_disable_expensive_passes": True})


def image(arch, seed=0):
  return np.random.default_rng(seed).uniform(size=TINY[arch][2]).astype(np.float32)


# ----------------------------------------------------------------------------- generic checks


@pytest.mark.parametrize("arch", ARCHS)
def test_converts_official_keys_and_applies(arch):
  cfg = tiny_cfg(arch)
  params = convert.convert(arch, state_dict(arch), cfg)
  out = np.asarray(forward(arch)({"params": params}, image(arch)))
  scale = cfg.get("upscale", cfg.get("scale", 1))
  h, w = TINY[arch][2][1:3]
  assert out.shape == (1, h * scale, w * scale, 3) and np.isfinite(out).all()
  # the unrolled conversion holds the same numbers, restacked
  cfg.scan = False
  unrolled = convert.convert(arch, state_dict(arch), cfg)
  restacked = stack.scan_params(unrolled, params)
  assert jax.tree.structure(restacked) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(restacked), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("arch", ARCHS)
def test_leftover_and_missing_keys_are_named(arch):
  cfg = tiny_cfg(arch)
  sd = state_dict(arch)
  with pytest.raises(ValueError, match=r"unused key\(s\): extra\.weight"):
    convert.convert(arch, {**sd, "extra.weight": np.zeros(3, np.float32)}, cfg)
  weights = sorted(k for k in sd if "weight" in k)
  victim = weights[len(weights) // 2]
  with pytest.raises(ValueError, match=rf"missing key\(s\): {victim.replace('.', '[.]')}"):
    convert.convert(arch, {k: v for k, v in sd.items() if k != victim}, cfg)


def test_wrong_config_names_the_parameter_and_shapes():
  cfg = tiny_cfg("nafnet", width=8)
  with pytest.raises(ValueError, match=r"intro/kernel has shape \(3, 3, 3, 4\), the model expects "
                                       r"\(3, 3, 3, 8\)"):
    convert.convert("nafnet", state_dict("nafnet"), cfg)
  with pytest.raises(ValueError, match="missing key"):  # more blocks than the checkpoint has
    convert.convert("nafnet", state_dict("nafnet"), tiny_cfg("nafnet", middle_blocks=2))


def test_swinir_derived_buffers_are_checked():
  sd = state_dict("swinir")
  bad = dict(sd)
  key = "layers.0.residual_group.blocks.0.attn.relative_position_index"
  bad[key] = bad[key][::-1].copy()
  with pytest.raises(ValueError, match="relative_position_index"):
    convert.convert("swinir", bad, tiny_cfg("swinir"))
  bad = dict(sd)
  key = "layers.0.residual_group.blocks.1.attn_mask"
  bad[key] = np.zeros_like(bad[key])
  with pytest.raises(ValueError, match="attn_mask"):
    convert.convert("swinir", bad, tiny_cfg("swinir"))


def test_rrdbnet_reads_both_namings_alike():
  cfg = tiny_cfg("rrdbnet")
  a = convert.convert("rrdbnet", state_dict("rrdbnet", naming="basicsr"), cfg)
  b = convert.convert("rrdbnet", state_dict("rrdbnet", naming="esrgan"), cfg)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


# 'xattn' shares the converter path of 'sft' (fusion parameters from their initialisers).
@pytest.mark.parametrize("arch,fusion", [("nafnet", "concat"), ("swinir", "concat"), ("nafnet", "sft")])
def test_fused_network_starts_as_the_official_function(arch, fusion):
  sd = state_dict(arch)
  plain = convert.convert(arch, sd, tiny_cfg(arch))
  extra = {} if fusion == "concat" else dict(fusion_width=4, fusion_heads=2)
  fused = convert.convert(arch, sd, tiny_cfg(arch, fusion=fusion, **extra))
  if fusion != "concat":
    assert any(k.startswith("fusion_") for k in fused)
    assert all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves({k: v for k, v in fused.items() if not k.startswith("fusion_")}),
        jax.tree.leaves(plain)))
  x = image(arch)
  prior = image(arch, seed=1)
  np.testing.assert_allclose(forward(arch, fusion=fusion, **extra)({"params": fused}, x, prior),
                             forward(arch)({"params": plain}, x), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- known functions

PERM = (2, 0, 1)  # input channel c lands in channel PERM[c]


def shift_left(x):
  """out[:, y, x] = in[:, y, x + 1], zero past the right border: a 3x3 kernel with its 1 at (1, 2)."""
  return np.concatenate([x[:, :, 1:], np.zeros_like(x[:, :, :1])], axis=2)


def permute(x):
  out = np.zeros_like(x)
  for c in range(3):
    out[..., PERM[c]] = x[..., c]
  return out


def zero_fill(key, shape):
  return np.zeros(shape, np.float32)


def set_conv(sd, key, pairs, tap=(1, 1)):
  """Weight `key` (O, I, k, k) = 1 at [o, i, *tap] for each (o, i)."""
  w = np.zeros_like(sd[key])
  for o, i in pairs:
    w[(o, i) + tap] = 1.0
  sd[key] = w


def test_nafnet_known_function():
  """Blocks are the identity when beta = gamma = 0, and zero down/up convs leave only the level-1
  skip, so out = x + ending(intro(x)): here a channel permutation shifted one pixel left."""
  sd = state_dict("nafnet", fill=zero_fill)
  for k in sd:
    if "norm" in k and k.endswith("weight"):
      sd[k] += 1.0
  set_conv(sd, "intro.weight", [(PERM[c], c) for c in range(3)], tap=(1, 2))
  set_conv(sd, "ending.weight", [(c, c) for c in range(3)])
  x = image("nafnet")
  out = forward("nafnet")({"params": convert.convert("nafnet", sd, tiny_cfg("nafnet"))}, x)
  np.testing.assert_allclose(out, x + shift_left(permute(x)), atol=1e-6)


def test_restormer_known_function():
  """Zero output projections make every block the identity and zero resampling convs silence levels
  2-4, so out = x + output(concat[up(...) = 0, level-1 features]): checks the skip concat order."""
  cfg = tiny_cfg("restormer")
  sd = state_dict("restormer", fill=zero_fill)
  for k in sd:
    if k.endswith(("norm1.body.weight", "norm2.body.weight", "temperature")):
      sd[k] += 1.0
  set_conv(sd, "patch_embed.proj.weight", [(c, c) for c in range(3)])
  set_conv(sd, "output.weight", [(PERM[c], cfg.dim + c) for c in range(3)], tap=(1, 2))
  x = image("restormer")
  out = forward("restormer")({"params": convert.convert("restormer", sd, cfg)}, x)
  np.testing.assert_allclose(out, x + shift_left(permute(x)), atol=1e-6)


def test_restormer_single_channel_output_conv_is_a_full_conv():
  """Gray Restormer (denoise-gray): its 3x3 output conv maps 2*dim channels to 1, a full conv even though
  its feature count equals its group count (1); it once became a depthwise conv of 2*dim outputs."""
  cfg = tiny_cfg("restormer", in_channels=1, out_channels=1)
  rng = np.random.default_rng(0)
  sd = {k: rng.normal(0, 0.2, shape).astype(np.float32) for k, shape in restormer_keys(cfg).items()}
  x = image("restormer")[..., :1]
  apply = forward("restormer", in_channels=1, out_channels=1)
  out = np.asarray(apply({"params": convert.convert("restormer", sd, cfg)}, x))
  assert out.shape == x.shape and not np.allclose(out, x, atol=1e-3)
  sd["output.weight"] = np.zeros_like(sd["output.weight"])  # residual only: the input comes back
  np.testing.assert_allclose(apply({"params": convert.convert("restormer", sd, cfg)}, x), x, atol=1e-6)


def test_swinir_known_function():
  """Zero attention/MLP outputs and residual convs leave out = shuffle(upsample_conv(conv_first(x - mean)))
  + mean. Output channel c*4 + i*2 + j of the conv gets gain 1 + that index: PyTorch's PixelShuffle puts
  it at pixel (2h + i, 2w + j) of channel c."""
  from restorejax.models import swinir  # pylint: disable=g-import-not-at-top
  sd = state_dict("swinir", fill=zero_fill)
  for k in sd:
    if "norm" in k and k.endswith("weight"):
      sd[k] += 1.0
  set_conv(sd, "conv_first.weight", [(c, c) for c in range(3)])
  w = np.zeros_like(sd["upsample.0.weight"])
  for c in range(3):
    for i in range(2):
      for j in range(2):
        k = c * 4 + i * 2 + j
        w[k, c, 1, 1] = 1.0 + k
  sd["upsample.0.weight"] = w
  x = image("swinir")
  mean = np.asarray(swinir.RGB_MEAN, np.float32)
  expected = np.zeros((1, x.shape[1] * 2, x.shape[2] * 2, 3), np.float32)
  for c in range(3):
    for i in range(2):
      for j in range(2):
        expected[0, i::2, j::2, c] = (1.0 + c * 4 + i * 2 + j) * (x[0, ..., c] - mean[c]) + mean[c]
  out = forward("swinir")({"params": convert.convert("swinir", sd, tiny_cfg("swinir"))}, x)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_rrdbnet_known_function():
  """Zero dense-block and trunk convs leave the long skip only; identity up/HR/last convs then give the
  first conv's output (permuted, shifted) upsampled x4 by pixel repetition."""
  sd = state_dict("rrdbnet", fill=zero_fill, naming="esrgan")
  nf = tiny_cfg("rrdbnet").num_feat
  set_conv(sd, "conv_first.weight", [(PERM[c], c) for c in range(3)], tap=(1, 2))
  for name in ("upconv1", "upconv2", "HRconv"):
    set_conv(sd, f"{name}.weight", [(c, c) for c in range(nf)])
  set_conv(sd, "conv_last.weight", [(c, c) for c in range(3)])
  x = image("rrdbnet")
  out = forward("rrdbnet")({"params": convert.convert("rrdbnet", sd, tiny_cfg("rrdbnet"))}, x)
  expected = np.repeat(np.repeat(shift_left(permute(x)), 4, axis=1), 4, axis=2)
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_dehazenet_matlab_layout():
  """MATLAB stores each kernel column-major: entry p of weights(j, :, i) is row p % k, column p // k."""
  cfg = tiny_cfg("dehazenet")
  sd = state_dict("dehazenet")
  w = np.zeros_like(sd["weights_conv1"])
  w[2, 7, 5] = 1.0  # input 2, output 5, p = 7 -> row 2, column 1 of the 5x5 kernel
  sd["weights_conv1"] = w
  sd["biases_conv1"] = np.arange(cfg.features, dtype=np.float32)[:, None]
  params = convert.convert("dehazenet", sd, cfg)
  kernel = np.asarray(params["cnn"]["conv1"]["kernel"])
  assert kernel[2, 1, 2, 5] == 1.0 and kernel.sum() == 1.0
  np.testing.assert_array_equal(params["cnn"]["conv1"]["bias"], np.arange(cfg.features))
  assert params["cnn"]["ip"]["kernel"].shape == (6, 6, 48, 1)
  out = np.asarray(forward("dehazenet")({"params": params}, image("dehazenet")))
  assert out.shape == TINY["dehazenet"][2] and np.isfinite(out).all()


# ----------------------------------------------------------------------------- reading checkpoints


def write_safetensors(path, arrays):
  names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(ml_dtypes.bfloat16): "BF16",
           np.dtype(np.int64): "I64"}
  header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
  for key, a in arrays.items():
    raw = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
    header[key] = {"dtype": names[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
  text = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_safetensors_reader(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {"a.weight": rng.normal(size=(2, 3, 1, 1)).astype(np.float32),
            "b": rng.normal(size=(4,)).astype(np.float16),
            "c": rng.normal(size=(3, 2)).astype(ml_dtypes.bfloat16),
            "idx": np.arange(6, dtype=np.int64).reshape(2, 3)}
  path = str(tmp_path / "w.safetensors")
  write_safetensors(path, arrays)
  loaded = torch_io.load_state_dict(path)
  assert sorted(loaded) == sorted(arrays)
  for k, v in arrays.items():
    assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
    np.testing.assert_array_equal(loaded[k], v)


def test_unwrap_containers_and_prefixes(tmp_path):
  w = np.ones((2,), np.float32)
  assert set(torch_io.unwrap({"params": {"x": w}, "params_ema": {"y": w}})) == {"y"}  # EMA preferred
  assert set(torch_io.unwrap({"params": {"x": w}, "params_ema": {"y": w}}, key="params")) == {"x"}
  assert set(torch_io.unwrap({"state_dict": {"module.conv.weight": w}})) == {"conv.weight"}
  assert set(torch_io.unwrap({"conv.weight": w})) == {"conv.weight"}
  with pytest.raises(ValueError, match="'iter'"):
    torch_io.unwrap({"conv.weight": w, "iter": 5})
  with pytest.raises(ValueError, match="no 'params_ema'"):
    torch_io.unwrap({"params": {"x": w}}, key="params_ema")
  np.savez(tmp_path / "w.npz", **{"module.a": w})
  assert set(torch_io.load_state_dict(str(tmp_path / "w.npz"))) == {"a"}
  with pytest.raises(ValueError, match="does not exist"):
    torch_io.load_state_dict(str(tmp_path / "missing.pth"))
  (tmp_path / "w.bin").write_bytes(b"")
  with pytest.raises(ValueError, match="unknown extension"):
    torch_io.load_state_dict(str(tmp_path / "w.bin"))


def test_pth_without_torch_is_a_clear_error(tmp_path):
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    pytest.skip("torch is installed")
  except ImportError:
    pass
  (tmp_path / "w.pth").write_bytes(b"not read")
  with pytest.raises(ImportError, match=r"restorejax\[convert\]"):
    torch_io.load_state_dict(str(tmp_path / "w.pth"))


def test_preset_configs():
  cfg = convert.preset_config("nafnet", "sidd-width32")
  assert (cfg.width, tuple(cfg.enc_blocks), cfg.middle_blocks, tuple(cfg.dec_blocks)) == (
      32, (2, 2, 4, 8), 12, (2, 2, 2, 2))
  with pytest.raises(ValueError, match="preset 'nope' unknown for swinir"):
    convert.preset_config("swinir", "nope")
  with pytest.raises(ValueError, match="not 'nafnet'"):
    convert.convert("nafnet", {}, ml_collections.ConfigDict(models.default_config("swinir")))


def test_cli_exports_a_converted_checkpoint(tmp_path):
  from restorejax.convert import __main__ as cli  # pylint: disable=g-import-not-at-top
  try:
    from restorejax import checkpoint  # pylint: disable=g-import-not-at-top
  except ImportError:
    checkpoint = None
  if not hasattr(checkpoint, "export_params"):
    pytest.skip("restorejax.checkpoint.export_params is not there yet")
  cfg = convert.preset_config("rrdbnet", "esrgan-x4")
  sd = {k: np.zeros(s, np.float32) for k, s in rrdbnet_keys(tiny_cfg("rrdbnet")).items()}
  np.savez(tmp_path / "w.npz", **sd)
  out = tmp_path / "out"
  assert cli.main(["--arch", "rrdbnet", "--preset", "esrgan-x4", "--src", str(tmp_path / "w.npz"),
                   "--out", str(out), "--set", "num_feat=4", "--set", "num_block=1",
                   "--set", "num_grow_ch=2"]) == 0
  written = json.loads((out / "config.json").read_text())
  assert written["model"]["name"] == "rrdbnet" and written["model"]["num_feat"] == 4
  assert cfg.num_feat == 64  # the preset itself is untouched


def _convert_cli(capsys, *argv):
  """`python -m restorejax.convert ARGV` in this process: (exit status, stderr lines)."""
  from restorejax.convert import __main__ as cli  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as e:
    cli.main(list(argv))
  return e.value.code, capsys.readouterr().err.strip().splitlines()


def test_cli_mistakes_are_one_line_each(tmp_path, capsys):
  sd = {k: np.zeros(s, np.float32) for k, s in rrdbnet_keys(tiny_cfg("rrdbnet")).items()}
  sd.update({f"junk.{i}.weight": np.zeros(1, np.float32) for i in range(40)})
  np.savez(tmp_path / "w.npz", **sd)
  base = ["--arch", "rrdbnet", "--src", str(tmp_path / "w.npz"), "--out", str(tmp_path / "out")]
  status, err = _convert_cli(capsys, *base, "--preset", "nope")
  assert status == 2 and len(err) == 1
  assert err[0].startswith("python -m restorejax.convert: error: preset 'nope' unknown for rrdbnet (known: ")
  # The full preset expects thousands of keys the tiny checkpoint lacks: the line names the first ten.
  status, err = _convert_cli(capsys, *base, "--preset", "esrgan-x4")
  assert status == 2 and len(err) == 1 and len(err[0]) < 2000, err
  assert "40 unused key(s): junk.0.weight, junk.1.weight, " in err[0] and "(+30 more)" in err[0]
  assert re.search(r"\d+ missing key\(s\): (\S+, ){9}\S+ \(\+\d+ more\)", err[0]), err[0]
  status, err = _convert_cli(capsys, "--arch", "rrdbnet", "--preset", "esrgan-x4", "--src",
                             str(tmp_path / "nope.pth"), "--out", str(tmp_path / "out"))
  assert (status, err) == (2, [f"python -m restorejax.convert: error: --src={tmp_path / 'nope.pth'}: no such "
                               "file"])
  assert not os.path.exists(tmp_path / "out")


def test_cli_refuses_a_pickle_in_one_line(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  import argparse  # pylint: disable=g-import-not-at-top
  torch.save({"args": argparse.Namespace(lr=1), "params": {"w": torch.zeros(2)}}, tmp_path / "w.pth")
  status, err = _convert_cli(capsys, "--arch", "rrdbnet", "--preset", "esrgan-x4", "--src",
                             str(tmp_path / "w.pth"), "--out", str(tmp_path / "out"))
  assert status == 2 and len(err) == 1 and "weights_only" not in err[0]
  assert err[0].startswith(f"python -m restorejax.convert: error: {tmp_path / 'w.pth'}: refused: it holds "
                           "Python objects besides tensors (argparse.Namespace)")
  assert not os.path.exists(tmp_path / "out")
