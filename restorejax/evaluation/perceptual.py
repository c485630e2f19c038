"""Perceptual metrics of whole images: LPIPS v0.1 (AlexNet, full-reference) and NIQE (no-reference).

`score(restored, target, degraded, crop_border=...)` takes lists of uint8 HxWx3 images (each image its own
size) and returns per-image `lpips`, `niqe`, `input_lpips`, `input_niqe` arrays, for the metrics whose
weights are installed (`missing()` says, in one line, why the others are absent). Images of one size are
scored in one JAX batch (LPIPS compiles once per size). LPIPS sees the `crop_border`-cropped RGB images;
NIQE follows BasicSR's `calculate_niqe` (Y channel, crop_border, 96x96 blocks; an image holding fewer than
two whole blocks after the crop gets NaN, as one block gives no covariance).
"""

from typing import Sequence

import jax
import numpy as np

from restorejax.evaluation import niqe as niqe_lib
from restorejax.models import lpips as lpips_net

METRICS = ("lpips", "niqe", "input_lpips", "input_niqe")
LPIPS_NET = "alex"


def missing() -> str:
  """'' when LPIPS and NIQE can both be computed, else one line saying what is absent and why."""
  why = []
  if not lpips_net.available():
    why.append(f"LPIPS: no weights ({lpips_net.EXTRA_HINT})")
  if not niqe_lib.available():
    why.append(f"NIQE: no {niqe_lib.FILE} (see python -m restorejax.evaluation.niqe)")
  return "; ".join(why)


def metrics_available() -> tuple[str, ...]:
  out = []
  if lpips_net.available():
    out += ["lpips", "input_lpips"]
  if niqe_lib.available():
    out += ["niqe", "input_niqe"]
  return tuple(m for m in METRICS if m in out)


_lpips_jit = jax.jit(lpips_net.lpips, static_argnames=("net",))


def _crop(a: np.ndarray, c: int) -> np.ndarray:
  return a[c:a.shape[0] - c, c:a.shape[1] - c] if c else a


def _niqe_or_nan(batch: np.ndarray) -> np.ndarray:
  h, w = batch.shape[1:3]
  if (h // niqe_lib.BLOCK) * (w // niqe_lib.BLOCK) < 2:
    return np.full(len(batch), np.nan)
  return niqe_lib.niqe(batch)


def score(restored: Sequence[np.ndarray], target: Sequence[np.ndarray], degraded: Sequence[np.ndarray], *,
          crop_border: int = 0, with_input: bool = True) -> dict[str, np.ndarray]:
  """Per-image perceptual metrics (those available) of uint8 HxWx3 images, in the given order;
  `with_input=False` skips the input (degraded) scores."""
  names = tuple(k for k in metrics_available() if with_input or not k.startswith("input_"))
  out = {k: np.full(len(restored), np.nan) for k in names}
  if not names:
    return out
  lp = lpips_net.load(LPIPS_NET) if "lpips" in names else None
  groups: dict[tuple[int, int], list[int]] = {}
  for i, r in enumerate(restored):
    groups.setdefault(_crop(r, crop_border).shape[:2], []).append(i)
  for idx in groups.values():
    res = np.stack([_crop(restored[i], crop_border) for i in idx])
    tgt = np.stack([_crop(target[i], crop_border) for i in idx])
    deg = np.stack([_crop(degraded[i], crop_border) for i in idx]) if with_input else None
    if lp is not None:
      f = lambda a: a.astype(np.float32) / 255.0
      out["lpips"][idx] = np.asarray(_lpips_jit(lp, f(res), f(tgt), net=LPIPS_NET))
      if with_input:
        out["input_lpips"][idx] = np.asarray(_lpips_jit(lp, f(deg), f(tgt), net=LPIPS_NET))
    if "niqe" in names:
      out["niqe"][idx] = _niqe_or_nan(res)
      if with_input:
        out["input_niqe"][idx] = _niqe_or_nan(deg)
  return out
