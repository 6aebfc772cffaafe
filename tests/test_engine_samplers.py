"""Samplers checked without a network: the exact optimal predictor, diffusers' schedulers, and
properties every caller relies on (same seed same images, prompt stop, DDIM eta=1 = ancestral)."""

import math

import numpy as np
import pytest
import torch

from ddpm_studio.config import SamplingConfig
from ddpm_studio.engine.diffusion import GaussianDiffusion, ddim_timesteps
from ddpm_studio.engine.schedules import NoiseSchedule
from ddpm_studio.engine.steps import LOGSNR_SIGMA_MAX

F64 = torch.float64




def _diffusion(kind="linear", T=1000, prediction="epsilon"):
    return GaussianDiffusion(NoiseSchedule.from_config(kind, T), prediction=prediction)


def point_mass_predictor(d: GaussianDiffusion, x_star: torch.Tensor):
    """The exact minimiser of the loss when the data is the single image ``x_star``.

    Written from the definitions (x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, v = sqrt(ab) eps - sqrt(1 - ab) x0)
    with alpha-bar as a product of (1 - beta), not via the code under test.
    """
    ab_all = np.cumprod(1.0 - d.schedule.betas)

    def model(x, t):
        ab = float(ab_all[int(t[0])])
        eps = (x - math.sqrt(ab) * x_star) / math.sqrt(1 - ab)
        if d.prediction == "epsilon":
            return eps
        if d.prediction == "x0":
            return x_star.expand_as(x)
        return math.sqrt(ab) * eps - math.sqrt(1 - ab) * x_star

    return model


def gaussian_predictor(d: GaussianDiffusion, mu: float, s: float):
    """E[eps | x_t] when every pixel of the data is N(mu, s^2): the optimal epsilon predictor."""
    ab_all = np.cumprod(1.0 - d.schedule.betas)

    def model(x, t):
        ab = float(ab_all[int(t[0])])
        return math.sqrt(1 - ab) * (x - math.sqrt(ab) * mu) / (ab * s * s + 1 - ab)

    return model


SAMPLERS = [
    ("ddpm", dict(variance="fixed_small")),
    ("ddpm", dict(variance="fixed_large")),
    ("ddim", dict(steps=50, eta=0.0)),
    ("ddim", dict(steps=50, eta=1.0)),
    ("ddim", dict(steps=7, eta=0.5)),
]


def _run(d, model, shape, sampler, kw, seed=0, **extra):
    g = torch.Generator().manual_seed(seed)
    if sampler == "ddpm":
        return list(d.p_sample_loop_progressive(model, shape, generator=g, dtype=F64, **kw, **extra))
    return list(d.ddim_sample_loop_progressive(model, shape, generator=g, dtype=F64, **kw, **extra))


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("sampler,kw", SAMPLERS)
def test_optimal_predictor_for_a_single_image_returns_it(sampler, kw, prediction):
    d = _diffusion("cosine" if prediction == "v" else "linear", T=200, prediction=prediction)
    x_star = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64) * 1.8 - 0.9
    for clip in (False, True):
        steps = _run(d, point_mass_predictor(d, x_star), (6, 3, 4, 4), sampler, kw, clip_denoised=clip)
        assert steps[-1].t == (0 if sampler == "ddpm" else d.ddim_timesteps(kw["steps"])[-1])
        assert torch.allclose(steps[-1].x_t, x_star.expand(6, -1, -1, -1), atol=1e-6)
        assert torch.allclose(steps[len(steps) // 2].pred_x0, x_star.expand(6, -1, -1, -1), atol=1e-6)


@pytest.mark.parametrize("sampler,kw", [("ddpm", dict(variance="fixed_small")), ("ddim", dict(steps=50, eta=0.0))])
def test_optimal_predictor_for_a_single_image_keeps_every_marginal(sampler, kw):
    """With the exact x_0 known, fixed_small ancestral steps are the true posterior q(x_{t-1}|x_t,x_0) and DDIM
    eta=0 keeps the noise direction, so every x_t must be distributed as q(x_t | x_0) = N(sqrt(ab) x0, 1 - ab)."""
    d = _diffusion(T=250)  # exact for any schedule; a short one keeps the test fast
    x_star = torch.linspace(-0.9, 0.9, 16, dtype=F64).view(1, 1, 4, 4)
    steps = _run(d, point_mass_predictor(d, x_star), (2500, 1, 4, 4), sampler, kw, clip_denoised=False)
    ab_all = np.cumprod(1.0 - d.schedule.betas)
    checked = 0
    for i, step in enumerate(steps[:-1]):
        t_prev = steps[i + 1].t  # x_t after this step is at the next step's timestep
        if i % (len(steps) // 5):
            continue
        ab = ab_all[t_prev]
        r = (step.x_t - math.sqrt(ab) * x_star) / math.sqrt(1 - ab)  # must be N(0, 1) per pixel
        assert abs(r.mean().item()) < 0.02, (step.t, r.mean().item())
        assert abs(r.std().item() - 1) < 0.02, (step.t, r.std().item())
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("sampler,kw,std_tol", [
    ("ddpm", dict(variance="fixed_small"), 0.015),
    ("ddpm", dict(variance="fixed_large"), 0.015),
    ("ddim", dict(steps=1000, eta=0.0), 0.015),
    ("ddim", dict(steps=50, eta=0.0), 0.04),  # 50 large deterministic steps shrink the spread (measured 0.473)
])
def test_optimal_predictor_for_gaussian_data_samples_that_gaussian(sampler, kw, std_tol):
    mu, s = 0.3, 0.5
    d = _diffusion()
    steps = _run(d, gaussian_predictor(d, mu, s), (20000, 1, 1, 1), sampler, kw, clip_denoised=False)
    x = steps[-1].x_t  # standard errors: mean 0.0035, std 0.0025; fixed_small's own bias at T=1000 is -0.004
    assert abs(x.mean().item() - mu) < 0.015
    assert abs(x.std().item() - s) < std_tol
    skew = (((x - x.mean()) / x.std()) ** 3).mean().item()
    assert abs(skew) < 0.08  # still Gaussian: ~5 standard errors of the sample skewness


def _dummy_model(x, t):
    """A deterministic, nonlinear stand-in for a network (large enough to trigger clipping)."""
    scale = 1.0 + t.to(x.dtype).view(-1, 1, 1, 1) / 500.0
    return 2.0 * torch.tanh(0.7 * x * scale) + 0.1 * torch.roll(x, 1, dims=-1)


def test_same_seed_same_samples_and_different_seed_different():
    d = _diffusion(T=100)
    for sampler, kw in SAMPLERS:
        a = _run(d, _dummy_model, (2, 3, 8, 8), sampler, kw, seed=5)[-1].x_t
        b = _run(d, _dummy_model, (2, 3, 8, 8), sampler, kw, seed=5)[-1].x_t
        c = _run(d, _dummy_model, (2, 3, 8, 8), sampler, kw, seed=6)[-1].x_t
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)
    cfg = SamplingConfig(sampler="ddim", steps=10, seed=3)
    assert torch.equal(d.sample(_dummy_model, (1, 1, 8, 8), cfg), d.sample(_dummy_model, (1, 1, 8, 8), cfg))


@pytest.mark.parametrize("sampler,kw", [("ddpm", dict(variance="fixed_small")), ("ddim", dict(steps=20, eta=0.0))])
def test_should_stop_ends_the_chain_before_the_next_model_call(sampler, kw):
    d = _diffusion(T=100)
    calls = []

    def model(x, t):
        calls.append(int(t[0]))
        return _dummy_model(x, t)

    stop_after = 3
    gen = (d.p_sample_loop_progressive if sampler == "ddpm" else d.ddim_sample_loop_progressive)(
        model, (1, 1, 8, 8), should_stop=lambda: len(calls) >= stop_after, generator=torch.Generator().manual_seed(0),
                                                                                                 **kw)
    steps = list(gen)  # ends normally, no exception
    assert len(steps) == stop_after and len(calls) == stop_after


def test_ddim_eta1_over_all_steps_equals_ancestral_with_beta_tilde():
    d = _diffusion(T=200)
    for clip in (False, True):
        ddpm = _run(d, _dummy_model, (3, 2, 8, 8), "ddpm", dict(variance="fixed_small"), seed=9, clip_denoised=clip)
        ddim = _run(d, _dummy_model, (3, 2, 8, 8), "ddim", dict(steps=200, eta=1.0), seed=9, clip_denoised=clip)
        assert [s.t for s in ddpm] == [s.t for s in ddim]
        for a, b in zip(ddpm[::37], ddim[::37]):
            assert torch.allclose(a.x_t, b.x_t, atol=1e-10) and torch.allclose(a.pred_x0, b.pred_x0, atol=1e-10)
        assert torch.allclose(ddpm[-1].x_t, ddim[-1].x_t, atol=1e-10)


def test_step_results_report_progress():
    d = _diffusion(T=30)
    steps = _run(d, _dummy_model, (1, 1, 8, 8), "ddim", dict(steps=10, eta=0.0, spacing="leading"))
    assert [s.t for s in steps] == [27, 24, 21, 18, 15, 12, 9, 6, 3, 0]
    assert [s.t for s in _run(d, _dummy_model, (1, 1, 8, 8), "ddim", dict(steps=10, eta=0.0))] == list(range(29, -1,
                                                                                                             -3))
    assert [s.index for s in steps] == list(range(10)) and {s.total for s in steps} == {10}
    assert all(s.x_t.shape == (1, 1, 8, 8) and s.pred_x0.abs().max() <= 1 for s in steps)
    with pytest.raises(ValueError, match="steps"):
        d.ddim_timesteps(31)
    with pytest.raises(ValueError, match="variance"):
        list(d.p_sample_loop_progressive(_dummy_model, (1, 1, 8, 8), variance="learned"))


# -- diffusers oracle ---------------------------------------------------------------------------
DKIND = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [False, True])
def test_ancestral_step_equals_diffusers_ddpm_scheduler(kind, variance, clip):
    diffusers = pytest.importorskip("diffusers")
    T = 1000
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=DKIND[kind], variance_type=variance,
                                    clip_sample=clip, prediction_type="epsilon")
    d = _diffusion(kind, T)
    g = torch.Generator().manual_seed(0)
    for t in (999, 700, 487, 100, 1, 0):
        x = torch.randn(2, 3, 8, 8, generator=g)
        eps = torch.randn(2, 3, 8, 8, generator=g) * 1.5
        ref = sched.step(eps, t, x, generator=torch.Generator().manual_seed(t))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t))
        ours, pred_x0 = d.p_sample_step(eps, x, t, variance=variance, clip_denoised=clip, noise=noise)
        # diffusers works in float32: near t=0, 1 - alpha-bar keeps only ~3 digits there.
        tol = 2e-3 if t <= 2 else 1e-4
        assert torch.allclose(pred_x0, ref.pred_original_sample, rtol=tol, atol=tol), t
        assert torch.allclose(ours, ref.prev_sample, rtol=tol, atol=tol), t


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 0.6])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_steps_equal_diffusers_ddim_scheduler(kind, eta, clip):
    diffusers = pytest.importorskip("diffusers")
    T, n = 1000, 25
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule=DKIND[kind], clip_sample=clip,
                                    prediction_type="epsilon")
    sched.set_timesteps(n)
    d = _diffusion(kind, T)
    ts = d.ddim_timesteps(n, "leading")  # diffusers' default spacing
    assert ts == sched.timesteps.tolist()
    g = torch.Generator().manual_seed(1)
    for i in (0, 5, n - 2, n - 1):
        t, t_prev = ts[i], (ts[i + 1] if i + 1 < n else -1)
        x = torch.randn(2, 3, 8, 8, generator=g)
        eps = torch.randn(2, 3, 8, 8, generator=g) * 1.5
        noise = torch.randn(2, 3, 8, 8, generator=g)
        ref = sched.step(eps, t, x, eta=eta, use_clipped_model_output=True, variance_noise=noise)
        ours, pred_x0 = d.ddim_step(eps, x, t, t_prev, eta=eta, clip_denoised=clip, noise=noise)
        assert torch.allclose(pred_x0, ref.pred_original_sample, rtol=1e-4, atol=1e-4), t
        assert torch.allclose(ours, ref.prev_sample, rtol=1e-4, atol=1e-4), t


def test_full_chains_equal_diffusers_loops_with_the_same_generator():
    diffusers = pytest.importorskip("diffusers")
    T, shape = 60, (2, 1, 8, 8)
    d = _diffusion("linear", T)
    ddpm = diffusers.DDPMScheduler(num_train_timesteps=T, beta_start=1e-4 * 1000 / T, beta_end=0.02 * 1000 / T,
                                   variance_type="fixed_small", clip_sample=True)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g)
    for t in range(T - 1, -1, -1):
        x = ddpm.step(_dummy_model(x, torch.full((2,), t)), t, x, generator=g).prev_sample
    ours = list(d.p_sample_loop_progressive(_dummy_model, shape, generator=torch.Generator().manual_seed(4)))[-1].x_t
    assert torch.allclose(ours, x, atol=1e-4)

    ddim = diffusers.DDIMScheduler(num_train_timesteps=T, beta_start=1e-4 * 1000 / T, beta_end=0.02 * 1000 / T,
                                   clip_sample=True)
    ddim.set_timesteps(12)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g)
    for t in ddim.timesteps:
        x = ddim.step(_dummy_model(x, torch.full((2,), int(t))), t, x, eta=0.5, use_clipped_model_output=True,
                      generator=g).prev_sample
    ours = list(d.ddim_sample_loop_progressive(_dummy_model, shape, steps=12, eta=0.5, spacing="leading",
                                               generator=torch.Generator().manual_seed(4)))[-1].x_t
    assert torch.allclose(ours, x, atol=1e-4)


# -- timestep spacings --------------------------------------------------------------------------
def _diffusers_ddim_timesteps(T, n, spacing):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    sched.set_timesteps(n)
    return sched.timesteps.tolist()


@pytest.mark.parametrize("T", [50, 1000])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_spacings_equal_diffusers_ddim_scheduler(T, spacing):
    counts = range(1, T + 1) if T <= 50 else [1, 2, 3, 7, 10, 20, 25, 48, 61, 100, 103, 333, 500, 501, 999, 1000]
    extra = 0
    for n in counts:
        ours, theirs = d_ts = ddim_timesteps(T, n, spacing), _diffusers_ddim_timesteps(T, n, spacing)
        assert len(ours) == n and all(a > b for a, b in zip(ours, ours[1:])) and ours[-1] >= 0, (n, d_ts)
        if spacing == "linspace" and n == 1:
            assert ours == [T - 1] and theirs == [0]  # numpy's one-point linspace is its start: we start from noise
        elif spacing == "trailing" and len(theirs) == n + 1:
            assert ours == theirs[:n] and theirs[-1] == -1  # diffusers' float arange overshoots to t = -1 here
            extra += 1
        else:
            assert ours == theirs, n
    if spacing == "trailing":
        assert extra >= 2  # the overshoot is real (e.g. T=50: 29 and 31 steps; T=1000: 61 and 103 steps)


@pytest.mark.parametrize("T", [10, 51, 99, 1000])
def test_trailing_and_linspace_start_every_chain_from_pure_noise(T):
    for n in range(1, T + 1):
        for spacing in ("trailing", "linspace"):
            ts = ddim_timesteps(T, n, spacing)
            assert ts[0] == T - 1 and len(ts) == n and len(set(ts)) == n, (spacing, n)
    assert ddim_timesteps(T, T // 2 + 1, "leading")[0] == T // 2  # the bug of issue 12: far from T - 1


@pytest.mark.parametrize("kind", ["linear", "cosine", "quadratic", "sigmoid"])
@pytest.mark.parametrize("T", [10, 51, 1000])
def test_logsnr_spacing_starts_from_pure_noise_with_distinct_steps_at_every_count(kind, T):
    ab = _diffusion(kind, T).schedule.alphas_cumprod
    for n in range(1, T + 1):
        ts = ddim_timesteps(T, n, "logsnr", alphas_cumprod=ab)
        assert ts[0] == T - 1 and len(ts) == n and all(a > b for a, b in zip(ts, ts[1:])) and ts[-1] >= 0, (n, ts)
    assert ts == list(range(T - 1, -1, -1))  # n = T: every timestep
    with pytest.raises(ValueError, match="needs the noise schedule"):
        ddim_timesteps(T, 2, "logsnr")
    with pytest.raises(ValueError, match="resolve it with"):
        ddim_timesteps(T, 2, "auto", alphas_cumprod=ab)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_logsnr_steps_are_even_in_log_snr_and_skip_the_cosine_schedules_last_timestep(kind):
    d = _diffusion(kind, 1000)
    ab = d.schedule.alphas_cumprod
    lam = 0.5 * np.log(ab / (1 - ab))
    ts = ddim_timesteps(1000, 6, "logsnr", alphas_cumprod=ab)
    gaps = np.diff(lam[ts[1:]])  # after the start at T-1, equal steps in lambda (to the timestep grid)
    assert gaps.min() > 0.9 * gaps.max(), gaps
    # from the start of the grid (lambda of T-1, but at most sigma/alpha = 160) to lambda_0, in 6 steps
    start = max(lam[-1], -math.log(LOGSNR_SIGMA_MAX))
    assert gaps.mean() == pytest.approx((lam[0] - start) / 6, rel=0.05)
    # more of a short chain at low noise than trailing: a third of its steps below t = 150, trailing none
    assert sum(t < 150 for t in ts) == 2 and min(ddim_timesteps(1000, 6, "trailing")) > 150
    if kind == "cosine":  # its last timestep alone has sigma/alpha = 2e4; the second step does not sit beside it
        assert ts[1] < 990


def _quantile_noise(n=4001):
    """x_T as n standard-normal quantiles scaled to mean 0 and std 1 exactly: a deterministic chain's
    output statistics are then its own, free of sampling error."""
    from statistics import NormalDist

    q = torch.tensor([NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)], dtype=F64)
    return (q / q.std()).view(n, 1, 1, 1)


@pytest.mark.parametrize("kind", ["linear", "cosine", "quadratic", "sigmoid"])
@pytest.mark.parametrize("spacing", ["trailing", "linspace", "logsnr"])
def test_ddim_with_the_exact_denoiser_matches_the_data_at_every_step_count(kind, spacing):
    mu, s, T = 0.3, 0.5, 1000
    d = _diffusion(kind, T)
    model = gaussian_predictor(d, mu, s)
    for n in (T // 4, T // 2 + 1, T - 1, T):
        x = list(d.ddim_sample_loop_progressive(model, (1,), steps=n, clip_denoised=False, spacing=spacing,
                                                noise=_quantile_noise()))[-1].x_t
        assert abs(x.mean().item() - mu) < 0.02 * mu, (n, x.mean().item())
        assert abs(x.std().item() - s) < 0.02 * s, (n, x.std().item())
    # one step from t = T-1 is the posterior mean E[x_0 | x_T]: mean mu, spread sqrt(ab) s^2 / (ab s^2 + 1 - ab)
    ab = float(np.prod(1.0 - d.schedule.betas))
    x = list(d.ddim_sample_loop_progressive(model, (1,), steps=1, clip_denoised=False, spacing=spacing,
                                            noise=_quantile_noise()))[-1].x_t
    assert abs(x.mean().item() - mu) < 0.02 * mu
    assert x.std().item() == pytest.approx(math.sqrt(ab) * s * s / (ab * s * s + 1 - ab), rel=0.02)


def test_leading_spacing_above_half_of_T_misses_the_data():
    """The bug the trailing default fixes: leading with T/2 + 1 steps starts at t = T/2 (issue 12: std 0.63)."""
    mu, s, T = 0.3, 0.5, 1000
    d = _diffusion("cosine", T)
    x = list(d.ddim_sample_loop_progressive(gaussian_predictor(d, mu, s), (1,), steps=T // 2 + 1, clip_denoised=False,
                                            spacing="leading", noise=_quantile_noise()))[-1].x_t
    assert abs(x.std().item() - s) > 0.1


def test_bad_spacing_is_refused_with_the_allowed_values():
    allowed = "auto, trailing, linspace, logsnr, leading"
    with pytest.raises(ValueError, match=f"sampling.spacing must be one of {allowed}; got 'even'"):
        ddim_timesteps(100, 10, "even")
