"""Registration fusion ('align'): undo a prior's global misalignment by image registration, then concat it.

A simulated or generated prior (restorejax/data/priors.py) is the scene seen from a slightly different
view: rescaled, rotated, shifted, stretched, with a little perspective, and re-toned. That is one global
homography plus a photometric change, so instead of learning a correspondence ('match') this mode
estimates the homography per example by classical registration and resamples the prior's pixels by it:

1. `register`: ECC (Evangelidis & Psarakis, "Parametric image alignment using enhanced correlation
   coefficient maximization", TPAMI 2008). Both images are reduced to luminance, blurred and brought to
   zero mean and unit spread over the overlapping pixels, so any gain and offset of the prior's tone
   costs nothing, and the blur suppresses the input's noise and the prior's invented fine texture. Gauss-
   Newton steps of the forward-compositional homography update maximise their correlation coefficient,
   with ECC's closed-form scale (lambda) that keeps the step from trading contrast for geometry; coarse to
   fine over a pyramid (the coarsest at least `MIN_SIDE` pixels a side), a fixed number of iterations per
   level, no learned parameters, in float32 under `stop_gradient`. The result is kept only if it raises
   the correlation at the finest level over the identity's by `MIN_GAIN` (noise alone wins less) and moves no corner by more than half the
   image, so an aligned prior stays where it is.
2. `warp`: the prior's pixels (every channel) resampled by the homography (bilinear, border-clamped), with
   the in-bounds mask and the final correlation coefficient as two extra planes.
3. `Inject`, at the network's first fusion hook (where 'sft' first modulates): [warped prior, in-bounds,
   correlation] -> 3x3 conv -> LeakyReLU -> zero-initialised 3x3 conv, added to the backbone features and
   multiplied by `present`. Like 'concat', the prior's aligned pixels reach the network at full
   resolution, where copying them is a short linear path; unlike 'concat', the first conv is the
   backbone's own, and the added branch starts at zero, so an initialised network computes its backbone
   exactly and an example without a prior computes its backbone always.

Video restoration aligns neighbouring frames the same way before fusing them (EDVR's pyramid alignment,
BasicVSR++'s flow-guided alignment), with learned offsets because their motion is local; reference-based
SR (TTSR) matches patches because its reference is another photo. A generative prior's misalignment is
mostly a global view change, which a homography fits with eight numbers from the whole image. What it
cannot fix is the content: invented texture and relighting stay (RESULTS.md, "Registration fusion").
Parameters: `fusion_align_inject` only.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from restorejax.models.torch_compat import TORCH_INIT, leaky_relu

MIN_SIDE = 16          # the coarsest pyramid level is at least this many pixels a side
MAX_LEVELS = 3         # pyramid levels (1, 1/2, 1/4 of the input)
ITERATIONS = (20, 10, 5)  # Gauss-Newton steps per level, coarsest first (the last entries for fewer levels)
BLUR_SIGMA = 1.0       # Gaussian blur (in the level's pixels) of both luminance images at every level
DAMPING = 1e-4         # Levenberg-Marquardt damping, relative to the mean diagonal of the normal matrix
MAX_CORNER_MOVE = 0.5  # in half-sides: a homography that moves a corner further is rejected
MIN_GAIN = 2e-3        # the correlation gain over the identity a registration needs to be kept

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def luminance(x: jnp.ndarray) -> jnp.ndarray:
  """(H, W, C) -> (H, W): Rec. 601 luma for 3 channels, the channel mean otherwise."""
  x = x.astype(jnp.float32)
  return x @ jnp.asarray(_LUMA) if x.shape[-1] == 3 else jnp.mean(x, axis=-1)


def blur(x: jnp.ndarray, sigma: float) -> jnp.ndarray:
  """Separable Gaussian blur of an (H, W) image, edge-padded."""
  r = max(1, int(np.ceil(3 * sigma)))
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  k = jnp.asarray(k / k.sum(), jnp.float32)
  x = jnp.pad(x, r, mode="edge")
  x = jax.vmap(lambda row: jnp.convolve(row, k, mode="valid"))(x)
  return jax.vmap(lambda col: jnp.convolve(col, k, mode="valid"), in_axes=1, out_axes=1)(x)


def grid(h: int, w: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Pixel centres in normalised coordinates ((i + 0.5) / n * 2 - 1): every pyramid level shares them."""
  ys = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
  xs = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
  y, x = np.meshgrid(ys, xs, indexing="ij")
  return jnp.asarray(x), jnp.asarray(y)


def apply(m: jnp.ndarray, x: jnp.ndarray, y: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The homography `m` (3x3, normalised coordinates) applied to points (x, y)."""
  d = m[2, 0] * x + m[2, 1] * y + m[2, 2]
  d = jnp.where(jnp.abs(d) < 1e-6, 1e-6, d)
  return (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / d, (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / d


def sample(img: jnp.ndarray, x: jnp.ndarray, y: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Bilinear samples of `img` (H, W, ...) at normalised (x, y), border-clamped, and the in-bounds mask."""
  h, w = img.shape[:2]
  px, py = (x + 1) / 2 * w - 0.5, (y + 1) / 2 * h - 0.5
  valid = (px >= -0.5) & (px <= w - 0.5) & (py >= -0.5) & (py <= h - 0.5)
  px, py = jnp.clip(px, 0, w - 1), jnp.clip(py, 0, h - 1)
  x0, y0 = jnp.floor(px), jnp.floor(py)
  wx, wy = px - x0, py - y0
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
  if img.ndim == 3:
    wx, wy = wx[..., None], wy[..., None]
  out = (img[y0, x0] * (1 - wy) * (1 - wx) + img[y0, x1] * (1 - wy) * wx
         + img[y1, x0] * wy * (1 - wx) + img[y1, x1] * wy * wx)
  return out, valid


def levels(h: int, w: int) -> int:
  """Pyramid levels for an h x w image: halving while the coarsest side stays >= `MIN_SIDE`."""
  n = 1
  while n < MAX_LEVELS and min(h, w) // 2 ** n >= MIN_SIDE:
    n += 1
  return n


def _zero_mean(a: jnp.ndarray, wgt: jnp.ndarray, n: jnp.ndarray) -> jnp.ndarray:
  axes = tuple(range(a.ndim - wgt.ndim, a.ndim))
  return (a - jnp.sum(a * wgt, axis=axes, keepdims=True) / n) * wgt


def correlation(t: jnp.ndarray, i: jnp.ndarray, wgt: jnp.ndarray) -> jnp.ndarray:
  """The correlation coefficient of two (H, W) images over the pixels where `wgt` is 1."""
  n = jnp.maximum(jnp.sum(wgt), 1.0)
  tz, iz = _zero_mean(t, wgt, n), _zero_mean(i, wgt, n)
  return jnp.sum(tz * iz) / jnp.sqrt(jnp.sum(tz * tz) * jnp.sum(iz * iz) + 1e-12)


def _ecc_step(m: jnp.ndarray, t: jnp.ndarray, img: jnp.ndarray) -> jnp.ndarray:
  """One ECC Gauss-Newton step: the homography `m` composed with the increment that best raises the
  correlation of `img` warped by it with the template `t` (both (h, w) at one level)."""
  h, w = t.shape
  x, y = grid(h, w)
  xw, yw = apply(m, x, y)
  iw, valid = sample(img, xw, yw)
  wgt = valid.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(wgt), 1.0)
  # Gradients of the warped image in normalised units; Jacobian of the increment at the identity.
  gy, gx = jnp.gradient(iw)
  gx, gy = gx * (w / 2), gy * (h / 2)
  r = gx * x + gy * y
  jac = jnp.stack([gx * x, gx * y, gx, gy * x, gy * y, gy, -r * x, -r * y])  # (8, h, w)
  tz, iz, jz = _zero_mean(t, wgt, n), _zero_mean(iw, wgt, n), _zero_mean(jac, wgt, n)
  g = jz.reshape(8, -1)
  hess = g @ g.T
  hess = hess + DAMPING * jnp.trace(hess) / 8 * jnp.eye(8) + 1e-9 * jnp.eye(8)
  gi, gt = g @ iz.reshape(-1), g @ tz.reshape(-1)
  hi, ht = jnp.linalg.solve(hess, gi), jnp.linalg.solve(hess, gt)
  num = jnp.sum(iz * iz) - gi @ hi
  den = jnp.sum(tz * iz) - gt @ hi
  fallback = jnp.sqrt(jnp.sum(iz * iz) / (jnp.sum(tz * tz) + 1e-12))
  lam = jnp.where(den > 1e-9, num / jnp.where(den > 1e-9, den, 1.0), fallback)
  dp = lam * ht - hi
  step = jnp.array([[1 + dp[0], dp[1], dp[2]], [dp[3], 1 + dp[4], dp[5]], [dp[6], dp[7], 1.0]])
  new = m @ step
  new = new / new[2, 2]
  return jnp.where(jnp.all(jnp.isfinite(new)), new, m)


def _pyramid(x: jnp.ndarray, n: int) -> list[jnp.ndarray]:
  """Blurred luminance at 1/2**l for l = n-1 .. 0 (coarsest first)."""
  h, w = x.shape
  out = []
  for level in reversed(range(n)):
    f = 2 ** level
    y = x if f == 1 else jax.image.resize(x, (h // f, w // f), "linear", antialias=True)
    out.append(blur(y, BLUR_SIGMA))
  return out


def register(degraded: jnp.ndarray, prior: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(homography (3, 3), correlation ()) mapping one example's degraded image (H, W, C) onto its prior.

  The homography maps normalised output coordinates (the degraded image's grid) to the prior's
  (`apply`); the identity when registration does not raise the correlation (module doc).
  """
  h, w = degraded.shape[:2]
  n = levels(h, w)
  ts, ps = _pyramid(luminance(degraded), n), _pyramid(luminance(prior), n)
  iters = ITERATIONS[-n:]
  m = jnp.eye(3, dtype=jnp.float32)
  for t, p, k in zip(ts, ps, iters):
    m = jax.lax.fori_loop(0, k, lambda _, m, t=t, p=p: _ecc_step(m, t, p), m)
  x, y = grid(*ts[-1].shape)

  def score(m):
    iw, valid = sample(ps[-1], *apply(m, x, y))
    return correlation(ts[-1], iw, valid.astype(jnp.float32))

  eye = jnp.eye(3, dtype=jnp.float32)
  cx, cy = apply(m, jnp.array([-1.0, 1.0, -1.0, 1.0]), jnp.array([-1.0, -1.0, 1.0, 1.0]))
  move = jnp.max(jnp.abs(jnp.stack([cx - jnp.array([-1.0, 1.0, -1.0, 1.0]),
                                    cy - jnp.array([-1.0, -1.0, 1.0, 1.0])])))
  rho, rho0 = score(m), score(eye)
  keep = (rho > rho0 + MIN_GAIN) & (move <= MAX_CORNER_MOVE) & jnp.isfinite(rho)
  return jnp.where(keep, m, eye), jnp.where(keep, rho, rho0)


def align(degraded: jnp.ndarray, prior: jnp.ndarray) -> jnp.ndarray:
  """(B, H, W, C) degraded and prior on one grid -> (B, H, W, C + 2): [prior registered onto the
  degraded image, in-bounds mask, correlation coefficient], float32, with no gradient."""
  degraded = jax.lax.stop_gradient(degraded.astype(jnp.float32))
  prior = jax.lax.stop_gradient(prior.astype(jnp.float32))
  h, w = degraded.shape[1:3]
  x, y = grid(h, w)

  def one(d, p):
    m, rho = register(d, p)
    warped, valid = sample(p, *apply(m, x, y))
    return jnp.concatenate([warped, valid[..., None].astype(jnp.float32),
                            jnp.broadcast_to(rho, (h, w, 1))], axis=-1)

  return jax.lax.stop_gradient(jax.vmap(one)(degraded, prior))


class Inject(nn.Module):
  """`x + present * out(leaky(conv0(aligned)))`: the registered prior added to backbone features `x`;
  `out` (3x3) starts at zero, so the layer starts as the identity."""

  width: int = 16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, aligned: jnp.ndarray, present: jnp.ndarray) -> jnp.ndarray:
    b, h, w, c = x.shape
    if aligned.shape[1:3] != (h, w):  # a deeper first hook (pixel-unshuffled trunks): average-pool to it
      f = aligned.shape[1] // h
      aligned = aligned.reshape(b, h, f, w, f, -1).mean(axis=(2, 4))
    conv = lambda f, name, init=TORCH_INIT: nn.Conv(f, (3, 3), padding=1, dtype=self.dtype,
                                                    kernel_init=init, name=name)
    hidden = leaky_relu(conv(self.width, "conv0")(aligned.astype(self.dtype)), 0.2)
    delta = conv(c, "out", nn.initializers.zeros)(hidden)
    return x.astype(self.dtype) + jnp.where(present[:, None, None, None], delta, 0).astype(self.dtype)
