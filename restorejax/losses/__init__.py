"""The training loss: a weighted sum of terms chosen in `config.losses`.

`config.losses.<name> = {weight: w, <option>: value, ...}`. Each term is a pure function
`term(restored, batch, *, aux, **options) -> scalar` (or `(scalar, {part: scalar})`, whose parts are
logged too); `aux` holds frozen models a term needs (never part of the train state). A term with weight 0
is not computed at all, so ablating a term is one override: `--config.losses.charbonnier.weight=0`.
Every computed term is logged as `train/loss/<name>` (its parts as `train/loss/<name>/<part>`).

Terms:
  against the target (pixel.py)   l1, l2, charbonnier, psnr, ssim (1 - SSIM), fft (FFT L1)
  DiffLoss (diffloss.py)          diffloss: a frozen diffusion prior (`diffusion_run` = its run directory;
                                  `prior`, its old name, is the same value)
  against the prior (prior.py)    prior_color, prior_patch, prior_gradient, prior_shift_l1; they never
                                  read `target`, so they also supervise where no ground truth exists

  through frozen networks         perceptual: VGG16 features, BasicSR's PerceptualLoss (L1/L2/fro, optional
  (perceptual.py)                 Gram style term); lpips: LPIPS v0.1 (AlexNet or VGG16). Their weights come
                                  from the optional extra: pip install -e ".[perceptual]"

A term that needs a frozen network reads its parameters from `aux[<name>]`, built once by
`AUX_BUILDERS[<name>](**options)` as host arrays; the trainer shards `aux` by the config's sharding rules
under paths `<name>/...` and passes it to every step; it is never updated.
"""

import inspect
from typing import Any, Callable

import jax.numpy as jnp
import ml_collections

from restorejax.losses import diffloss as diffloss_lib
from restorejax.losses import perceptual as perceptual_lib
from restorejax.losses import pixel, prior

TERMS: dict[str, Callable[..., Any]] = {
    "l1": pixel.l1,
    "l2": pixel.l2,
    "charbonnier": pixel.charbonnier,
    "psnr": pixel.psnr,
    "ssim": pixel.ssim,
    "fft": pixel.fft,
    "diffloss": diffloss_lib.diffloss,
    "prior_color": prior.prior_color,
    "prior_patch": prior.prior_patch,
    "prior_gradient": prior.prior_gradient,
    "prior_shift_l1": prior.prior_shift_l1,
    "perceptual": perceptual_lib.perceptual,
    "lpips": perceptual_lib.lpips,
}


def term_options(name: str) -> dict[str, Any]:
  """A term's options and their defaults: its keyword-only arguments other than `aux`."""
  params = inspect.signature(TERMS[name]).parameters.values()
  return {p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY and p.name != "aux"}


# Options a term renamed but still takes, old name -> new: in `default_config` the old key is a reference
# to the new one, so either spelling (a config file, an override, a sweep) sets the one value.
RENAMED_OPTIONS: dict[str, dict[str, str]] = {
    "diffloss": diffloss_lib.RENAMED_OPTIONS,
}


def default_config(**weights: float) -> ml_collections.ConfigDict:
  """Every known term with its default options; weight 0 (off) unless given, e.g. `default_config(l1=1.0)`."""
  unknown = sorted(set(weights) - set(TERMS))
  if unknown:
    raise ValueError(f"unknown loss term(s) {', '.join(unknown)} (known: {', '.join(sorted(TERMS))})")
  cfg = ml_collections.ConfigDict(
      {name: {"weight": float(weights.get(name, 0.0)), **term_options(name)} for name in TERMS})
  for name, renamed in RENAMED_OPTIONS.items():
    for old, new in renamed.items():
      cfg[name][old] = cfg[name].get_ref(new)
  return cfg


# Terms that need frozen models or tables: name -> fn(options) -> pytree of host arrays, given to the
# term as `aux[name]` (it lives outside the train state and is never updated).
AUX_BUILDERS: dict[str, Callable[..., Any]] = {
    "diffloss": diffloss_lib.build_aux,
    "perceptual": perceptual_lib.build_perceptual_aux,
    "lpips": perceptual_lib.build_lpips_aux,
}


class WeightedLoss:
  """`loss(restored, batch, aux) -> (total, {name: unweighted term value, 'name/part': ...})`; `.aux` holds
  what the terms need."""

  def __init__(self, active: list[tuple[str, float, dict[str, Any]]], aux: dict[str, Any]):
    self.active = active
    self.aux = aux

  def __call__(self, restored, batch, aux=None):
    restored = restored.astype(jnp.float32)
    terms = {}
    for name, _, opts in self.active:
      value = TERMS[name](restored, batch, aux=aux, **opts)
      if isinstance(value, tuple):
        value, parts = value
        terms.update({f"{name}/{part}": v for part, v in parts.items()})
      terms[name] = value
    total = sum(w * terms[name] for name, w, _ in self.active)
    return total, terms


def build(cfg: ml_collections.ConfigDict) -> WeightedLoss:
  """`config.losses` -> the weighted sum of its non-zero terms (and their frozen `aux` inputs)."""
  active = []
  for name, block in cfg.items():
    if name not in TERMS:
      raise ValueError(f"config.losses: unknown loss term {name!r} (known: {', '.join(sorted(TERMS))})")
    options = dict(block)
    if "weight" not in options:
      raise ValueError(f"config.losses.{name}: missing 'weight'")
    weight = float(options.pop("weight"))
    known = term_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
      raise ValueError(f"config.losses.{name}: unknown option(s) {', '.join(unknown)} "
                       f"(known: weight{''.join(', ' + k for k in known)})")
    if weight != 0.0:
      active.append((name, weight, options))
  if not active:
    raise ValueError("config.losses: every term has weight 0; give at least one a non-zero weight")
  aux = {name: AUX_BUILDERS[name](**opts) for name, _, opts in active if name in AUX_BUILDERS}
  return WeightedLoss(active, aux)
