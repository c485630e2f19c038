"""DiffLoss (Tan et al., ACCV 2024): a frozen unconditional diffusion model as a loss for any restorer.

Per image (in [-1, 1], resized to the prior's resolution), draw a step t and one noise eps, and noise the
restored image z and the target x with the SAME t and the SAME eps. Then

  naturalness  L_nat = mean((eps_theta(z_t, t)[:3] - eps_theta(x_t, t)[:3])^2)   eps channels only, against
                                                                                   the model's prediction for
                                                                                   the target, not eps
  semantic     L_sem = mean((h(z_t, t) - h(x_t, t))^2)                           h = middle-block output

and the term is `naturalness * L_nat + semantic * L_sem`. The paper's total, `L = mean((z - x)^2) + 1e-3
L_nat + 1e-6 L_sem` (gamma = 1e-3, lambda = 1e-3), is `config.losses.l2.weight = 1`,
`config.losses.diffloss.weight = 1e-3` (gamma), `config.losses.diffloss.semantic = 1e-3` (lambda),
`naturalness = 1`. Both parts are logged apart (`train/loss/diffloss/nat`, `train/loss/diffloss/sem`).

Unlike the official code, whose two UNet forwards both run under `torch.no_grad()` so that neither term
ever reaches the restorer (only its pixel loss trains it), gradients here flow through the frozen UNet
into the restored branch; the target branch is under `stop_gradient` (forward only), and the UNet's
parameters are `aux`, never part of the train state, so they are never updated (no weight gradients are
even computed for them: the backward pass through the UNet is input gradients only).

The diffusion prior is a run directory (`config.losses.diffloss.diffusion_run`; its old name
`config.losses.diffloss.prior` is still accepted, and in configs from `losses.default_config` both keys are
one value): a run of the 'diffusion' task (configs/diffusion_prior.py; its EMA parameters are used) or
converted official weights (`python -m restorejax.convert.adm --out DIR`). Its `config.json` gives the
network and the schedule; its parameters are loaded once, as host arrays, into `aux['diffloss']['params']`
and sharded by the run's `config.sharding.rules` under paths `diffloss/params/...` (`sharding_rules()`
gives ADM's FSDP rules for them). Cost: two UNet forwards and one input-gradient backward per image and t
sample (ADM-256: about 1.1 TFLOPs a forward); `remat` and `dtype='bfloat16'` trade compute and precision
for memory and speed.
"""

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp

from restorejax import checkpoint
from restorejax.diffusion import objectives, schedules
from restorejax.losses.resize import resize
from restorejax.models import adm_unet

NAME = "diffloss"
_RNG_STREAM = 0xD1F  # folded into the step's key: DiffLoss's draws are independent of other terms'
# Options renamed, old name -> new: "prior" meant the diffusion model's run directory, while everywhere
# else a prior is the guide image. Both stay options (old configs and overrides keep working);
# `losses.default_config` makes them one value.
RENAMED_OPTIONS = {"prior": "diffusion_run"}
_KEY = f"config.losses.{NAME}"


def sharding_rules(prefix: str = NAME) -> tuple[tuple[str, Any], ...]:
  """ADM's FSDP rules for the prior's parameters in `aux` (paths `<prefix>/params/...`)."""
  return tuple((rf"^{prefix}/.*{pattern}", spec) for pattern, spec in adm_unet.ADM_SHARDING_RULES)


def _frozen(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return tuple(_frozen(v) for v in value)
  return value


@dataclasses.dataclass(frozen=True)
class DiffusionPrior:
  """What a diffusion run directory's config.json says: the network's fields and the noise schedule."""

  path: str
  fields: tuple[tuple[str, Any], ...]
  schedule: str
  num_steps: int

  def model(self, *, remat: bool = False, dtype: str = "float32") -> adm_unet.ADMUNet:
    return adm_unet.build(dict(self.fields), remat=remat, dtype=dtype)

  @property
  def image_size(self) -> int:
    return dict(self.fields)["image_size"]


_HOW = ("give the run directory of a diffusion prior (train one with configs/diffusion_prior.py, or "
        "convert official weights with python -m restorejax.convert.adm --out DIR)")


def run_directory(diffusion_run: str, prior: str) -> tuple[str, str]:
  """(the diffusion prior's run directory, the config key that named it) from the option and its old
  name; a one-line ValueError when neither is set or they differ."""
  if diffusion_run and prior and diffusion_run != prior:
    raise ValueError(f"{_KEY}.diffusion_run={diffusion_run} and its old name {_KEY}.prior={prior} differ: "
                     "set one of them")
  if diffusion_run:
    return diffusion_run, f"{_KEY}.diffusion_run"
  if prior:
    return prior, f"{_KEY}.prior"
  raise ValueError(f"{_KEY}.diffusion_run is empty (and its old name {_KEY}.prior is empty too): {_HOW}")


@functools.lru_cache(maxsize=16)
def read_prior(path: str, key: str = f"{_KEY}.diffusion_run") -> DiffusionPrior:
  """The diffusion run directory's network and schedule, checked; errors name `key` and the directory."""
  if not path:
    raise ValueError(f"{key} is empty: {_HOW}")
  if not os.path.isdir(path):
    raise ValueError(f"{key}={path}: no such directory")
  try:
    config = checkpoint.read_config(path)
  except ValueError as e:
    raise ValueError(f"{key}={path}: {e}") from None
  if config.get("task") != "diffusion" or "diffusion" not in config:
    raise ValueError(f"{key}={path}: not a diffusion prior (its config.json has task "
                     f"{config.get('task', 'restoration')!r}; expected 'diffusion')")
  fields = {k: _frozen(v) for k, v in config.model.to_dict().items() if k != "name"}
  prior = DiffusionPrior(path, tuple(sorted(fields.items())), config.diffusion.schedule,
                         config.diffusion.num_steps)
  model = prior.model()
  if model.num_classes is not None or model.in_channels != 3 or model.out_channels not in (3, 6):
    raise ValueError(f"{key}={path}: DiffLoss needs an unconditional RGB eps model (num_classes None, "
                     f"in_channels 3, out_channels 3 or 6); this one has {model.num_classes}, "
                     f"{model.in_channels}, {model.out_channels}")
  return prior


def build_aux(*, diffusion_run: str = "", prior: str = "", **unused: Any) -> dict[str, Any]:
  """`aux['diffloss']`: the prior's parameters as host (numpy) float32 arrays, checked against its network."""
  del unused
  path, key = run_directory(diffusion_run, prior)
  spec = read_prior(path, key)
  params = checkpoint.load_params(path)  # a training run's EMA parameters
  like = adm_unet.param_shapes(spec.model())
  return {"params": checkpoint.fit(params, like, f"{key}={path}")}


def diffloss(restored, batch, *, aux, diffusion_run: str = "", naturalness: float = 1.0,
             semantic: float = 1e-3, t_min: int = 0, t_max: int = -1, num_t: int = 1, size: int = 0,
             resize_method: str = "area", remat: bool = False, dtype: str = "float32", prior: str = ""):
  """DiffLoss; returns (naturalness * L_nat + semantic * L_sem, {'nat': L_nat, 'sem': L_sem}).

  Args:
    restored: the restorer's output, NHWC in [0, 1].
    batch: reads `target` (NHWC in [0, 1]).
    aux: `aux['diffloss']['params']` (from `build_aux`) and `aux['rng']`, the step's key.
    diffusion_run: run directory of the diffusion prior (see the module docstring).
    naturalness: weight of L_nat inside the term (the term's `weight` is the paper's gamma).
    semantic: weight of L_sem inside the term (the paper's lambda, 1e-3).
    t_min, t_max: steps drawn uniformly from [t_min, t_max] (t_max -1: the prior's last step).
    num_t: independent (t, eps) draws per image, averaged.
    size: resolution the prior sees (shorter side); 0: the prior's own image_size.
    resize_method: 'area' (integer factors), 'bilinear' or 'none' (feed images at their own size).
    remat: recompute the UNet's activations in the backward pass (memory for compute).
    dtype: the UNet's compute dtype, 'float32' or 'bfloat16' (parameters stay float32).
    prior: the old name of `diffusion_run`, still accepted.
  """
  spec = read_prior(*run_directory(diffusion_run, prior))
  if not aux or NAME not in aux or "rng" not in aux:
    raise ValueError(f"config.losses.{NAME}: the loss needs its aux inputs (build it with losses.build)")
  last = spec.num_steps - 1
  hi = last if t_max < 0 else t_max
  if not 0 <= t_min <= hi <= last:
    raise ValueError(f"config.losses.{NAME}: t_min={t_min}, t_max={t_max} must satisfy "
                     f"0 <= t_min <= t_max <= {last} (or t_max -1)")
  if num_t < 1:
    raise ValueError(f"config.losses.{NAME}.num_t must be at least 1, got {num_t}")
  model = spec.model(remat=remat, dtype=dtype)
  schedule = schedules.make(spec.schedule, spec.num_steps)
  params = jax.lax.stop_gradient(aux[NAME]["params"])
  side = size or spec.image_size

  z = 2.0 * resize(restored.astype(jnp.float32), side, resize_method) - 1.0
  x = jax.lax.stop_gradient(2.0 * resize(batch["target"].astype(jnp.float32), side, resize_method) - 1.0)
  if num_t > 1:
    z, x = jnp.repeat(z, num_t, axis=0), jnp.repeat(x, num_t, axis=0)
  key_t, key_eps = jax.random.split(jax.random.fold_in(aux["rng"], _RNG_STREAM))
  i = jax.random.randint(key_t, (z.shape[0],), t_min, hi + 1)
  eps = jax.random.normal(key_eps, z.shape, jnp.float32)
  t = schedule.model_t[i]

  out_x, h_x = jax.lax.stop_gradient(model.apply({"params": params}, objectives.q_sample_step(x, i, eps, schedule), t))
  out_z, h_z = model.apply({"params": params}, objectives.q_sample_step(z, i, eps, schedule), t)
  nat = jnp.mean(jnp.square(out_z[..., :3] - out_x[..., :3]))
  sem = jnp.mean(jnp.square(h_z - h_x))
  return naturalness * nat + semantic * sem, {"nat": nat, "sem": sem}
