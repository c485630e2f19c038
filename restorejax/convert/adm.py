"""Official guided-diffusion UNet checkpoints (e.g. `256x256_diffusion_uncond.pt`) -> `ADMUNet` params.

Every parameter of the model built from `cfg` is read from the state dict under its official name and
every key of the state dict must be used: a missing key, a leftover key or a shape mismatch is a
ValueError naming the keys. Layouts: conv (O, I, kh, kw) -> (kh, kw, I, O); linear (O, I) -> (I, O);
the attention's 1-D 1x1 convs `qkv` / `proj_out` (O, I, 1) -> dense (I, O) (their channel order is kept,
the model reads it as legacy or new order from its config); GroupNorm weight -> scale.

Command line (torch only needed for .pt files, loaded with weights_only=True):
  python -m restorejax.convert.adm --checkpoint 256x256_diffusion_uncond.pt \
      --preset imagenet256-uncond --out runs/adm256_uncond
writes a run directory (`restorejax.checkpoint.export_params`) whose config.json has task 'diffusion',
the ADM network as `model` and the schedule as `diffusion` (linear, 1000 steps: the released models'),
which is what DiffLoss's `config.losses.diffloss.diffusion_run` takes, like a trained prior's run
directory.
`--out FILE.msgpack` writes the bare parameters instead (`load_params` reads them back).
`python -m restorejax.convert --arch adm --preset ... --src ... --out DIR` does the same.

Parity with the official PyTorch model (guided-diffusion `create_model`, 256x256 unconditional, checked
out-of-band by the converter's author on converted weights): max abs difference 1.5e-5 on the eps output,
3.7e-5 on h-space.
"""

import argparse
import re
from typing import Any, Mapping

from flax import serialization, traverse_util
import jax
import numpy as np

from restorejax import checkpoint
from restorejax.convert import layout
from restorejax.diffusion import run_config
from restorejax.models import adm_unet
from restorejax.models.adm_unet import param_shapes  # lives beside its model

# Our top-level module names -> official names; block names are `<list>_<i>[_<j>]` -> `<list>.<i>[.<j>]`.
_TOP = {"time_embed_in": "time_embed.0", "time_embed_out": "time_embed.2", "label_emb": "label_emb",
        "out_norm": "out.0", "out_conv": "out.2"}
_SUB = {"in_norm": "in_layers.0", "in_conv": "in_layers.2", "emb_dense": "emb_layers.1",
        "out_norm": "out_layers.0", "out_conv": "out_layers.3", "skip": "skip_connection",
        "norm": "norm", "qkv": "qkv", "proj_out": "proj_out", "op": "op", "conv": "conv"}
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_BLOCK = re.compile(r"^(input_blocks|output_blocks)_(\d+)_(\d+)$|^(middle_block)_(\d+)$")


def official_key(path: tuple[str, ...]) -> str:
  """Our parameter path (without 'params') -> the official state-dict key."""
  *modules, leaf = path
  head, rest = modules[0], modules[1:]
  m = _BLOCK.match(head)
  if m:
    parts = [m[1], m[2], m[3]] if m[1] else [m[4], m[5]]
  elif head in _TOP and not rest:
    parts = [_TOP[head]]
  else:
    raise ValueError(f"adm convert: no official name for parameter {'/'.join(path)}")
  parts += [_SUB[r] for r in rest]
  return ".".join(parts + [_LEAF[leaf]])


def _to_ours(key: str, value: np.ndarray, leaf: str, shape: tuple[int, ...]) -> np.ndarray:
  value = np.asarray(value, dtype=np.float32)
  if leaf == "kernel":
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    elif value.ndim == 3 and value.shape[-1] == 1:
      value = value[:, :, 0].T
    elif value.ndim == 2:
      value = value.T
  if value.shape != tuple(shape):
    raise ValueError(f"adm convert: {key} converts to shape {value.shape}, the model expects {tuple(shape)}")
  return value


def convert(state_dict: Mapping[str, Any], cfg: Any) -> dict[str, Any]:
  """Official state dict (name -> array) -> params for `ADMUNet.apply({'params': params}, x, t)`.

  Args:
    state_dict: the official keys (`input_blocks.1.0.in_layers.0.weight`, ...) -> numpy-convertible arrays.
    cfg: an ADMUNet, a preset name of `adm_unet.ADM_PRESETS`, or a mapping of ADMUNet fields.
  """
  model = cfg if isinstance(cfg, adm_unet.ADMUNet) else adm_unet.build(cfg)
  shapes = traverse_util.flatten_dict(param_shapes(model))
  keys = {path: official_key(path) for path in shapes}
  missing = sorted(k for k in keys.values() if k not in state_dict)
  leftover = sorted(set(state_dict) - set(keys.values()))
  if missing or leftover:
    problems = []
    if missing:
      problems.append(f"{len(missing)} missing key(s) {layout.first_keys(missing)}")
    if leftover:
      problems.append(f"{len(leftover)} unused key(s) {layout.first_keys(leftover)}")
    raise ValueError(f"adm convert: state dict does not match the model config: {'; '.join(problems)}")
  params = {path: _to_ours(keys[path], state_dict[keys[path]], path[-1], s.shape)
            for path, s in shapes.items()}
  return traverse_util.unflatten_dict(params)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A .pt (torch, weights_only) or .safetensors checkpoint -> name -> float32 numpy array."""
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return {k: v.astype(np.float32) for k, v in load_file(path).items()}
  import torch  # pylint: disable=g-import-not-at-top
  state = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise ValueError(f"adm convert: {path} does not hold a state dict (got {type(state).__name__})")
  return {k: v.float().numpy() for k, v in state.items()}


def save_params(params: Any, path: str) -> None:
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))


def load_params(path: str) -> dict[str, Any]:
  """Params written by `save_params` (msgpack, no pickle)."""
  with open(path, "rb") as f:
    return serialization.msgpack_restore(f.read())


def export_prior(out_dir: str, params: Any, preset_or_config: Any, *, schedule: str = "linear",
                 num_steps: int = 1000) -> None:
  """A run directory of converted weights that DiffLoss (and `config.init_from`) take as a diffusion prior."""
  if isinstance(preset_or_config, str):
    model_cfg = adm_unet.default_config(preset_or_config)
  else:
    model_cfg = adm_unet.default_config("tiny")
    model_cfg.update({k: v for k, v in dict(preset_or_config).items() if k != "name"})
  config = run_config.prior_config(model_cfg, schedule=schedule, num_steps=num_steps,
                                   image_size=model_cfg.image_size)
  checkpoint.export_params(out_dir, config, params)


def main(argv: Any = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="official .pt or .safetensors file")
  parser.add_argument("--preset", default="imagenet256-uncond", choices=sorted(adm_unet.ADM_PRESETS))
  parser.add_argument("--out", required=True, help="output run directory (or a .msgpack file)")
  parser.add_argument("--schedule", default="linear", help="noise schedule the weights were trained with")
  parser.add_argument("--num_steps", type=int, default=1000, help="diffusion steps the weights were trained with")
  args = parser.parse_args(argv)
  params = convert(load_state_dict(args.checkpoint), args.preset)
  if args.out.endswith(".msgpack"):
    save_params(params, args.out)
  else:
    export_prior(args.out, params, args.preset, schedule=args.schedule, num_steps=args.num_steps)
  count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
  print(f"wrote {args.out}: {count:,} parameters")


if __name__ == "__main__":
  main()
