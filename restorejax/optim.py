"""The optimizer from `config.optim`: AdamW (or Adam) with warmup + cosine, clipping and accumulation."""

import ml_collections
import optax


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": "adamw",           # 'adamw' or 'adam'
      "lr": 1e-3,                # peak learning rate
      "schedule": "cosine",      # 'cosine' (to min_lr at total_steps) or 'constant'
      "warmup_steps": 100,
      "min_lr": 1e-7,
      "b1": 0.9,
      "b2": 0.9,                 # NAFNet's betas
      "eps": 1e-8,
      "weight_decay": 0.0,
      "grad_clip_norm": 1.0,     # global-norm clipping; 0 turns it off (NAFNet/Restormer use 0.01)
      "accumulate_steps": 1,     # gradient accumulation: one update every k steps
      "ema_decay": 0.999,        # EMA of the parameters (warmed up: min(decay, (1+t)/(10+t))), for eval
  })


def schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Learning rate per optimizer update (updates = total_steps // accumulate_steps)."""
  updates = max(total_steps // cfg.accumulate_steps, 1)
  warmup = min(cfg.warmup_steps, updates)
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(updates, warmup + 1), end_value=cfg.min_lr)
  if cfg.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, max(warmup, 1)), optax.constant_schedule(cfg.lr)], [warmup])
  raise ValueError(f"config.optim.schedule: unknown schedule {cfg.schedule!r} (known: cosine, constant)")


def build(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                     optax.Schedule]:
  lr = schedule(cfg, total_steps)
  if cfg.name == "adamw":
    opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  elif cfg.name == "adam":
    opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  else:
    raise ValueError(f"config.optim.name: unknown optimizer {cfg.name!r} (known: adamw, adam)")
  if cfg.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
  if cfg.accumulate_steps > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=cfg.accumulate_steps)
  return opt, lr
