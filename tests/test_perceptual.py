"""LPIPS, NIQE and the perceptual / lpips loss terms (need the `perceptual` extra's weights; skipped without).

References: LPIPS against a PyTorch re-implementation of the `lpips` package's v0.1 forward (its
`LPIPS.forward` with `ScalingLayer`, `normalize_tensor`, `NetLinLayer`, `spatial_average`, and torchvision's
`alexnet().features` / `vgg16().features` layer stacks), run on the same weights; torchvision itself does
not install beside the venv's torch. NIQE against numbers from BasicSR 1.4.2's own `calculate_niqe`
(its sdist's basicsr/metrics/niqe.py run unmodified outside this repository, BGR float32 input).
"""

import numpy as np
import pytest
from scipy import ndimage

import jax
import jax.numpy as jnp

from restorejax import losses
from restorejax.data import procedural
from restorejax.evaluation import niqe as niqe_lib
from restorejax.evaluation import perceptual as perceptual_metrics
from restorejax.models import lpips as lpips_net

needs_lpips = pytest.mark.skipif(not lpips_net.available(),
                                 reason=f"LPIPS weights not installed: {lpips_net.EXTRA_HINT}")
needs_niqe = pytest.mark.skipif(not niqe_lib.available(),
                                reason=f"NIQE parameters ({niqe_lib.FILE}) not installed")


def _torch_lpips(net, x, y):
  """The `lpips` package's v0.1 forward (lpips=True, spatial=False) in torch, on our weights; NHWC [0,1]."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  p = lpips_net.load(net)
  t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
  conv = lambda h, name, stride=1, pad=1: F.conv2d(h, t(p["backbone"][name]["kernel"].transpose(3, 2, 0, 1)),
                                                   t(p["backbone"][name]["bias"]), stride=stride, padding=pad)

  def feats(h):
    out = []
    if net == "alex":
      for i, (_, k, s, pad) in enumerate(lpips_net.ALEX_CONVS, 1):
        h = F.relu(conv(h, f"conv{i}", s, pad))
        out.append(h)
        if i <= 2:
          h = F.max_pool2d(h, 3, 2)
      return out
    for s, stage in enumerate(lpips_net.VGG16_STAGES, 1):
      for i in range(1, len(stage) + 1):
        h = F.relu(conv(h, f"conv{s}_{i}"))
      out.append(h)
      h = F.max_pool2d(h, 2, 2)
    return out

  shift = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)
  scale = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)
  prep = lambda a: ((t(a).permute(0, 3, 1, 2) * 2 - 1) - shift) / scale
  unit = lambda f: f / (torch.sqrt(torch.sum(f ** 2, dim=1, keepdim=True)) + 1e-10)
  with torch.no_grad():
    val = 0
    for f0, f1, head in zip(feats(prep(x)), feats(prep(y)), p["heads"]):
      d = (unit(f0) - unit(f1)) ** 2
      val = val + F.conv2d(d, t(head).view(1, -1, 1, 1)).mean([2, 3], keepdim=True)
  return val.numpy().reshape(-1)


_lpips = jax.jit(lpips_net.lpips, static_argnames=("net",))


def _photo(seed: int, size: int) -> np.ndarray:
  """A dead-leaves image with slightly soft edges and sensor grain (no perfectly flat regions)."""
  rng = np.random.default_rng(seed)
  img = procedural.dead_leaves(np.random.default_rng(seed), size).astype(np.float64)
  img = ndimage.gaussian_filter(img, (0.5, 0.5, 0)) + rng.normal(0, 1.0, (size, size, 3))
  return np.clip(img, 0, 255).round().astype(np.uint8)


def _versions(seed: int, size: int) -> dict[str, np.ndarray]:
  clean = _photo(seed, size)
  rng = np.random.default_rng(100 + seed)
  noisy = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).round().astype(np.uint8)
  blur = np.clip(ndimage.gaussian_filter(clean.astype(float), (3, 3, 0)), 0, 255).round().astype(np.uint8)
  return {"clean": clean, "noisy": noisy, "blur": blur}


@needs_lpips
@pytest.mark.parametrize("net", lpips_net.NETS)
def test_lpips_equals_reference_definition(net):
  rng = np.random.default_rng(0)
  sizes = [(64, 64), (48, 80), (100, 72), (37, 53), (96, 128)]
  for h, w in sizes if net == "alex" else sizes[:3]:  # VGG's compiles cost more; three sizes suffice there
    x = procedural.dead_leaves(rng, max(h, w))[:h, :w][None].astype(np.float32) / 255
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    both = _lpips(lpips_net.load(net), np.concatenate([x, x]), np.concatenate([y, x]), net=net)
    ours, same = np.asarray(both)
    np.testing.assert_allclose(ours, _torch_lpips(net, x, y)[0], atol=1e-4, err_msg=f"{net} {h}x{w}")
    assert ours > 1e-3 and same == 0.0


@needs_lpips
def test_lpips_grows_with_noise():
  x = procedural.dead_leaves(np.random.default_rng(3), 64)[None].astype(np.float32) / 255
  noise = np.random.default_rng(4).normal(0, 1, x.shape).astype(np.float32)
  batch = np.concatenate([np.clip(x + s * noise, 0, 1) for s in (0.0, 0.02, 0.05, 0.1, 0.2)])
  d = np.asarray(_lpips(lpips_net.load("alex"), batch, np.repeat(x, 5, 0), net="alex"))
  assert d[0] == 0 and np.all(np.diff(d) > 0), d


def test_weights_reader_refuses_code(tmp_path):
  import pickle  # pylint: disable=g-import-not-at-top
  path = tmp_path / "evil.ckpt"
  path.write_bytes(pickle.dumps({"a": np.zeros(3), "b": print}))
  with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
    lpips_net.read_arrays(str(path))
  path.write_bytes(pickle.dumps({"a": {"k": np.ones((2, 2), np.float32)}}))
  assert lpips_net.read_arrays(str(path))["a"]["k"].sum() == 4


# BasicSR 1.4.2 calculate_niqe(bgr_float32, crop_border) of _versions(seed, 288): (crop 0, crop 3).
BASICSR_NIQE = {
    (1, "clean"): (7.249782600276572, 10.82541618185981),
    (1, "noisy"): (12.427426234824425, 13.570299108936432),
    (1, "blur"): (10.811654103046813, 10.72033669549893),
    (2, "clean"): (8.576095405419588, 10.080100978406012),
    (2, "noisy"): (11.969139872963934, 12.141080186238616),
    (2, "blur"): (10.659841920593383, 10.214910309917476),
}


@needs_niqe
def test_niqe_equals_basicsr_and_prefers_clean_images():
  diffs = []
  for seed in (1, 2):
    v = _versions(seed, 288)
    batch = np.stack([v["clean"], v["noisy"], v["blur"]])
    scores = niqe_lib.niqe(batch)  # one batch: the three images of one size together
    cropped = niqe_lib.niqe(batch, crop_border=3)
    for j, k in enumerate(("clean", "noisy", "blur")):
      ref, ref_cropped = BASICSR_NIQE[(seed, k)]
      diffs += [abs(scores[j] - ref), abs(cropped[j] - ref_cropped)]
    assert scores[0] < scores[1] and scores[0] < scores[2], scores
    fast = niqe_lib.niqe(batch, exact=False)  # the batched JAX fits
    np.testing.assert_allclose(fast, scores, atol=2e-2)
  # 10 of these 12 agree to < 1e-4; two land within 1e-3 and 4e-3: BasicSR's float32 half-size resize
  # accumulates in another order (1-ulp differences), which can move one block's AGGD fit to the
  # neighbouring grid shape.
  assert np.median(diffs) < 1e-4 and max(diffs) < 5e-3, diffs
  assert abs(niqe_lib.niqe(_versions(1, 288)["clean"]) - BASICSR_NIQE[(1, "clean")][0]) < 1e-4  # HWC


@needs_niqe
def test_niqe_errors():
  with pytest.raises(ValueError, match="at least 96x96"):
    niqe_lib.niqe(np.zeros((64, 200, 3), np.uint8))


def test_missing_weights_say_why(monkeypatch):
  monkeypatch.setattr(lpips_net, "available", lambda: False)
  monkeypatch.setattr(niqe_lib, "available", lambda: False)
  note = perceptual_metrics.missing()
  assert "LPIPS" in note and ".[perceptual]" in note and "NIQE" in note
  assert perceptual_metrics.metrics_available() == ()


def _loss_grads(name, **options):
  cfg = losses.default_config(**{name: 1.0})
  for k, v in options.items():
    cfg[name][k] = v
  loss = losses.build(cfg)
  rng = np.random.default_rng(5)
  target = procedural.dead_leaves(rng, 32)[None].astype(np.float32) / 255
  degraded = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1).astype(np.float32)
  batch = {"target": jnp.asarray(target)}
  scale = jnp.float32(0.9)  # a one-parameter 'restorer': restored = scale * degraded

  def f(s, aux):
    return loss(s * degraded, batch, aux)[0]
  value, (g_scale, g_aux) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(scale, loss.aux)
  return loss, value, g_scale, g_aux


@needs_lpips
@pytest.mark.parametrize("name,options", [
    ("lpips", {}), ("perceptual", {"style": 10.0, "criterion": "l2", "layers": "relu1_2:1,conv2_2:0.5"})])
def test_loss_terms_train_the_restorer_not_their_network(name, options):
  loss, value, g_scale, g_aux = _loss_grads(name, **options)
  assert np.isfinite(float(value)) and float(value) > 0
  assert np.isfinite(float(g_scale)) and abs(float(g_scale)) > 0
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(g_aux))
  assert set(loss.aux) == {name}


@needs_lpips
def test_perceptual_matches_basicsr_semantics():
  """Two layers, L1 criterion, ImageNet normalisation, Gram style term: recomputed by hand from the features."""
  rng = np.random.default_rng(6)
  x = procedural.dead_leaves(rng, 40)[None].astype(np.float32) / 255
  y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
  aux = {"perceptual": {"vgg": lpips_net.load("vgg")["backbone"]}}
  total, parts = losses.TERMS["perceptual"](x, {"target": y}, aux=aux, layers="conv2_2:0.5,relu3_3:2",
                                            style=3.0)
  norm = lambda a: (a - lpips_net.IMAGENET_MEAN) / lpips_net.IMAGENET_STD
  fx = lpips_net.features("vgg", aux["perceptual"]["vgg"], norm(x), ("conv2_2", "relu3_3"))
  fy = lpips_net.features("vgg", aux["perceptual"]["vgg"], norm(y), ("conv2_2", "relu3_3"))
  assert float(jnp.min(fx[0])) < 0  # conv2_2 is taken before its ReLU
  percep = 0.5 * np.mean(np.abs(fx[0] - fy[0])) + 2 * np.mean(np.abs(fx[1] - fy[1]))

  def gram(f):
    f = np.asarray(f, np.float64)
    n, h, w, c = f.shape
    f = f.reshape(n, h * w, c)
    return np.einsum("npc,npd->ncd", f, f) / (c * h * w)
  style = 0.5 * np.mean(np.abs(gram(fx[0]) - gram(fy[0]))) + 2 * np.mean(np.abs(gram(fx[1]) - gram(fy[1])))
  np.testing.assert_allclose(float(parts["percep"]), percep, rtol=1e-5)
  np.testing.assert_allclose(float(parts["style"]), style, rtol=1e-4)
  np.testing.assert_allclose(float(total), percep + 3 * style, rtol=1e-4)
  with pytest.raises(ValueError, match="unknown VGG16 layer 'conv5_4'"):
    losses.TERMS["perceptual"](x, {"target": y}, aux=aux, layers="conv5_4:1")


@needs_lpips
@needs_niqe
def test_evaluator_reports_perceptual_metrics(monkeypatch):
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from restorejax.evaluation import scoring  # pylint: disable=g-import-not-at-top
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  v = _versions(1, 192)
  examples = [{"name": "a", "degraded": v["noisy"], "target": v["clean"]},
              {"name": "b", "degraded": v["blur"], "target": v["clean"]}]
  ev = scoring.Evaluator(lambda p, x, prior: x * p, mesh, NamedSharding(mesh, PartitionSpec("data")),
                           examples, batch_size=2, multiple=8, perceptual=True)
  result = ev(np.float32(1.0))  # the identity: restored scores equal the input's
  assert result.notes == []
  for r in result.per_image:
    assert r["lpips"] == r["input_lpips"] > 0 and r["niqe"] == r["input_niqe"] > 0
  assert abs(result.per_image[0]["niqe"] - niqe_lib.niqe(v["noisy"])) < 1e-9
  monkeypatch.setattr(lpips_net, "available", lambda: False)
  monkeypatch.setattr(niqe_lib, "available", lambda: False)
  result = ev(np.float32(1.0))
  assert "lpips" not in result.means and len(result.notes) == 1 and "perceptual" in result.notes[0]


def test_niqe_install_checks_and_copies_the_parameters(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.delenv(niqe_lib.ENV, raising=False)
  good = {"mu_pris_param": np.ones((1, 36)), "cov_pris_param": np.eye(36), "gaussian_window": np.ones((7, 7))}
  np.savez(tmp_path / "p.npz", **good)
  np.savez(tmp_path / "bad.npz", mu_pris_param=np.ones(3))
  assert niqe_lib.main(["install", str(tmp_path / "bad.npz")]) == 2
  assert "not NIQE pristine parameters" in capsys.readouterr().err
  assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.npz"))
  assert niqe_lib.main(["install", str(tmp_path / "p.npz")]) == 0
  assert niqe_lib.load_params(niqe_lib.cache_path())["cov_pris_param"].shape == (36, 36)
  niqe_lib.load_params.cache_clear()
