"""Feature-space losses through frozen ImageNet networks: `perceptual` (VGG16 features, BasicSR's
PerceptualLoss) and `lpips` (LPIPS v0.1).

Both read their network's parameters from `aux[<term>]` (built once by `build_aux` from the `perceptual`
extra's weights, see restorejax.models.lpips), which the trainer shards by the config's rules under paths
`perceptual/...` / `lpips/...` and never updates; the target branch is under `stop_gradient`, so the
restorer gets gradients through the network's input only and the network's weights get none.

`perceptual` follows BasicSR's `PerceptualLoss`: images in [0, 1] are ImageNet-normalised
(`input_norm`; `range_norm` first maps [-1, 1] to [0, 1]), features are taken at the named layers
(BasicSR's names; a `conv` layer is before its ReLU), and the term is
`sum_l w_l * criterion(f_l(restored), f_l(target))` plus `style * sum_l w_l * criterion(G_l(restored),
G_l(target))` with Gram matrices `G = F F^T / (C H W)`. criterion: 'l1' or 'l2' (means) or 'fro'
(Frobenius norm of the difference). BasicSR defaults to VGG19; the registry's weights are VGG16's, so the
layer names are VGG16's (conv5_3 is the last); the default layers and weights are BasicSR's ESRGAN ones
moved to VGG16 (conv3_4 -> conv3_3 etc.).
"""

from typing import Any

import jax
import jax.numpy as jnp

from restorejax.models import lpips as lpips_net

DEFAULT_LAYERS = "conv1_2:0.1,conv2_2:0.1,conv3_3:1,conv4_3:1,conv5_3:1"
CRITERIA = ("l1", "l2", "fro")


def parse_layers(spec: str) -> dict[str, float]:
  """'conv3_3:1,conv4_3:0.5' -> {layer: weight}; unknown layer names are an error naming them."""
  out = {}
  for part in [p.strip() for p in spec.split(",") if p.strip()]:
    name, _, w = part.partition(":")
    if name not in lpips_net.vgg16_layer_names():
      raise ValueError(f"config.losses.perceptual.layers: unknown VGG16 layer {name!r} (known: "
                       f"{', '.join(lpips_net.vgg16_layer_names())})")
    try:
      out[name] = float(w) if w else 1.0
    except ValueError:
      raise ValueError(f"config.losses.perceptual.layers: {part!r} is not layer:weight") from None
  if not out:
    raise ValueError("config.losses.perceptual.layers: names no layer")
  return out


def build_perceptual_aux(**unused: Any) -> dict[str, Any]:
  """`aux['perceptual']`: the VGG16 feature parameters (host arrays)."""
  del unused
  return {"vgg": lpips_net.load("vgg")["backbone"]}


def build_lpips_aux(*, net: str = "alex", **unused: Any) -> dict[str, Any]:
  """`aux['lpips']`: the backbone and the linear heads of LPIPS v0.1 for `net`."""
  del unused
  return dict(lpips_net.load(net))


def _criterion(a, b, kind: str):
  if kind == "l1":
    return jnp.mean(jnp.abs(a - b))
  if kind == "l2":
    return jnp.mean(jnp.square(a - b))
  return jnp.sqrt(jnp.sum(jnp.square(a - b)))


def _gram(f):
  n, h, w, c = f.shape
  f = f.reshape(n, h * w, c)
  return jnp.einsum("npc,npd->ncd", f, f, precision="highest") / (c * h * w)


def perceptual(restored, batch, *, aux, layers: str = DEFAULT_LAYERS, criterion: str = "l1",
               style: float = 0.0, input_norm: bool = True, range_norm: bool = False):
  """VGG16 perceptual loss (BasicSR semantics); returns (percep + style * style_loss, parts).

  Args:
    restored: NHWC in [0, 1] (or [-1, 1] with range_norm).
    batch: reads `target`.
    aux: `aux['perceptual']['vgg']` from `build_perceptual_aux`.
    layers: 'layer:weight,...' (BasicSR's layer_weights).
    criterion: 'l1', 'l2' or 'fro'.
    style: weight of the Gram-matrix style term inside this term (BasicSR's style_weight / perceptual_weight);
      0 skips it.
    input_norm: ImageNet mean/std normalisation (BasicSR's use_input_norm).
    range_norm: map [-1, 1] to [0, 1] first.
  """
  if criterion not in CRITERIA:
    raise ValueError(f"config.losses.perceptual.criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
  if not aux or "perceptual" not in aux:
    raise ValueError("config.losses.perceptual: the loss needs its aux inputs (build it with losses.build)")
  weights = parse_layers(layers)
  params = jax.lax.stop_gradient(aux["perceptual"]["vgg"])
  names = tuple(weights)

  def feats(x):
    x = x.astype(jnp.float32)
    if range_norm:
      x = (x + 1.0) / 2.0
    if input_norm:
      x = (x - lpips_net.IMAGENET_MEAN) / lpips_net.IMAGENET_STD
    return lpips_net.features("vgg", params, x, names)

  fx = feats(restored)
  fy = jax.lax.stop_gradient(feats(batch["target"]))
  percep = sum(weights[n] * _criterion(a, b, criterion) for n, a, b in zip(names, fx, fy))
  parts = {"percep": percep}
  total = percep
  if style:
    style_loss = sum(weights[n] * _criterion(_gram(a), _gram(b), criterion) for n, a, b in zip(names, fx, fy))
    parts["style"] = style_loss
    total = total + style * style_loss
  return total, parts


def lpips(restored, batch, *, aux, net: str = "alex"):
  """Mean LPIPS v0.1 (`net` 'alex' or 'vgg') of the restored images against the targets (both in [0, 1])."""
  if net not in lpips_net.NETS:
    raise ValueError(f"config.losses.lpips.net must be one of {', '.join(lpips_net.NETS)}, got {net!r}")
  if not aux or "lpips" not in aux:
    raise ValueError("config.losses.lpips: the loss needs its aux inputs (build it with losses.build)")
  params = jax.lax.stop_gradient(aux["lpips"])
  target = jax.lax.stop_gradient(batch["target"].astype(jnp.float32))
  return jnp.mean(lpips_net.lpips(params, restored.astype(jnp.float32), target, net=net))
