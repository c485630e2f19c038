"""Diffusion: an unconditional DDPM (eps-prediction ADM UNet) on the targets of any dataset.

The prior that DiffLoss (`restorejax.losses.diffloss`) loads is the run directory of such a run. The
batch's `target` ([0, 1]) is mapped to [-1, 1] (after an optional resize to `config.diffusion.image_size`,
the resolution the prior will see restored images at), noised at a uniformly drawn step, and the UNet
(`config.model`, name 'adm_unet') predicts the noise: L2 on eps (`config.diffusion.loss`), plus improved
DDPM's one-step bound on the variance channels when the network learns sigma (6 output channels), i.e.
guided-diffusion's hybrid loss. Logged terms: `train/loss/eps` and, with learned sigma, `train/loss/vb`.

Evaluation (EMA parameters): `eval/loss`, the eps-loss on the held-out targets at a fixed step and fixed
noise per image (seeded, so successive evaluations are comparable), and `eval/samples`, a grid of DDIM
samples from fixed starting noise. The trainer writes the final grid to `<workdir>/samples.png`.

`config.diffusion`: schedule ('linear' | 'cosine'), num_steps, loss ('l2' | 'l1'), vb_weight,
image_size (0: the patch size), resize ('area' | 'bilinear'), sample_count, sample_steps, sample_eta.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from restorejax import models, sharding
from restorejax.data import batches, pipeline
from restorejax.diffusion import objectives, samplers, schedules
from restorejax.diffusion.run_config import default_config, prior_config  # noqa: F401 (config.diffusion)
from restorejax.losses.resize import resize
from restorejax.tasks import protocol


def image_size(config: ml_collections.ConfigDict) -> int:
  return config.diffusion.image_size or config.data.patch_size


class Diffusion:
  """The 'diffusion' task (a `tasks.Task`)."""

  def __init__(self, config: ml_collections.ConfigDict):
    if config.model.get("name") != "adm_unet":
      raise ValueError(f"config.model.name: the diffusion task trains 'adm_unet', not {config.model.get('name')!r}")
    self.config = config
    self.model = models.build(config.model)
    if self.model.num_classes is not None:
      raise ValueError("config.model.num_classes: the diffusion task trains unconditional models; set it to None")
    d = config.diffusion
    self.schedule = schedules.make(d.schedule, d.num_steps)
    objectives.eps_loss(jnp.zeros(1), jnp.zeros(1), d.loss)  # an unknown loss name fails here, not in jit
    self.size = image_size(config)
    self.aux = {}

  def prepare(self, target: jnp.ndarray) -> jnp.ndarray:
    """Targets in [0, 1] at any size -> model inputs in [-1, 1] at the training resolution."""
    x = resize(target.astype(jnp.float32), self.size, self.config.diffusion.resize)
    return 2.0 * x - 1.0

  def init_params(self, rng: jax.Array) -> Any:
    x = jnp.zeros((1, self.size, self.size, self.model.in_channels), jnp.float32)
    return self.model.init(rng, x, jnp.zeros((1,)))["params"]

  def loss(self, params, batch, rng, aux):
    del aux
    d = self.config.diffusion
    key_loss, key_dropout = jax.random.split(rng)
    train = self.model.dropout > 0

    def eps_fn(x_t, t):
      out, _ = self.model.apply({"params": params}, x_t, t, train=train, rngs={"dropout": key_dropout})
      return out

    total, parts = objectives.diffusion_loss(eps_fn, key_loss, self.prepare(batch["target"]), self.schedule,
                                             loss=d.loss, vb_weight=d.vb_weight)
    terms = {"eps": parts["eps"].mean()}
    if "vb" in parts:
      terms["vb"] = parts["vb"].mean()
    return total, terms

  def evaluator(self, mesh, batch_sharding) -> protocol.Evaluator:
    return HeldOutEvaluator(self, mesh, batch_sharding)


def _centre_crop(images: np.ndarray, size: int) -> np.ndarray:
  h, w = images.shape[1:3]
  if h < size or w < size:
    return images
  y, x = (h - size) // 2, (w - size) // 2
  return images[:, y:y + size, x:x + size]


def sample_grid(samples: np.ndarray) -> np.ndarray:
  """(N, H, W, 3) in [0, 1] -> one (1, rows*H, cols*W, 3) uint8 grid, as square as N allows."""
  n, h, w, c = samples.shape
  cols = int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  pad = np.zeros((rows * cols - n, h, w, c), samples.dtype)
  tiles = np.concatenate([samples, pad]).reshape(rows, cols, h, w, c)
  grid = tiles.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)
  return (np.clip(grid, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)[None]


class HeldOutEvaluator:
  """Held-out eps-loss at fixed (seeded) steps and noise, and DDIM samples from fixed noise."""

  def __init__(self, task: Diffusion, mesh, batch_sharding):
    config, model, schedule = task.config, task.model, task.schedule
    d = config.diffusion
    key = batches.data_key(config, "eval")
    examples = pipeline.eval_examples(config)
    targets = _centre_crop(examples["target"], config.data.patch_size)
    n = len(targets)
    bs = config.eval.batch_size
    pad = -n % bs
    index = np.arange(n + pad) % n
    chunks = {"target": targets[index], "index": index.astype(np.int64), "mask": np.arange(n + pad) < n}

    def eval_loss(params, batch):
      keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(batch["index"])
      x0 = task.prepare(batch["target"].astype(jnp.float32) / 255.0)
      i = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 0), (), 0, schedule.num_steps))(keys)
      noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), x0.shape[1:]))(keys)
      x_t = objectives.q_sample_step(x0, i, noise, schedule)
      out, _ = model.apply({"params": params}, x_t, schedule.model_t[i])
      eps, _ = samplers.split_output(out, x0.shape[-1])
      return objectives.eps_loss(eps, noise, d.loss)

    self.batches = [sharding.replicated_to_global({k: v[s:s + bs] for k, v in chunks.items()}, batch_sharding)
                    for s in range(0, n + pad, bs)]
    self.loss_step = jax.jit(eval_loss, out_shardings=batch_sharding)

    spaced = schedules.respace(schedules.beta_schedule(d.schedule, d.num_steps),
                               schedules.space_timesteps(d.num_steps, str(d.sample_steps)))
    shape = (d.sample_count, task.size, task.size, model.in_channels)

    def sample(params):  # the same starting noise at every evaluation: progress is visible
      eps_fn = lambda x, t: model.apply({"params": params}, x, t)[0]
      x0 = samplers.ddim_sample(eps_fn, jax.random.fold_in(key, 2), shape, spaced, eta=d.sample_eta)
      return (x0 + 1.0) / 2.0

    self.sample = jax.jit(sample, out_shardings=sharding.replicated(mesh))

  def __call__(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    losses, masks = [], []
    for batch in self.batches:
      losses.append(sharding.to_host(self.loss_step(params, batch)))
      masks.append(sharding.to_host(batch["mask"]))
    loss = float(np.mean(np.concatenate(losses)[np.concatenate(masks)]))
    samples = sharding.to_host(self.sample(params))
    return {"eval/loss": loss}, {"eval/samples": sample_grid(samples)}
