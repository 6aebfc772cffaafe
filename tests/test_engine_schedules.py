"""Schedules and the forward process, checked against independent computations.

Oracles: hand-written recursions and Gaussian conditioning in float64, closed-form values known
from the paper / diffusers' own tests, and diffusers' DDPMScheduler when it is installed.
"""

import math

import numpy as np
import pytest
import torch

from ddpm_studio.config import DiffusionConfig
from ddpm_studio.engine.diffusion import GaussianDiffusion
from ddpm_studio.engine.schedules import SCHEDULE_KINDS, NoiseSchedule, get_betas

F64 = torch.float64





def test_linear_schedule_is_the_papers_and_scales_with_T():
    b = get_betas("linear", 1000)
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == pytest.approx(1e-4, abs=1e-15) and b[-1] == pytest.approx(0.02, abs=1e-15)
    assert np.allclose(np.diff(b), (0.02 - 1e-4) / 999)
    b100 = get_betas("linear", 100)  # ends scaled by 1000 / T
    assert b100[0] == pytest.approx(1e-3) and b100[-1] == pytest.approx(0.2)
    for kind in SCHEDULE_KINDS:
        for T in (10, 37, 1000, 4000):
            betas = get_betas(kind, T)
            assert betas.shape == (T,) and np.all(betas > 0) and np.all(betas <= 0.999), (kind, T)
            if kind != "cosine":
                assert np.all(np.diff(betas) >= -1e-15), (kind, T)  # non-decreasing


def test_cosine_schedule_matches_alpha_bar_formula():
    T = 1000
    s = NoiseSchedule.from_config("cosine", T)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = np.array([f((t + 1) / T) / f(0) for t in range(T)])
    # Away from the clipped end, alpha-bar_t is exactly f(t/T) / f(0) (Nichol & Dhariwal eq. 17).
    assert np.allclose(s.alphas_cumprod[:900], expected[:900], rtol=1e-10)


def test_derived_arrays_against_direct_formulas():
    s = NoiseSchedule.from_config("quadratic", 300)
    ab = np.array([np.prod(1 - s.betas[: t + 1]) for t in range(300)])  # product, not cumprod
    assert np.allclose(s.alphas_cumprod, ab, rtol=1e-12)
    assert np.allclose(s.alphas_cumprod_prev[1:], ab[:-1]) and s.alphas_cumprod_prev[0] == 1.0
    assert np.allclose(s.sqrt_recip_alphas_cumprod * s.sqrt_alphas_cumprod, 1.0)
    assert np.allclose(s.sqrt_recipm1_alphas_cumprod**2, (1 - ab) / ab)
    assert np.allclose(s.snr, ab / (1 - ab))
    assert s.posterior_variance[0] == 0.0
    assert s.posterior_log_variance_clipped[0] == pytest.approx(math.log(s.posterior_variance[1]))
    assert np.allclose(np.exp(s.posterior_log_variance_clipped[1:]), s.posterior_variance[1:])
    for name in ("betas", "alphas", "alphas_cumprod", "posterior_mean_coef1", "posterior_mean_coef2", "snr",
                 "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):
        assert getattr(s, name).dtype == np.float64, name


def test_closed_form_values_linear_T1000():
    s = NoiseSchedule.from_config("linear", 1000)
    assert s.posterior_variance[0] == pytest.approx(0.0, abs=1e-12)
    assert s.posterior_variance[487] == pytest.approx(0.00979, abs=1e-5)
    assert s.posterior_variance[999] == pytest.approx(0.02, abs=1e-5)  # fixed_small at the end
    assert s.betas[999] == pytest.approx(0.02, abs=1e-12)  # fixed_large at the end
    assert s.alphas_cumprod[-1] == pytest.approx(4.036e-5, rel=1e-3)  # L_T is ~0: x_T is almost pure noise


def test_bad_schedule_input_is_refused():
    with pytest.raises(ValueError, match="schedule must be one of"):
        get_betas("exponential", 100)
    with pytest.raises(ValueError, match="timesteps"):
        get_betas("linear", 0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        NoiseSchedule(np.array([0.1, 1.5]))


def test_closed_form_q_equals_composed_one_step_transitions_exactly():
    """Compose t q_step's as affine maps in float64: mean coefficient and variance must equal the closed form."""
    for kind in ("linear", "cosine"):
        d = GaussianDiffusion(NoiseSchedule.from_config(kind, 1000))
        zero, one = torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64)
        coef, var = 1.0, 0.0  # x_t = coef * x_0 + N(0, var)
        for t in range(1000):
            c_x = d.q_step(one, t, zero).item()  # how q_step scales its input
            c_n = d.q_step(zero, t, one).item()  # how it scales its noise
            coef, var = c_x * coef, c_x**2 * var + c_n**2
            if t in (0, 1, 10, 487, 999):
                x0 = torch.tensor([0.7], dtype=F64)
                assert d.q_sample(x0, t, zero).item() == pytest.approx(coef * 0.7, rel=1e-10, abs=1e-14)
                assert d.q_sample(zero, t, one).item() ** 2 == pytest.approx(var, rel=1e-10)


def test_closed_form_q_equals_composed_transitions_in_samples():
    d = GaussianDiffusion(NoiseSchedule.from_config("linear", 1000))
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.8, -0.5, 0.1], dtype=F64).repeat(20000, 1)  # (N, 3)
    x = x0.clone()
    for t in range(300):
        x = d.q_step(x, t, torch.randn(x.shape, generator=g, dtype=F64))
        if t in (49, 299):
            direct = d.q_sample(x0, torch.full((x0.shape[0],), t), torch.randn(x.shape, generator=g, dtype=F64))
            for a in (x, direct):
                assert torch.allclose(a.mean(0), x0[0] * math.sqrt(d.schedule.alphas_cumprod[t]), atol=0.025)
                assert torch.allclose(a.var(0), torch.full((3,), 1 - d.schedule.alphas_cumprod[t], dtype=F64),
                                      rtol=0.04)


def test_posterior_equals_gaussian_conditioning():
    """q(x_{t-1} | x_t, x_0) by conditioning the joint Gaussian of (x_{t-1}, x_t) given x_0."""
    s = NoiseSchedule.from_config("cosine", 200)
    d = GaussianDiffusion(s)
    rng = np.random.default_rng(0)
    for t in (1, 2, 50, 120, 199):
        ab_prev, alpha, beta = np.prod(1 - s.betas[:t]), 1 - s.betas[t], s.betas[t]
        x0, xt = rng.normal(size=5), rng.normal(size=5)
        m1, v1 = math.sqrt(ab_prev) * x0, 1 - ab_prev  # x_{t-1} | x_0
        m2, v2 = math.sqrt(alpha) * m1, alpha * v1 + beta  # x_t | x_0
        cov12 = math.sqrt(alpha) * v1
        mean_ref = m1 + cov12 / v2 * (xt - m2)
        var_ref = v1 - cov12**2 / v2
        tt = torch.full((5,), t)
        mean, var, log_var = d.q_posterior(torch.from_numpy(x0), torch.from_numpy(xt), tt)
        assert np.allclose(mean.numpy(), mean_ref, rtol=1e-10, atol=1e-12)
        assert np.allclose(var.numpy(), var_ref, rtol=1e-10)
        assert np.allclose(log_var.numpy(), np.log(var_ref), rtol=1e-10)
    # t = 0: x_{t-1} is x_0 itself
    x0 = torch.randn(4, dtype=F64)
    mean, var, _ = d.q_posterior(x0, torch.randn(4, dtype=F64), 0)
    assert torch.allclose(mean, x0) and torch.all(var == 0)


def test_from_config():
    d = GaussianDiffusion.from_config(DiffusionConfig(schedule="sigmoid", timesteps=123, prediction="v",
                                                      loss_weighting="min_snr", min_snr_gamma=3.0))
    assert d.T == 123 and d.prediction == "v" and d.loss_weighting == "min_snr" and d.min_snr_gamma == 3.0
    with pytest.raises(ValueError, match="prediction"):
        GaussianDiffusion(d.schedule, prediction="score")
    if "betas" in DiffusionConfig.__dataclass_fields__:  # explicit schedules of imported models
        betas = tuple(np.linspace(1e-3, 0.05, 40))
        d = GaussianDiffusion.from_config(DiffusionConfig(timesteps=40, betas=betas))
        assert d.T == 40 and np.allclose(d.schedule.betas, betas)
        assert np.allclose(d.schedule.alphas_cumprod, np.cumprod(1 - np.array(betas)))


# -- diffusers oracle ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind,dkind", [("linear", "linear"), ("cosine", "squaredcos_cap_v2"),
                                        ("quadratic", "scaled_linear"), ("sigmoid", "sigmoid")])
@pytest.mark.parametrize("T", [1000, 250])
def test_schedules_equal_diffusers(kind, dkind, T):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_start=1e-4 * 1000 / T, beta_end=0.02 * 1000 / T,
                                    beta_schedule=dkind)
    s = NoiseSchedule.from_config(kind, T)
    assert np.allclose(s.betas, sched.betas.double().numpy(), rtol=2e-6, atol=1e-9)
    assert np.allclose(s.alphas_cumprod, sched.alphas_cumprod.double().numpy(), rtol=5e-5, atol=1e-9)
    var = np.array([float(sched._get_variance(t)) for t in (0, 1, T // 2, T - 1)])
    # diffusers is float32: 1 - alpha-bar loses digits near t=0
    assert np.allclose(s.posterior_variance[[0, 1, T // 2, T - 1]], var, rtol=1e-3, atol=1e-12)
