"""Simulated generative priors: misaligned, re-toned, re-textured versions of a target image.

A GPT-4o "restoration" looks clean but is not pixel-faithful: the aspect ratio and viewpoint move, objects
shift, the global tone can change completely (night comes back as day), fine texture is invented. These
functions make such priors from a ground-truth image so that prior-aware networks can be trained and tested
without the generator. All are pure functions of one HWC image in [0, 1], deterministic from a key, with
fixed shapes and traced parameters (jit / vmap friendly).

`simulate_prior(key, target, severity)` composes them; `severity` in [0, 1] scales every random draw
(0 is the identity). The same key gives the same draws at every severity, only their magnitude changes.
At severity 1: scale +-15 %, rotation +-8 deg, shift +-8 % of the side, perspective corners +-6 %, aspect
+-35 %, a copied patch moved by up to 25 % of the side, exposure +-0.6 EV, white balance +-20 %, gamma and
saturation x/÷ e^0.3 / e^0.5, a global relight toward a random mean brightness (from severity 0.5 up),
and most fine detail replaced by band-passed noise.
"""

import jax
import jax.numpy as jnp
import numpy as np

from restorejax.data import degrade

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # numpy: a constant however the module is first imported


def warp(image: jnp.ndarray, matrix: jnp.ndarray, *, mode: str = "reflect") -> jnp.ndarray:
  """Resamples by a 3x3 homography mapping output (x, y, 1) pixel coordinates to input ones (bilinear).

  `mode` is how samples outside the image are filled (`jax.scipy.ndimage.map_coordinates` modes;
  'reflect' mirrors about the edge, so a warped prior shows plausible content rather than black).
  """
  h, w, _ = image.shape
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  p = jnp.stack([xs, ys, jnp.ones_like(xs)], axis=-1) @ matrix.T.astype(jnp.float32)
  sx, sy = p[..., 0] / p[..., 2], p[..., 1] / p[..., 2]
  channel = lambda c: jax.scipy.ndimage.map_coordinates(c, [sy, sx], order=1, mode=mode)
  return jnp.stack([channel(image[..., i]) for i in range(image.shape[-1])], axis=-1).astype(image.dtype)


def _about_centre(hw, m):
  """Conjugates a 3x3 map acting on centred coordinates to one acting on pixel coordinates."""
  cy, cx = (hw[0] - 1) / 2.0, (hw[1] - 1) / 2.0
  t = jnp.array([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
  t_inv = jnp.array([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
  return t @ m @ t_inv


def homography(hw, *, scale=1.0, angle=0.0, shift=(0.0, 0.0), perspective=(0.0, 0.0), aspect=1.0):
  """The output->input map of a view change about the image centre (all parameters traced).

  `scale` > 1 zooms in, `angle` in degrees, `shift` (dy, dx) in pixels, `perspective` (py, px) moves the
  far corners by about that fraction of the side, `aspect` > 1 stretches the content horizontally.
  """
  h, w = hw
  a = jnp.deg2rad(angle)
  c, s = jnp.cos(a), jnp.sin(a)
  sx, sy = scale * jnp.sqrt(aspect), scale / jnp.sqrt(aspect)
  # forward map (input -> output) in centred coordinates, inverted at the end
  fwd = jnp.array([[c * sx, -s * sy, shift[1]], [s * sx, c * sy, shift[0]],
                   [perspective[1] * 2.0 / w, perspective[0] * 2.0 / h, 1.0]])
  return _about_centre(hw, jnp.linalg.inv(fwd))


def aspect_change(image: jnp.ndarray, ratio) -> jnp.ndarray:
  """Stretches the content by `ratio` (width over height, about the centre), cropped/padded back."""
  return warp(image, homography(image.shape[:2], aspect=ratio))


def tone_shift(image: jnp.ndarray, *, exposure=0.0, white_balance=(1.0, 1.0, 1.0), gamma=1.0,
               saturation=1.0) -> jnp.ndarray:
  """Global colour change: exposure (EV), per-channel gains, gamma, saturation (1 = unchanged)."""
  x = image * (2.0 ** exposure) * jnp.asarray(white_balance, image.dtype)
  x = jnp.clip(x, 0.0, 1.0) ** gamma
  y = (x @ _LUMA.astype(x.dtype))[..., None]
  return jnp.clip(y + saturation * (x - y), 0.0, 1.0)


def relight(image: jnp.ndarray, target_mean, amount) -> jnp.ndarray:
  """A night->day style global change: a gamma moving mean luminance toward `target_mean` by `amount`."""
  mean = jnp.clip(jnp.mean(image @ _LUMA.astype(image.dtype)), 1e-3, 1 - 1e-3)
  full = jnp.log(target_mean) / jnp.log(mean)
  return jnp.clip(image, 0.0, 1.0) ** (full ** amount)


def hallucinate_texture(key: jax.Array, image: jnp.ndarray, amount) -> jnp.ndarray:
  """Replaces a fraction `amount` of the fine detail by band-passed noise of the same local strength.

  Detail = image - Gaussian(1.5 px). The noise is luminance-only, band-passed between Gaussians of 1
  and 2.5 px, scaled to the local detail energy, so that flat regions stay flat and textured ones get new,
  unrelated texture.
  """
  base = degrade.gaussian_blur(image, 1.5)
  detail = image - base
  n = jax.random.normal(key, image.shape[:2] + (1,), image.dtype)
  band = degrade.gaussian_blur(n, 1.0) - degrade.gaussian_blur(n, 2.5)
  band = band / jnp.maximum(jnp.std(band), 1e-6)
  energy = jnp.sqrt(degrade.gaussian_blur(jnp.mean(detail ** 2, -1, keepdims=True), 3.0) + 1e-8)
  return jnp.clip(base + (1.0 - amount) * detail + amount * band * energy, 0.0, 1.0)


def displace_patch(image: jnp.ndarray, centre, size, shift) -> jnp.ndarray:
  """Copies the box of `size` (h, w) px at `centre` (y, x) to `centre + shift`, soft-edged (copy-move).

  The source region is left in place, as a generator that moves an object leaves plausible content
  behind; all arguments may be traced (fractional positions are bilinearly resampled).
  """
  h, w, _ = image.shape
  ys = jnp.arange(h, dtype=jnp.float32)[:, None]
  xs = jnp.arange(w, dtype=jnp.float32)[None, :]
  dst_y, dst_x = centre[0] + shift[0], centre[1] + shift[1]
  box = lambda d, half: jnp.clip(half + 0.5 - jnp.abs(d), 0.0, 1.0)
  mask = (box(ys - dst_y, size[0] / 2) * box(xs - dst_x, size[1] / 2))[..., None]
  moved = warp(image, jnp.array([[1.0, 0.0, -shift[1]], [0.0, 1.0, -shift[0]], [0.0, 0.0, 1.0]]))
  return image * (1.0 - mask) + moved * mask


def simulate_prior(key: jax.Array, target: jnp.ndarray, severity, *, displace: bool = True,
                   geometry: bool = True) -> jnp.ndarray:
  """A simulated generative prior of `target` (HWC in [0, 1]); `severity` in [0, 1], 0 = identity.

  Order: object displacement (in the scene), one resample for view + aspect change, global tone (and a
  relight from severity 0.5 up), then texture on the final grid. `geometry=False` skips the displacement
  and the view change (the prior then differs from the target in tone and texture only); the random draws
  are the same either way, so the tone and texture match those of the misaligned prior of the same key.
  """
  h, w, _ = target.shape
  s = jnp.clip(jnp.asarray(severity, jnp.float32), 0.0, 1.0)
  k_u, k_tex = jax.random.split(key)
  u = jax.random.uniform(k_u, (20,), minval=-1.0, maxval=1.0)  # one draw for every scalar
  side = jnp.float32(min(h, w))
  x = target
  if displace and geometry:
    size = (0.15 + 0.1 * u[0]) * jnp.array([h, w], jnp.float32)
    centre = jnp.array([h, w], jnp.float32) * (0.5 + 0.3 * u[1:3])
    x = displace_patch(x, centre, size, 0.25 * s * side * u[3:5])
  m = homography((h, w), scale=jnp.exp(0.15 * s * u[5]), angle=8.0 * s * u[6],
                 shift=0.08 * s * u[7:9] * jnp.array([h, w], jnp.float32),
                 perspective=0.06 * s * u[9:11], aspect=jnp.exp(0.3 * s * u[11]))
  if geometry:
    x = warp(x, m)
  x = tone_shift(x, exposure=0.6 * s * u[12], white_balance=jnp.exp(0.2 * s * u[13:16]),
                 gamma=jnp.exp(0.3 * s * u[16]), saturation=jnp.exp(0.5 * s * u[17]))
  x = relight(x, 0.475 + 0.125 * u[18], jnp.clip(2.0 * s - 1.0, 0.0, 1.0))
  return hallucinate_texture(k_tex, x, s * (0.7 + 0.3 * u[19])).astype(target.dtype)
