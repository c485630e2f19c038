"""Command line: an official checkpoint -> a restorejax parameter directory.

  python -m restorejax.convert --arch nafnet --preset sidd-width32 \
      --src NAFNet-SIDD-width32.pth --out /tmp/nafnet-sidd32

builds `config.model` from the preset (plus `--set field=value` overrides, e.g. `--set fusion=concat`,
`sft` or `xattn` to start a prior-aware network from official weights: it computes the official function
until fine-tuned), converts, and writes the directory with
`restorejax.checkpoint.export_params`, so that `config.init_from=DIR` and the restore command take it as it
is. The run config around the model is `configs/default.py`'s `get_config()` when the source tree is at hand.

A mistake (unknown preset, missing file, a checkpoint that does not match the preset: the first keys
missing or unused and their counts, a pickled file refused) ends with one line
`python -m restorejax.convert: error: ...` and exit status 2.

`--arch adm` (guided-diffusion UNets, presets of `restorejax.models.adm_unet.ADM_PRESETS`) writes a
diffusion-prior directory instead (task 'diffusion', see `restorejax.convert.adm.export_prior`), which
DiffLoss's `config.losses.diffloss.diffusion_run` takes.
"""

import argparse
import ast
import importlib.util
import os
import sys
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np

from restorejax import checkpoint, cli, convert
from restorejax.convert import adm, torch_io
from restorejax.models import adm_unet


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string, e.g. fusion=concat


def run_config(model_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The full run config (configs/default.py) with `model` replaced, or just {'model': ...} without it."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "configs", "default.py")
  if not os.path.isfile(path):
    print(f"note: {path} not found; the exported config holds the model block only", file=sys.stderr)
    return ml_collections.ConfigDict({"model": model_cfg})
  spec = importlib.util.spec_from_file_location("restorejax_default_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  with config.unlocked():
    config.model = model_cfg
  return config


PROG = "python -m restorejax.convert"


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Converts and exports (module doc); a mistake is one line on stderr and exit status 2."""
  try:
    return _convert(argv)
  except (ValueError, KeyError, ImportError, OSError) as e:  # user mistakes, not bugs
    cli.fail(" ".join(str(e).split()) or type(e).__name__, PROG)


def _convert(argv: Optional[Sequence[str]]) -> int:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
  parser.add_argument("--arch", required=True, choices=sorted(convert.CONVERTERS) + ["adm"])
  parser.add_argument("--preset", required=True,
                      help="official configuration of --arch (an unknown one is refused with the list of "
                           "known presets)")
  parser.add_argument("--src", required=True, help=".pth/.pt/.safetensors/.npz (or DehazeNet's .mat)")
  parser.add_argument("--out", required=True, help="directory to write")
  parser.add_argument("--key", default=None,
                      help="container entry holding the weights (default: params_ema, params, state_dict, "
                           "model, whichever comes first)")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="override a config.model field (repeatable)")
  args = parser.parse_args(argv)
  if not os.path.isfile(args.src):
    raise ValueError(f"--src={args.src}: no such file")

  if args.arch == "adm":
    model_cfg = adm_unet.default_config(args.preset)
  else:
    model_cfg = convert.preset_config(args.arch, args.preset)
  for item in args.set:
    field, sep, value = item.partition("=")
    if not sep or field not in model_cfg:
      raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(model_cfg))}")
    model_cfg[field] = _value(value)
  state = torch_io.load_state_dict(args.src, key=args.key)
  if args.arch == "adm":
    params = adm.convert(state, model_cfg)
    count = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    print(f"{args.src}: {len(state)} tensors -> {count:,} parameters (adm {args.preset})")
    adm.export_prior(args.out, params, model_cfg)
    print(f"wrote {args.out}")
    return 0
  params = convert.convert(args.arch, state, model_cfg)
  count = sum(int(np.size(x)) for x in jax.tree.leaves(params))
  print(f"{args.src}: {len(state)} tensors -> {count:,} parameters ({args.arch} {args.preset})")
  checkpoint.export_params(args.out, run_config(model_cfg), params)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
