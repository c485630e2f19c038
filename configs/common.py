"""The one reader of a config's argument, the text after the colon in `--config=configs/NAME.py:ARG`.

In big_vision's `parse_arg` style: `ARG` is comma-separated; `key=value` sets an option, converted to the
type of its default (bool: true/false/1/0/yes/no; a tuple default: `LO:HI`, colon-separated); a bare word
is a variant if the config has variants, else sets a bool option true (`tiny`), else fills the config's one
positional option (e.g. a dataset directory). Anything else is a one-line error naming the config file.

  args = common.parse_arg(arg, source="configs/default.py", variants=("default", "tiny"), model="nafnet")
  args.variant, args.model
"""

from typing import Any, Optional, Sequence

import ml_collections

_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def _convert(source: str, key: str, value: str, default: Any) -> Any:
  try:
    if isinstance(default, bool):
      if value.lower() not in _TRUE + _FALSE:
        raise ValueError(value)
      return value.lower() in _TRUE
    if isinstance(default, tuple):
      parts = value.split(":")
      kinds = [type(d) for d in default] or [str] * len(parts)
      if len(parts) != len(kinds):
        raise ValueError(value)
      return tuple(kind(p) for kind, p in zip(kinds, parts))
    return type(default)(value) if default is not None else value
  except ValueError:
    want = ":".join(type(d).__name__ for d in default) if isinstance(default, tuple) else type(default).__name__
    raise ValueError(f"{source}: option {key}={value!r} is not a {want}") from None


def parse_arg(arg: Optional[str], *, source: str, variants: Sequence[str] = (),
              positional: Optional[str] = None, **spec: Any) -> ml_collections.ConfigDict:
  """`arg` -> a ConfigDict of `spec`'s options (their defaults unless given) plus `variant` when the config
  has `variants` (the first is the default). `positional` names the option a bare word fills."""
  values = dict(spec)
  if variants:
    values["variant"] = variants[0]
  seen_positional = False
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if sep:
      if key not in spec:
        raise ValueError(f"{source}: unknown option {key!r} (known: {', '.join(sorted(spec)) or 'none'})")
      values[key] = _convert(source, key, value, spec[key])
    elif item in variants:
      values["variant"] = item
    elif isinstance(spec.get(item), bool):
      values[item] = True
    elif positional and not seen_positional:
      values[positional], seen_positional = item, True
    elif variants:
      raise ValueError(f"{source}: unknown variant {item!r} (known: {', '.join(variants)})")
    else:
      known = [k for k, v in spec.items() if isinstance(v, bool)] + [f"{k}=..." for k in spec
                                                                      if not isinstance(spec[k], bool)]
      raise ValueError(f"{source}: unknown argument {item!r} (known: {', '.join(known) or 'none'})")
  return ml_collections.ConfigDict(values)


def run(*, task: str = "restoration", total_steps: int, log_every: int, eval_every: int,
        checkpoint_every: int, keep_checkpoints: int = 2,
        rules: tuple = ((".*", "fsdp"),)) -> ml_collections.ConfigDict:
  """The fields every run has: its task, seed and cadence, warm start and resume, the non-finite stop, and a
  data-parallel mesh whose sharding `rules` (regex on parameter path -> spec; restorejax/sharding.py) say
  what FSDP splits. A config adds `model`, `data`, `eval`, `losses`/its task's block and `optim`."""
  return ml_collections.ConfigDict({
      "task": task,                       # see restorejax/tasks
      "seed": 0,
      "total_steps": total_steps,
      "log_every": log_every,
      "eval_every": eval_every,
      "checkpoint_every": checkpoint_every,
      "keep_checkpoints": keep_checkpoints,
      "init_from": "",                    # run directory or checkpoint to warm-start parameters from
      "resume_step": -1,                  # -1: resume from the latest checkpoint; N: from checkpoint N
      "max_nonfinite_steps": 20,          # consecutive skipped (non-finite) steps before the run stops
      "peak_flops_per_device": 0.0,       # for MFU; 0 = from the device kind (unknown for CPUs)
      "mesh": (("data", -1),),
      "sharding": {"rules": tuple(rules), "batch_axes": ("data", "fsdp"), "fsdp_min_size": 2 ** 14},
  })


def restoration_data(degrade: dict, *, eval_num_images: int = 32, scale: Optional[int] = None,
                     patch_size: int = 64, batch_size: int = 8) -> ml_collections.ConfigDict:
  """`config.data` of a restoration (or regression super-resolution) run on the embedded procedural images,
  every source's block present so that `--config.data.source=records` and friends need no file edit."""
  block = {
      "source": "procedural",
      "procedural": {"seed": 0, "num_images": 512, "image_size": 96,
                     "eval_num_images": eval_num_images, "eval_image_size": 96},
      "patch_size": patch_size,           # the target's (HR) patch; a multiple of `scale`
      "batch_size": batch_size,           # global, over all processes
      "num_workers": 0,                   # grain prefetch processes (0: threads in this process)
      "read_threads": 2,
      "degrade": degrade,
      # Priors: the source's prior goes into batches only with use_prior (False: the no-prior ablation).
      # A source without priors gets simulated ones (from the target, on the device) when enabled.
      "use_prior": True,
      # geometry=False: simulated priors without their view change and displaced patch (tone and texture
      # only; a diagnostic of how much of a prior's harm is misalignment).
      "simulated_prior": {"enabled": False, "severity": (0.2, 0.6), "geometry": True},
      # Other sources (see restorejax/data/pipeline.py); `source` picks one.
      "records": {"path": "", "eval_path": "", "tasks": ()},
      "tfds": {"name": "", "config": "", "split": "train", "eval_split": "test", "data_dir": "", "keys": ""},
      "mixture": {},                      # {component: {source, <source block>, weight, task}}; set in a file
      "eval_crop": 0,                     # > 0: evaluate on centre crops of this size (mixed-size sets)
      "eval_max_images": 0,               # > 0: evaluate on the first N held-out images only
  }
  if scale is not None:
    block["scale"] = scale                # SR factor: LR input = HR patch / scale (1: restoration)
  return ml_collections.ConfigDict(block)


def restoration_eval(*, crop_border: int = 0, test_y_channel: bool = False) -> ml_collections.ConfigDict:
  """`config.eval` of a restoration run: BasicSR's metric conventions, stated in every report."""
  return ml_collections.ConfigDict({
      "batch_size": 8,
      "dataset": "default",               # 'default' (held-out procedural set), 'folder:DEG,TGT[,PRIOR]'
      "crop_border": crop_border,         # super-resolution: the scale
      "test_y_channel": test_y_channel,   # super-resolution: True (BT.601 Y)
      "perceptual": False,                # also LPIPS/NIQE (needs pip install -e ".[perceptual]")
  })


def bicubic_sr() -> dict:
  """`config.data.degrade` of regression super-resolution: the LR input is made on the device by MATLAB
  bicubic downsampling by `config.data.scale`, with no blur, noise or JPEG (the 'classical' SR benchmark)."""
  return {"name": "sr", "order": "classical", "blur_sigma": (0.0, 0.0), "noise_sigma": (0.0, 0.0),
          "jpeg_quality": (0, 0)}


def tiny_sr(c: ml_collections.ConfigDict) -> None:
  """The `:tiny` variant of a regression SR config (for tests): 20 steps, 32x32 HR patches, batch 4, tiny
  procedural sets; the config shrinks its own network."""
  c.update(total_steps=20, log_every=5, eval_every=20, checkpoint_every=10)
  c.data.procedural.update(num_images=32, image_size=40, eval_num_images=4, eval_image_size=32)
  c.data.update(patch_size=32, batch_size=4)
  c.eval.batch_size = 4
  c.optim.warmup_steps = 2
