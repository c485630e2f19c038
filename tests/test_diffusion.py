"""Diffusion schedules, samplers and objectives, checked against closed forms.

The samplers run with the exact eps of Gaussian data x0 ~ N(mu, s^2) (per channel): for
x_t = sqrt(a) x0 + sqrt(1-a) eps, E[eps | x_t] = sqrt(1-a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a). Each
DDIM / DDPM step is then linear in x_t, so the mean and std of the samples are predicted exactly by a
numpy recursion written here from the textbook formulas, and must also land close to (mu, s).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from restorejax.diffusion import objectives, samplers, schedules

T = 1000
MU = np.array([0.3, -0.2, 0.0])
S = np.array([0.2, 0.5, 0.1])
SHAPE = (128, 8, 8, 3)


def linear_abar_np(num_steps=T):
  scale = 1000 / num_steps
  betas = [scale * (1e-4 + (0.02 - 1e-4) * i / (num_steps - 1)) for i in range(num_steps)]
  return np.cumprod(1 - np.array(betas))


def gaussian_oracle(abar_of_t):
  """Exact eps prediction for x0 ~ N(MU, S^2); `abar_of_t` maps the network's time input to abar."""
  mu, s2 = jnp.asarray(MU, jnp.float32), jnp.asarray(S**2, jnp.float32)

  def eps_fn(x, t):
    a = abar_of_t(t)[:, None, None, None]
    return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * s2 + 1 - a)

  return eps_fn


def full_abar_lookup(t):
  return jnp.asarray(linear_abar_np(), jnp.float32)[t.astype(jnp.int32)]


def predicted_stats(abar, kind):
  """Mean and std per channel of the sampler's output, from x_T ~ N(0, 1), by the linear recursion."""
  abar_prev = np.append(1.0, abar[:-1])
  m = -np.sqrt(abar[-1]) * MU  # mean of z = x - sqrt(abar) mu at the first step
  var = np.ones(3)
  for i in range(len(abar) - 1, -1, -1):
    a, ap = abar[i], abar_prev[i]
    v = a * S**2 + 1 - a
    x0_gain = np.sqrt(a) * S**2 / v  # x0_hat - mu = x0_gain * z
    eps_gain = np.sqrt(1 - a) / v  # eps_hat = eps_gain * z
    if kind == "ddim":
      gain, noise_var = np.sqrt(ap) * x0_gain + np.sqrt(1 - ap) * eps_gain, 0.0
    else:
      beta = 1 - a / ap
      coef1 = beta * np.sqrt(ap) / (1 - a)
      coef2 = (1 - ap) * np.sqrt(1 - beta) / (1 - a)
      gain = coef1 * x0_gain + coef2
      noise_var = 0.0 if i == 0 else (beta * (1 - ap) / (1 - a) if kind == "fixed_small" else beta)
    m, var = gain * m, gain**2 * var + noise_var
  return MU + m, np.sqrt(var)


def sample_stats(x):
  x = np.asarray(x, np.float64).reshape(-1, 3)
  return x.mean(0), x.std(0), x.shape[0]


def assert_stats(x, abar, kind):
  mean, std, n = sample_stats(x)
  want_mean, want_std = predicted_stats(abar, kind)
  assert (np.abs(mean - want_mean) < 5 * want_std / math.sqrt(n)).all(), (mean, want_mean)
  assert (np.abs(std / want_std - 1) < 5 / math.sqrt(2 * n)).all(), (std, want_std)
  return want_mean, want_std


# --- schedules ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_steps", [1000, 2000, 50])
def test_linear_schedule_matches_closed_form(num_steps):
  s = schedules.make("linear", num_steps)
  np.testing.assert_allclose(s.alphas_cumprod, linear_abar_np(num_steps), rtol=1e-6)
  betas = schedules.beta_schedule("linear", num_steps)
  assert betas[0] == pytest.approx(1e-4 * 1000 / num_steps) and betas[-1] == pytest.approx(0.02 * 1000 / num_steps)
  np.testing.assert_allclose(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
  assert s.alphas_cumprod_prev[0] == 1.0
  post = betas * (1 - np.append(1, linear_abar_np(num_steps)[:-1])) / (1 - linear_abar_np(num_steps))
  np.testing.assert_allclose(s.posterior_variance, post, rtol=1e-5, atol=1e-12)
  np.testing.assert_array_equal(s.model_t, np.arange(num_steps))


def test_cosine_schedule_closed_form_and_endpoints():
  f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
  s = schedules.make("cosine", T)
  betas = schedules.beta_schedule("cosine", T)
  unclipped = betas < 0.999
  want = np.array([f((t + 1) / T) / f(0) for t in range(T)])
  np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[unclipped], want[unclipped], rtol=1e-5, atol=1e-7)
  assert betas[-1] == 0.999 and unclipped[:-1].all()  # only the last step hits the clip
  assert betas[0] == pytest.approx(1 - f(1 / T) / f(0), rel=1e-9)
  assert float(s.alphas_cumprod[-1]) < 1e-6
  assert (np.diff(betas) > 0).all()


def test_unknown_schedule_is_an_error():
  with pytest.raises(ValueError, match="'sigmoid'"):
    schedules.make("sigmoid", 10)


def test_space_timesteps_like_official():
  assert schedules.space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
  steps = schedules.space_timesteps(300, "10,15,20")
  assert len(steps) == 45
  assert [sum(lo <= t < lo + 100 for t in steps) for lo in (0, 100, 200)] == [10, 15, 20]
  assert steps[0] == 0 and steps[9] == 99 and steps[-1] == 299  # each section spans its ends
  with pytest.raises(ValueError, match="cannot divide"):
    schedules.space_timesteps(10, "20")


def test_respacing_keeps_chosen_abar():
  betas = schedules.beta_schedule("linear", T)
  keep = schedules.space_timesteps(T, "37")
  s = schedules.respace(betas, keep)
  assert s.num_steps == 37
  np.testing.assert_allclose(s.alphas_cumprod, linear_abar_np()[keep], rtol=1e-6)
  np.testing.assert_array_equal(s.model_t, keep)  # the network still sees the original timesteps
  np.testing.assert_array_equal(s.timesteps, keep)
  continuous = schedules.respace(betas, keep, conditioning="noise_level")
  np.testing.assert_allclose(continuous.model_t, 1000 * linear_abar_np()[keep], rtol=1e-6)


def test_sr3_noise_level_lies_uniformly_between_neighbours():
  s = schedules.make("linear", 2000, conditioning="noise_level")
  abar, i = schedules.sample_noise_level(jax.random.key(0), s, 20000)
  lo, hi = np.asarray(s.alphas_cumprod)[i], np.asarray(s.alphas_cumprod_prev)[i]
  assert ((abar >= lo) & (abar <= hi)).all()
  frac = (np.asarray(abar, np.float64) - lo) / (hi - lo)
  assert abs(frac.mean() - 0.5) < 0.01 and abs(frac.std() - math.sqrt(1 / 12)) < 0.01
  assert abs(np.asarray(i).mean() - 999.5) < 15  # steps uniform over 0..1999


# --- objectives ---------------------------------------------------------------------------------------

def test_q_sample_statistics():
  abar = jnp.array([0.9, 0.25])
  x0 = jnp.full((2, 64, 64, 3), 0.7)
  noise = jax.random.normal(jax.random.key(1), x0.shape)
  xt = np.asarray(objectives.q_sample(x0, abar, noise)).reshape(2, -1)
  for b, a in enumerate([0.9, 0.25]):
    assert xt[b].mean() == pytest.approx(math.sqrt(a) * 0.7, abs=4 * math.sqrt(1 - a) / 110)
    assert xt[b].std() == pytest.approx(math.sqrt(1 - a), rel=0.03)


def test_noising_and_x0_prediction_keep_float64_precision_near_abar_one():
  """Step 0 of the linear schedule has 1 - abar = 1e-4: sqrt(1 - abar) from a float32 abar would be off by
  3e-4 relative. The stored coefficients are derived in float64 (as guided-diffusion's)."""
  s = schedules.make("linear", 1000)
  abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
  rng = np.random.default_rng(0)
  x0, noise = rng.uniform(-1, 1, (3, 16, 16, 3)), rng.standard_normal((3, 16, 16, 3))
  i = np.array([0, 1, 999])
  a = abar[i][:, None, None, None]
  xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  np.testing.assert_allclose(objectives.q_sample_step(f32(x0), jnp.asarray(i), f32(noise), s), xt,
                             rtol=0, atol=1e-6)
  x0_pred = np.asarray(samplers.predict_x0(f32(xt), f32(noise), jnp.asarray(i), s), np.float64)
  np.testing.assert_allclose(x0_pred[:2], x0[:2], rtol=0, atol=1e-6)  # t = 999: 1/sqrt(abar) = 158 amplifies
  np.testing.assert_allclose(x0_pred[2], x0[2], rtol=0, atol=2e-4)    # float32 rounding of x_t
  eps = np.asarray(samplers.eps_from_x0(f32(xt), f32(x0), jnp.asarray(i), s), np.float64)
  np.testing.assert_allclose(eps[2], noise[2], rtol=0, atol=1e-5)


def test_eps_loss_kinds():
  pred, target = jnp.array([[1.0, -2.0], [0.5, 0.5]]), jnp.array([[0.0, 0.0], [0.0, 1.5]])
  np.testing.assert_allclose(objectives.eps_loss(pred, target, "l2"), [2.5, 0.625])
  np.testing.assert_allclose(objectives.eps_loss(pred, target, "l1"), [1.5, 0.75])
  with pytest.raises(ValueError, match="'l3'"):
    objectives.eps_loss(pred, target, "l3")


@pytest.mark.parametrize("conditioning", ["timestep", "noise_level"])
def test_diffusion_loss_vanishes_for_the_exact_eps(conditioning):
  """Constant data: the exact eps is recoverable from (x_t, t), so the loss is 0 and t is consistent."""
  c = 0.4
  s = schedules.make("linear", T, conditioning=conditioning)
  abar_of_t = full_abar_lookup if conditioning == "timestep" else (lambda t: t / 1000.0)
  exact = lambda x, t: (x - jnp.sqrt(abar_of_t(t))[:, None, None, None] * c) / jnp.sqrt(
      1 - abar_of_t(t))[:, None, None, None]
  x0 = jnp.full((64, 4, 4, 3), c)
  zero = lambda x, t: jnp.zeros_like(x)

  @jax.jit
  def losses(k):
    loss, terms = objectives.diffusion_loss(exact, k, x0, s)
    return (loss, terms["eps"], objectives.diffusion_loss(zero, k, x0, s)[0],
            objectives.diffusion_loss(zero, k, x0, s, loss="l1")[0])

  loss, per_example, zero_l2, zero_l1 = losses(jax.random.key(2))
  assert float(loss) < 1e-6 and per_example.shape == (64,)
  assert float(zero_l2) == pytest.approx(1.0, abs=0.03)  # E[eps^2]
  assert float(zero_l1) == pytest.approx(math.sqrt(2 / math.pi), abs=0.02)  # E|eps|


def test_vb_term_zero_at_the_true_posterior_and_stops_eps_gradient():
  s = schedules.make("linear", T)
  i = jnp.array([1, 10, 500, 999])

  def vb_mean(theta, x0):
    fn = lambda x, t: jnp.concatenate([jnp.zeros_like(x) + theta[0], jnp.zeros_like(x) + theta[1]], -1)
    return objectives.diffusion_loss(fn, jax.random.key(6), x0, s)[1]["vb"].mean()

  @jax.jit
  def run(key):
    k1, k2 = jax.random.split(key)
    x0 = jax.random.uniform(k1, (4, 8, 8, 3), minval=-1, maxval=1)
    noise = jax.random.normal(k2, x0.shape)
    xt = objectives.q_sample_step(x0, i, noise, s)
    # v = -1 selects the posterior variance: with the true eps the model posterior is the true one.
    vb = objectives.vb_terms_bpd(jnp.concatenate([noise, -jnp.ones_like(noise)], -1), x0, xt, i, s)
    vb_large = objectives.vb_terms_bpd(jnp.concatenate([noise, jnp.ones_like(noise)], -1), x0, xt, i, s)
    return vb, vb_large, jax.grad(vb_mean)(jnp.array([0.1, 0.2]), x0)

  vb, vb_large, g = run(jax.random.key(4))
  np.testing.assert_allclose(vb, 0.0, atol=1e-4)
  assert (np.asarray(vb_large[:2]) > 1e-3).all() and (np.asarray(vb_large) >= 0).all()
  assert float(g[0]) == 0.0 and float(g[1]) != 0.0  # the bound trains the variance only


def test_learned_variance_needs_discrete_steps():
  s = schedules.make("linear", 100, conditioning="noise_level")
  with pytest.raises(ValueError, match="discrete steps"):
    jax.eval_shape(lambda: objectives.diffusion_loss(lambda x, t: jnp.concatenate([x, x], -1),
                                                     jax.random.key(0), jnp.zeros((2, 4, 4, 3)), s))


# --- samplers -----------------------------------------------------------------------------------------

def test_learned_range_interpolates_fixed_variances():
  s = schedules.make("linear", T)
  x = jax.random.normal(jax.random.key(7), (3, 4, 4, 3))
  eps = jax.random.normal(jax.random.key(8), x.shape)
  i = jnp.array([0, 5, 900])
  log_var = jax.jit(lambda v, variance: samplers.p_mean_variance(
      jnp.concatenate([eps, jnp.full_like(x, v)], -1), x, i, s, variance=variance)["log_variance"],
                    static_argnums=1)
  np.testing.assert_allclose(log_var(-1.0, "learned_range"), log_var(0.0, "fixed_small"), rtol=1e-6)
  np.testing.assert_allclose(log_var(1.0, "learned_range"),
                             np.log(s.betas[i])[:, None, None, None] * np.ones(x.shape), rtol=1e-6)
  with pytest.raises(ValueError, match="2C channels"):
    jax.eval_shape(lambda: samplers.p_mean_variance(eps, x, i, s, variance="learned_range"))
  with pytest.raises(ValueError, match="returned 4 channels"):
    jax.eval_shape(lambda: samplers.p_mean_variance(x[..., :1].repeat(4, -1), x, i, s))


def test_ddim_deterministic_matches_gaussian_prediction():
  keep = schedules.space_timesteps(T, "ddim100")
  s = schedules.respace(schedules.beta_schedule("linear", T), keep)
  run = jax.jit(lambda key_T, key: samplers.ddim_sample(
      gaussian_oracle(full_abar_lookup), key, SHAPE, s, clip_denoised=False,
      x_T=jax.random.normal(key_T, SHAPE)))
  x = run(jax.random.key(9), jax.random.key(10))
  _, want_std = assert_stats(x, linear_abar_np()[keep], "ddim")
  # The exact recursion itself is a discretisation: 100 deterministic steps reach the data std to ~12%.
  np.testing.assert_allclose(want_std, S, rtol=0.15)
  np.testing.assert_array_equal(run(jax.random.key(9), jax.random.key(11)), x)  # eta 0: no noise drawn


@pytest.mark.parametrize("variance,spacing", [("fixed_small", None), ("fixed_large", "100")])
def test_ddpm_matches_gaussian_prediction(variance, spacing):
  betas = schedules.beta_schedule("linear", T)
  keep = list(range(T)) if spacing is None else schedules.space_timesteps(T, spacing)
  s = schedules.respace(betas, keep)
  x = jax.jit(lambda k: samplers.ddpm_sample(gaussian_oracle(full_abar_lookup), k, SHAPE, s,
                                             variance=variance, clip_denoised=False))(jax.random.key(13))
  want_mean, want_std = assert_stats(x, linear_abar_np()[keep], variance)
  np.testing.assert_allclose(want_mean, MU, atol=1e-3)
  np.testing.assert_allclose(want_std, S, rtol=0.05 if variance == "fixed_small" else 0.15)


def test_ddim_eta_one_is_ddpm_with_posterior_variance():
  s = schedules.respace(schedules.beta_schedule("linear", T), schedules.space_timesteps(T, "20"))
  eps_fn = gaussian_oracle(full_abar_lookup)

  @jax.jit
  def run(key):
    shape = (8, 4, 4, 3)
    return (samplers.ddim_sample(eps_fn, key, shape, s, eta=1.0, clip_denoised=True),
            samplers.ddpm_sample(eps_fn, key, shape, s, variance="fixed_small", clip_denoised=True),
            samplers.ddim_sample(eps_fn, key, shape, s, eta=0.5, clip_denoised=True))

  ddim, ddpm, ddim_half = run(jax.random.key(14))
  np.testing.assert_allclose(ddim, ddpm, atol=2e-4)
  assert np.abs(ddim_half - ddpm).max() > 1e-2
