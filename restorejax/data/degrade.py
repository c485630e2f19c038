"""Degradations in JAX, run on the accelerator with fixed shapes.

Each degradation is a pure function of one HWC float image in [0, 1] (and a key where it is random);
`jax.vmap` makes it per-example. Parameters are traced values, so one compiled step covers every sampled
strength. Noise strengths are on the 0..255 scale, as papers quote them (sigma 25 = 25/255).

Conventions of the individual degradations:
- `gaussian_blur`: isotropic Gaussian, `sigma` in pixels, odd `kernel_size` <= 21 (traced), reflect-101
  borders (cv2 / BasicSR `filter2D`).
- `gaussian_noise`: additive, `sigma` on 0..255, not clipped.
- `poisson_noise`: shot noise with `peak` = expected photon count at intensity 1.0, i.e.
  `Poisson(x * peak) / peak`, variance `x / peak` (Real-ESRGAN's `scale` s on an 8-bit image is about
  peak = 256 / s^2).
- `jpeg`: libjpeg-compatible round trip, 4:2:0 chroma, quality 1..100 traced (see `restorejax.data.jpeg`).
- `bicubic_downup`: MATLAB `imresize` bicubic (a = -0.5, antialiased) down by an integer factor and
  back up (see `restorejax.data.matlab_resize`); the factor is traced among a static set.
- `bicubic_downsample`: MATLAB `imresize(x, 1/scale, 'bicubic')` (antialiased), the low-resolution
  input of super-resolution; the image's sides must be multiples of the static `scale`.
- `rain`: MiOIR's recipe: sparse seeds (per-pixel probability `density` / 25600, as MiOIR thresholds
  uniform 0..256 noise at 256 - density / 100) convolved with a line of `length` pixels at `angle`
  degrees counter-clockwise from vertical, widened by the Gaussian that OpenCV uses for a `width` x
  `width` blur; the layer is min-max normalised to [0, 1] and added (clipped) or screen-blended.
- `haze`: `I = J t + A (1 - t)`, `t = exp(-beta depth)`. MiOIR uses estimated depth maps; here the depth
  is a proxy (`depth_field`): a smooth random field plus a top-far vertical ramp, in [0.1, 1].
- `low_light`: MiOIR's darkening `x ** gamma` (gamma 1..4). `mixed`'s lowlight op then adds Gaussian
  noise of sigma in `lowlight_noise` (0..255 scale), zero by default because MiOIR adds none.

`mixed` composes 1..`max_ops` of these in the fixed order of `OPS` with the training or harder-test
ranges of MiOIR (`RANGES`) and returns the degraded image and a task id: bit i of the id is set when
`OPS[i]` was applied (blur + noise = 2**3 + 2**6 = 72). `task_name(id)` turns it into "blur+noise".

`from_config(cfg, scale)` turns a `config.data.degrade` block into `fn(key, image) -> degraded`, the one
entry point the trainer uses; `from_config_with_task(cfg, scale)` gives `fn(key, image) -> (degraded,
task_id)`. `scale` is `config.data.scale`: with scale > 1 (super-resolution) the recipe must take a
`scale` option (the 'sr' recipe) and returns an image `scale` times smaller.

Super-resolution (`sr`, `super_resolution`): the high-resolution patch is cropped on the host and the
low-resolution input made here, in one of two orders (every step optional but the downsampling; each
step's output rounded to 8 bits like the other recipes):
- 'classical' (the SR papers' `y = (x * k)|s + n`, then JPEG): Gaussian blur -> bicubic downsample by
  `scale` -> Gaussian noise -> JPEG. With no blur, noise or JPEG it is plain bicubic SR (BasicSR's
  DIV2K `x2`/`x4` LR images).
- 'realworld' (Real-ESRGAN's second-order model, at fixed shapes): blur -> downsample -> noise -> JPEG,
  then a second round at the low resolution: blur -> noise -> JPEG, with the same ranges.

Cost under `jax.vmap`: every enabled op of `mixed` runs for every example (masked selects), so a batch
pays for all of them. The dearest by far is Poisson sampling (`jax.random.poisson`'s rejection loop:
on CPU ~100x Gaussian noise); then rain (FFTs of the padded image) and bicubic down-up (dense H x H
matmuls per axis); the rest are a few elementwise passes or small matmuls.
"""

import inspect
import math
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from restorejax.data import matlab_resize
from restorejax.data.jpeg import jpeg  # noqa: F401  (public here: degrade.jpeg)

MAX_KERNEL = 21
RAIN_KERNEL = 49  # taps of the rain streak kernel: a 40-pixel streak plus the width blur of 11
MAX_RAIN_LENGTH = 40

# The order degradations are applied in, and bit i of a task id.
OPS = ("haze", "rain", "lowlight", "blur", "downup", "poisson", "noise", "jpeg")

# Integer ranges are inclusive; blur_kernel and rain_width take odd values only; poisson_peak is sampled
# log-uniformly; downup_factors is a set of choices. MiOIR (Kong et al.) training / harder-test ranges,
# except poisson_peak (ours: MiOIR has no Poisson noise) and lowlight_noise (MiOIR adds none).
RANGES = {
    "train": {
        "haze_airlight": (0.8, 1.0), "haze_beta": (0.5, 2.5),
        "rain_density": (50, 100), "rain_width": (3, 11), "rain_length": (20, 40),
        "rain_angle": (-45.0, 45.0),
        "lowlight_gamma": (1.0, 3.0), "lowlight_noise": (0.0, 0.0),
        "blur_kernel": (7, 21), "blur_sigma": (1.0, 3.0),
        "downup_factors": (4,),
        "poisson_peak": (20.0, 200.0),
        "noise_sigma": (15.0, 50.0),
        "jpeg_quality": (30, 70),
    },
}
RANGES["harder"] = dict(
    RANGES["train"], haze_beta=(2.5, 3.0), rain_density=(100, 150), lowlight_gamma=(3.0, 4.0),
    blur_sigma=(3.0, 5.0), poisson_peak=(5.0, 20.0), noise_sigma=(50.0, 70.0), jpeg_quality=(10, 30))


# ----------------------------------------------------------------------------------------------------
# Individual degradations: pure functions of one HWC image, parameters traced.


def gaussian_kernel1d(sigma: jnp.ndarray, kernel_size=MAX_KERNEL, max_size: int = MAX_KERNEL):
  """A normalised 1-D Gaussian of `max_size` taps, zero outside the central `kernel_size` (traceable)."""
  r = jnp.arange(max_size) - max_size // 2
  sigma = jnp.maximum(sigma, 1e-6)
  k = jnp.exp(-0.5 * (r / sigma) ** 2) * (jnp.abs(r) <= kernel_size // 2)
  return k / k.sum()


def gaussian_blur(image: jnp.ndarray, sigma, *, kernel_size=MAX_KERNEL) -> jnp.ndarray:
  """Isotropic Gaussian blur (separable), reflect-101 borders like cv2.filter2D.

  `kernel_size` (odd, at most 21) may be traced: taps beyond it are zero, the array shape never changes.
  """
  k = gaussian_kernel1d(sigma, kernel_size).astype(image.dtype)
  p = MAX_KERNEL // 2
  x = jnp.pad(image, ((p, p), (p, p), (0, 0)), mode="reflect")
  h, w, _ = image.shape
  x = sum(k[i] * x[i:i + h] for i in range(MAX_KERNEL))
  x = sum(k[i] * x[:, i:i + w] for i in range(MAX_KERNEL))
  return x


def gaussian_noise(key: jax.Array, image: jnp.ndarray, sigma) -> jnp.ndarray:
  """Additive white Gaussian noise with standard deviation `sigma` on the 0..255 scale (not clipped)."""
  return image + jax.random.normal(key, image.shape, image.dtype) * (sigma / 255.0)


def poisson_noise(key: jax.Array, image: jnp.ndarray, peak) -> jnp.ndarray:
  """Shot noise: `Poisson(x * peak) / peak`, so the variance at intensity x is `x / peak`."""
  peak = jnp.asarray(peak, jnp.float32)
  counts = jax.random.poisson(key, jnp.clip(image, 0.0, None).astype(jnp.float32) * peak)
  return (counts.astype(jnp.float32) / peak).astype(image.dtype)


def quantize(image: jnp.ndarray) -> jnp.ndarray:
  """Clips to [0, 1] and rounds to 8 bits, as a degraded image saved to disk would be."""
  return jnp.round(jnp.clip(image, 0.0, 1.0) * 255.0) / 255.0


def bicubic_downup(image: jnp.ndarray, factor, *, factors: tuple[int, ...] = (2, 4)) -> jnp.ndarray:
  """Bicubic down by `factor` then up to the same shape (MATLAB `imresize` convention).

  `factor` may be traced; it is snapped to the nearest of the static `factors`, whose matrices are all
  built at trace time and selected per example.
  """
  h, w, _ = image.shape
  fs = jnp.asarray(factors, jnp.float32)
  i = jnp.argmin(jnp.abs(fs - jnp.asarray(factor, jnp.float32)))
  mh = jnp.asarray(np.stack([matlab_resize.downup_matrix(h, f) for f in factors]), image.dtype)[i]
  mw = jnp.asarray(np.stack([matlab_resize.downup_matrix(w, f) for f in factors]), image.dtype)[i]
  return jnp.einsum("oh,hwc,pw->opc", mh, image, mw, precision="highest")


def bicubic_downsample(image: jnp.ndarray, scale: int) -> jnp.ndarray:
  """MATLAB `imresize(image, 1/scale, 'bicubic')` (antialiased) of one HWC image; sides multiples of `scale`."""
  h, w, _ = image.shape
  if int(scale) != scale or scale < 1:
    raise ValueError(f"scale: need a positive integer, got {scale!r}")
  if h % scale or w % scale:
    raise ValueError(f"scale: a {h}x{w} image cannot be downsampled by {scale} (sides must be multiples)")
  if scale == 1:
    return image
  return matlab_resize.bicubic_resize(image, (h // scale, w // scale), scale=1.0 / scale)


def rain_kernel(width, length, angle) -> jnp.ndarray:
  """`RAIN_KERNEL`^2 streak kernel: a line of `length` px at `angle` deg (CCW from vertical), peak 1.

  The cross-section is the Gaussian OpenCV uses for a `width` x `width` blur with sigma 0
  (sigma = 0.3 ((width - 1) / 2 - 1) + 0.8), as MiOIR widens its streaks.
  """
  r = jnp.arange(RAIN_KERNEL, dtype=jnp.float32) - RAIN_KERNEL // 2
  y, x = jnp.meshgrid(r, r, indexing="ij")
  theta = jnp.deg2rad(angle)
  along = x * jnp.sin(theta) + y * jnp.cos(theta)  # y points down: angle 0 falls straight down
  across = x * jnp.cos(theta) - y * jnp.sin(theta)
  sigma = 0.3 * ((width - 1) * 0.5 - 1) + 0.8
  ends = jnp.clip(length / 2 + 0.5 - jnp.abs(along), 0.0, 1.0)
  return ends * jnp.exp(-0.5 * (across / sigma) ** 2)


def rain_layer(key: jax.Array, hw: tuple[int, int], density, width, length, angle) -> jnp.ndarray:
  """The (H, W) streak layer in [0, 1] (see the module docstring for the parameters)."""
  seeds = (jax.random.uniform(key, hw) < density / 25600.0).astype(jnp.float32)
  p = RAIN_KERNEL // 2
  padded = jnp.pad(seeds, p, mode="reflect")  # cv2.filter2D's default border, as MiOIR filters
  # A per-example 49x49 kernel is a grouped convolution under vmap; by FFT it costs a few H W log(H W).
  shape = padded.shape
  k = jnp.fft.rfft2(rain_kernel(width, length, angle), shape)
  layer = jnp.fft.irfft2(jnp.fft.rfft2(padded) * k, shape)[2 * p:, 2 * p:]
  lo, hi = layer.min(), layer.max()
  return (layer - lo) / jnp.maximum(hi - lo, 1e-6)


def rain(key: jax.Array, image: jnp.ndarray, density, width, length, angle, *,
         blend: str = "add") -> jnp.ndarray:
  """Adds rain streaks: `blend` 'add' (MiOIR: image + layer, clipped) or 'screen' (1 - (1-x)(1-layer))."""
  layer = rain_layer(key, image.shape[:2], density, width, length, angle)[..., None].astype(image.dtype)
  if blend == "add":
    return jnp.clip(image + layer, 0.0, 1.0)
  if blend == "screen":
    return 1.0 - (1.0 - image) * (1.0 - layer)
  raise ValueError(f"rain: unknown blend {blend!r} (known: add, screen)")


def haze(image: jnp.ndarray, airlight, beta, depth: jnp.ndarray) -> jnp.ndarray:
  """Atmospheric scattering: `image * t + airlight * (1 - t)`, `t = exp(-beta * depth)` (depth (H, W))."""
  t = jnp.exp(-beta * depth)[..., None].astype(image.dtype)
  return image * t + airlight * (1.0 - t)


def low_light(image: jnp.ndarray, gamma) -> jnp.ndarray:
  """MiOIR's darkening: `x ** gamma` on [0, 1] (gamma > 1 darkens; 1..3 training, 3..4 harder)."""
  return jnp.clip(image, 0.0, 1.0) ** gamma


# ----------------------------------------------------------------------------------------------------
# Sampling: per-example parameters from a key, within a ranges table.


# Scalars come from one uniform vector per op rather than one key each: every separate `jax.random` call
# is another inlined hash in the compiled step, and they dominated its compile time.
N_UNIFORMS = 3 + 1 + 16  # per op: up to 4 scalars; haze: 2 scalars, the depth ramp and its 4x4 grid


def _lerp(u, lo_hi):
  return lo_hi[0] + u * (lo_hi[1] - lo_hi[0])


def _pick(u, lo_hi, step=1):
  n = (lo_hi[1] - lo_hi[0]) // step + 1
  return lo_hi[0] + step * jnp.minimum(jnp.floor(u * n), n - 1).astype(jnp.int32)


def _depth_from_uniforms(u: jnp.ndarray, hw: tuple[int, int], grid: int) -> jnp.ndarray:
  h, w = hw
  field = matlab_resize.bicubic_resize(u[1:1 + grid * grid].reshape(grid, grid, 1), (h, w))[..., 0]
  ramp = 1.0 - jnp.linspace(0.0, 1.0, h)[:, None] * (0.5 + 0.5 * u[0])
  d = 0.5 * ramp + 0.5 * field
  d = (d - d.min()) / jnp.maximum(d.max() - d.min(), 1e-6)
  return 0.1 + 0.9 * d


def depth_field(key: jax.Array, hw: tuple[int, int], *, grid: int = 4) -> jnp.ndarray:
  """A depth proxy in [0.1, 1] (1 = far): half a top-far ramp, half a smooth random field.

  The field is `grid` x `grid` uniform noise resized bicubically to (H, W); scenes in photographs are
  mostly farther at the top, hence the ramp (its slope uniform in [0.5, 1]).
  """
  return _depth_from_uniforms(jax.random.uniform(key, (1 + grid * grid,)), hw, grid)


def _apply_haze(key, u, x, r):
  del key
  return haze(x, _lerp(u[0], r["haze_airlight"]), _lerp(u[1], r["haze_beta"]),
              _depth_from_uniforms(u[3:], x.shape[:2], 4))


def _apply_rain(key, u, x, r):
  return rain(key, x, _pick(u[0], r["rain_density"]), _pick(u[1], r["rain_width"], 2),
              _pick(u[2], r["rain_length"]), _lerp(u[3], r["rain_angle"]))


def _apply_lowlight(key, u, x, r):
  return gaussian_noise(key, low_light(x, _lerp(u[0], r["lowlight_gamma"])), _lerp(u[1], r["lowlight_noise"]))


def _apply_blur(key, u, x, r):
  del key
  return gaussian_blur(x, _lerp(u[1], r["blur_sigma"]), kernel_size=_pick(u[0], r["blur_kernel"], 2))


def _apply_downup(key, u, x, r):
  del key
  factors = tuple(r["downup_factors"])
  return bicubic_downup(x, jnp.asarray(factors)[_pick(u[0], (0, len(factors) - 1))], factors=factors)


def _apply_poisson(key, u, x, r):
  lo, hi = r["poisson_peak"]
  return poisson_noise(key, x, jnp.exp(_lerp(u[0], (math.log(lo), math.log(hi)))))


def _apply_noise(key, u, x, r):
  return gaussian_noise(key, x, _lerp(u[0], r["noise_sigma"]))


def _apply_jpeg(key, u, x, r):
  del key
  return jpeg(x, _pick(u[0], r["jpeg_quality"]))


_APPLY = {
    "haze": _apply_haze, "rain": _apply_rain, "lowlight": _apply_lowlight, "blur": _apply_blur,
    "downup": _apply_downup, "poisson": _apply_poisson, "noise": _apply_noise, "jpeg": _apply_jpeg,
}


_INTEGER_RANGES = ("rain_density", "rain_width", "rain_length", "blur_kernel", "jpeg_quality")


def resolve_ranges(ranges="train", overrides=None) -> dict:
  """The named ranges table with `overrides` ({range name: value}) applied and checked."""
  if ranges not in RANGES:
    raise ValueError(f"ranges: unknown ranges {ranges!r} (known: {', '.join(sorted(RANGES))})")
  r = dict(RANGES[ranges])
  for name, value in dict(overrides or {}).items():
    if name not in r:
      raise ValueError(f"overrides: unknown range {name!r} (known: {', '.join(sorted(r))})")
    r[name] = tuple(value)
  for name, value in r.items():
    if name == "downup_factors":
      if not value or any(int(f) != f or f < 1 for f in value):
        raise ValueError(f"overrides.downup_factors: need positive integers, got {value}")
      r[name] = tuple(int(f) for f in value)
    elif len(value) != 2 or value[0] > value[1]:
      raise ValueError(f"overrides.{name}: need (low, high) with low <= high, got {value}")
    elif name in _INTEGER_RANGES:
      if any(int(v) != v for v in value):
        raise ValueError(f"overrides.{name}: need integers, got {value}")
      r[name] = tuple(int(v) for v in value)
  bounds = {"blur_kernel": (1, MAX_KERNEL), "rain_length": (1, MAX_RAIN_LENGTH), "jpeg_quality": (1, 100),
            "rain_width": (1, 11), "poisson_peak": (1e-3, math.inf)}
  for name, (lo, hi) in bounds.items():
    if r[name][0] < lo or r[name][1] > hi:
      raise ValueError(f"overrides.{name}: {r[name]} outside [{lo}, {hi}]")
  for name in ("blur_kernel", "rain_width"):
    if any(v % 2 == 0 for v in r[name]):
      raise ValueError(f"overrides.{name}: bounds must be odd, got {r[name]}")
  return r


def _check_ops(ops, max_ops):
  ops = tuple(ops)
  unknown = [o for o in ops if o not in OPS]
  if unknown:
    raise ValueError(f"ops: unknown degradation {unknown[0]!r} (known: {', '.join(OPS)})")
  if not ops or len(set(ops)) != len(ops):
    raise ValueError(f"ops: need distinct degradations, at least one, got {ops}")
  if not 1 <= max_ops <= len(ops):
    raise ValueError(f"max_ops: need 1 <= max_ops <= len(ops) = {len(ops)}, got {max_ops}")
  return ops


def sample_applied(key: jax.Array, ops=OPS, max_ops: int = 3) -> jnp.ndarray:
  """Bool[len(OPS)]: a uniformly random subset of `ops` whose size is uniform in 1..max_ops."""
  ops = _check_ops(ops, max_ops)
  u = jax.random.uniform(key, (len(ops) + 1,))
  n = 1 + jnp.minimum(jnp.floor(u[0] * max_ops), max_ops - 1)
  chosen = jnp.argsort(jnp.argsort(u[1:])) < n
  idx = np.array([OPS.index(o) for o in ops])
  return jnp.zeros(len(OPS), bool).at[idx].set(chosen)


def task_id(applied: jnp.ndarray) -> jnp.ndarray:
  """Int32 bitmask of a bool[len(OPS)] vector: bit i set when OPS[i] was applied."""
  return jnp.sum(applied.astype(jnp.int32) << jnp.arange(len(OPS), dtype=jnp.int32))


def task_ops(task: int) -> tuple[str, ...]:
  """The op names a (host, Python int) task id stands for, in application order."""
  return tuple(o for i, o in enumerate(OPS) if int(task) >> i & 1)


def task_name(task: int) -> str:
  """'blur+noise' for a task id; 'clean' for 0. Meant for per-task metric names."""
  return "+".join(task_ops(task)) or "clean"


def compose(key: jax.Array, image: jnp.ndarray, applied: jnp.ndarray, *, ops=OPS, ranges="train",
            overrides=None) -> jnp.ndarray:
  """Applies the ops flagged in bool[len(OPS)] `applied`, in `OPS` order, each quantized to 8 bits.

  Only the ops named in `ops` are built (flags of the others are ignored): under `jax.vmap` every built
  op runs for every example, so leaving unused ones out saves compute and compile time. Op i of OPS
  draws its parameters and noise from row / key i of draws made for all ops, so they do not depend on
  which other ops run.
  """
  ops = _check_ops(ops, 1)
  r = resolve_ranges(ranges, overrides)
  k_params, k_noise = jax.random.split(key)
  uniforms = jax.random.uniform(k_params, (len(OPS), N_UNIFORMS))
  keys = jax.random.split(k_noise, len(OPS))
  x = image
  for i, name in enumerate(OPS):
    if name not in ops:
      continue
    op = lambda x, name=name, i=i: quantize(_APPLY[name](keys[i], uniforms[i], x, r)).astype(x.dtype)
    x = jax.lax.cond(applied[i], op, lambda x: x, x)
  return x


def mixed(key: jax.Array, image: jnp.ndarray, *, ops=OPS, max_ops: int = 3, ranges="train",
          overrides=None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """1..`max_ops` random degradations from `ops` with `ranges` ('train' | 'harder'); -> (image, task id).

  Contract (tests rely on it): with `k1, k2 = jax.random.split(key)`, the ops are
  `sample_applied(k1, ops, max_ops)` and the image is `compose(k2, image, applied, ops=ops, ...)`.
  """
  k1, k2 = jax.random.split(key)
  applied = sample_applied(k1, ops, max_ops)
  out = compose(k2, image, applied, ops=ops, ranges=ranges, overrides=overrides)
  return out, task_id(applied)


# ----------------------------------------------------------------------------------------------------
# Recipes and the config entry points.


def blur_noise(key, image, *, blur_sigma=(0.2, 2.0), noise_sigma=(5.0, 30.0)):
  """The default synthetic degradation: Gaussian blur then Gaussian noise, strengths uniform in ranges."""
  k1, k2, k3 = jax.random.split(key, 3)
  s_blur = jax.random.uniform(k1, (), minval=blur_sigma[0], maxval=blur_sigma[1])
  s_noise = jax.random.uniform(k2, (), minval=noise_sigma[0], maxval=noise_sigma[1])
  return quantize(gaussian_noise(k3, gaussian_blur(image, s_blur), s_noise))


def _blur_noise_task(key, image, *, blur_sigma=(0.2, 2.0), noise_sigma=(5.0, 30.0)):
  out = blur_noise(key, image, blur_sigma=blur_sigma, noise_sigma=noise_sigma)
  return out, jnp.int32(1 << OPS.index("blur") | 1 << OPS.index("noise"))


SR_ORDERS = ("classical", "realworld")


def super_resolution(key, image, *, scale: int = 1, order: str = "classical", blur_sigma=(0.0, 0.0),
                     noise_sigma=(0.0, 0.0), jpeg_quality=(0, 0)) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The SR input of an HR image (see the module docstring): -> (LR image `scale` x smaller, task id).

  `blur_sigma` (pixels of the HR image in the first round), `noise_sigma` (0..255) and `jpeg_quality`
  are (low, high) ranges sampled uniformly per example; a range whose high end is 0 switches its step
  off (not built at all). Task id bits: blur, downup (the downsampling), noise, jpeg.
  """
  if order not in SR_ORDERS:
    raise ValueError(f"order: unknown SR degradation order {order!r} (known: {', '.join(SR_ORDERS)})")
  for name, value in (("blur_sigma", blur_sigma), ("noise_sigma", noise_sigma), ("jpeg_quality", jpeg_quality)):
    if len(value) != 2 or value[0] > value[1] or value[0] < 0:
      raise ValueError(f"{name}: need (low, high) with 0 <= low <= high, got {tuple(value)}")
  if jpeg_quality[1] > 100 or 0 < jpeg_quality[1] and jpeg_quality[0] < 1:
    raise ValueError(f"jpeg_quality: need 1 <= low <= high <= 100 (or (0, 0): off), got {tuple(jpeg_quality)}")
  rounds = 2 if order == "realworld" else 1
  u = jax.random.uniform(jax.random.fold_in(key, 0), (rounds, 3))
  x = image
  for r in range(rounds):
    k_noise = jax.random.fold_in(key, 1 + r)
    if blur_sigma[1] > 0:
      x = quantize(gaussian_blur(x, _lerp(u[r, 0], blur_sigma)))
    if r == 0:
      x = quantize(bicubic_downsample(x, scale))
    if noise_sigma[1] > 0:
      x = quantize(gaussian_noise(k_noise, x, _lerp(u[r, 1], noise_sigma)))
    if jpeg_quality[1] > 0:
      x = jpeg(x, _pick(u[r, 2], (int(jpeg_quality[0]), int(jpeg_quality[1]))))
  bits = [name for name, on in (("blur", blur_sigma[1] > 0), ("downup", scale > 1),
                                ("noise", noise_sigma[1] > 0), ("jpeg", jpeg_quality[1] > 0)) if on]
  return x, jnp.int32(sum(1 << OPS.index(b) for b in bits))


# name -> recipe(key, image, **options) -> (degraded, task id). The options are the recipe's keywords.
RECIPES = {
    "blur_noise": _blur_noise_task,
    "mixed": mixed,
    "sr": super_resolution,
}


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": "blur_noise",
      "blur_sigma": (0.2, 2.0),
      "noise_sigma": (5.0, 30.0),
  })


def _plain(value):
  return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def _same_size_recipe(name: str, scale: int) -> Callable:
  def fail(key, image):
    del key, image
    raise ValueError(f"config.data.degrade.name: {name!r} keeps the image size, but config.data.scale="
                     f"{scale} needs a low-resolution input; use --config.data.degrade.name=sr")
  return fail


def from_config_with_task(cfg, scale: int = 1) -> Callable[[jax.Array, jnp.ndarray],
                                                           tuple[jnp.ndarray, jnp.ndarray]]:
  """`config.data.degrade` -> `fn(key, image) -> (degraded, task id)`; `name` picks a recipe.

  The other fields are the recipe's options; unknown or invalid ones raise a one-line ValueError naming
  the field (checked here by tracing the recipe once on a small image, not at the first train step).
  `scale` (`config.data.scale`) goes to recipes that take it ('sr'); with scale > 1 a recipe that keeps
  the size gives a function that raises when used (a source holding LR images never calls it).
  """
  if int(scale) != scale or scale < 1:
    raise ValueError(f"config.data.scale: need a positive integer, got {scale!r}")
  scale = int(scale)
  if "name" not in cfg:
    raise ValueError("config.data.degrade.name: missing (the degradation recipe to use)")
  if cfg["name"] not in RECIPES:
    raise ValueError(f"config.data.degrade.name: unknown degradation {cfg['name']!r} "
                     f"(known: {', '.join(sorted(RECIPES))})")
  recipe = RECIPES[cfg["name"]]
  options = {k: _plain(v) for k, v in cfg.items() if k != "name"}
  known = [n for n, p in inspect.signature(recipe).parameters.items() if p.kind == p.KEYWORD_ONLY]
  if "scale" in options and "scale" in known:
    raise ValueError("config.data.degrade.scale: set config.data.scale instead (the data's SR factor)")
  for k in options:
    if k not in known:
      raise ValueError(f"config.data.degrade.{k}: unknown option for {cfg['name']!r} "
                       f"(known: {', '.join(known)})")
  if "scale" in known:
    options["scale"] = scale
  elif scale > 1:
    return _same_size_recipe(cfg["name"], scale)
  fn = lambda key, image: recipe(key, image, **options)
  try:
    jax.eval_shape(fn, jax.random.key(0), jax.ShapeDtypeStruct((16 * scale, 16 * scale, 3), jnp.float32))
  except ValueError as e:
    raise ValueError(f"config.data.degrade.{e}") from None
  except (TypeError, IndexError) as e:  # e.g. a range that is not two numbers
    given = ", ".join(f"{k}={v!r}" for k, v in options.items())
    raise ValueError(f"config.data.degrade: invalid options for {cfg['name']!r} ({given}): "
                     f"{type(e).__name__}: {' '.join(str(e).split())}") from None
  return fn


def from_config(cfg: ml_collections.ConfigDict, scale: int = 1) -> Callable[[jax.Array, jnp.ndarray], jnp.ndarray]:
  """`config.data.degrade` -> `fn(key, image)`; the block's `name` picks a recipe, the rest are its options
  (`scale`: `config.data.scale`, see `from_config_with_task`)."""
  fn = from_config_with_task(cfg, scale)
  return lambda key, image: fn(key, image)[0]
