"""DPM-Solver++ checked against diffusers' DPMSolverMultistepScheduler step for step and chain for chain,
against DDIM (its first order), and with the exact optimal denoiser for Gaussian data."""

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from ddpm_studio.config import SamplingConfig
from ddpm_studio.engine.diffusion import GaussianDiffusion
from ddpm_studio.engine.dpm_solver import (DPMSolverPP, dpm_solver_sample_loop_progressive, dpm_solver_timesteps,
                                           threshold_x0)
from ddpm_studio.engine.schedules import NoiseSchedule
from ddpm_studio.engine.steps import logsnr_timesteps
from ddpm_studio.engine.unipc import unipc_sample_loop_progressive

F64 = torch.float64
DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "x0": "sample", "v": "v_prediction"}


def _diffusion(kind="linear", T=1000, prediction="epsilon"):
    return GaussianDiffusion(NoiseSchedule.from_config(kind, T), prediction=prediction)


_conv = torch.nn.Conv2d(3, 3, 3, padding=1, bias=True).double().requires_grad_(False)
torch.nn.init.normal_(_conv.weight, std=0.3, generator=torch.Generator().manual_seed(0))
torch.nn.init.normal_(_conv.bias, std=0.1, generator=torch.Generator().manual_seed(1))


def toy_model(x, t):
    """A fixed random conv in float64: deterministic, nonlinear, t-dependent, O(1) outputs."""
    return torch.tanh(_conv(x.to(F64))) * (1.0 + t.to(F64).view(-1, 1, 1, 1) / 1000.0) + 0.3 * x.to(F64)


def _scheduler(d, n, *, order, sde, spacing, lower_order_final=True, thresholding=False, ratio=0.995, max_value=1.0,
               float64_sigmas=True):
    """diffusers' scheduler on our betas. It computes alpha-bar by a float32 cumprod and keeps its sigmas in
    float32; near t = T-1 of the linear schedule (alpha_t = 0.006) that alone moves an unclipped x_0
    estimate of size ~100 by ~4e-5. ``float64_sigmas`` hands it our float64 sigmas, so that the
    comparison measures the solver, not the rounding of the schedule (its samples stay float32)."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=d.T, trained_betas=d.schedule.betas, solver_order=order,
        prediction_type=DIFFUSERS_PREDICTION[d.prediction], algorithm_type="sde-dpmsolver++" if sde else "dpmsolver++",
        solver_type="midpoint", timestep_spacing="trailing" if spacing == "logsnr" else spacing,
        lower_order_final=lower_order_final,
        final_sigmas_type="zero", thresholding=thresholding, dynamic_thresholding_ratio=ratio,
                                                  sample_max_value=max_value)
    if spacing == "logsnr":  # not a diffusers spacing: hand it our timesteps
        sched.set_timesteps(timesteps=logsnr_timesteps(d.schedule.alphas_cumprod, n))
    else:
        sched.set_timesteps(n)
    if float64_sigmas:
        ab = d.schedule.alphas_cumprod[sched.timesteps.numpy()]
        sched.sigmas = torch.from_numpy(np.append(np.sqrt((1 - ab) / ab), 0.0))  # diffusers' VE sigma, then 0
    return sched


def _compare_step_by_step(d, n, *, order, sde, spacing, lower_order_final=True, clip=False, dynamic=0.0,
                          threshold_max=math.inf, float64_sigmas=True):
    """Feed the same x and model output to both at every step; returns the largest differences seen,
    relative to the size of the values compared (at least 1)."""
    thresholding = clip or dynamic > 0
    sched = _scheduler(d, n, order=order, sde=sde, spacing=spacing, lower_order_final=lower_order_final,
                       thresholding=thresholding, ratio=dynamic if dynamic > 0 else 0.995,
                       max_value=threshold_max if dynamic > 0 else 1.0,  # diffusers' sample_max_value 1 = clipping
                       float64_sigmas=float64_sigmas)
    ours = DPMSolverPP(d, n, order=order, sde=sde, spacing=spacing, lower_order_final=lower_order_final,
                       clip_denoised=clip, dynamic_threshold=dynamic, threshold_max=threshold_max)
    assert ours.timesteps == sched.timesteps.tolist()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=F64)
    err_x = err_x0 = 0.0
    for i, t in enumerate(ours.timesteps):
        out = toy_model(x, torch.full((2,), t))
        z = torch.randn(x.shape, generator=g, dtype=F64)
        ref = sched.step(out, t, x, variance_noise=z).prev_sample
        mine, pred_x0 = ours.step(out, i, x, noise=z if ours.needs_noise(i) else None)
        ref_x0 = sched.model_outputs[-1]
        err_x = max(err_x, (mine - ref).abs().max().item() / max(1.0, ref.abs().max().item()))
        err_x0 = max(err_x0, (pred_x0 - ref_x0).abs().max().item() / max(1.0, ref_x0.abs().max().item()))
        x = mine
    assert x.std() > 0.05  # an image-like sample, not a constant
    return err_x, err_x0


VARIANTS = [(2, False), (3, False), (2, True), (3, True)]  # (order, SDE); dpmpp-2m, -3m, -2m-sde (+ 3M SDE)


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("order,sde", VARIANTS)
@pytest.mark.parametrize("n,spacing,kind", [(10, "trailing", "linear"), (20, "linspace", "cosine"),
                                            (7, "leading", "linear"), (16, "trailing", "cosine"),
                                            (10, "logsnr", "linear"), (12, "logsnr", "cosine")])
def test_steps_equal_diffusers_dpm_solver_multistep(prediction, order, sde, n, spacing, kind):
    d = _diffusion(kind, prediction=prediction)
    err_x, err_x0 = _compare_step_by_step(d, n, order=order, sde=sde, spacing=spacing)
    assert err_x < 1e-5 and err_x0 < 1e-5, (err_x, err_x0)  # diffusers keeps the sample in float32


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_steps_equal_diffusers_with_its_own_float32_schedule(prediction):
    d = _diffusion("linear", prediction=prediction)
    err_x, err_x0 = _compare_step_by_step(d, 20, order=2, sde=False, spacing="trailing", float64_sigmas=False)
    assert err_x < 1e-5 and err_x0 < 1e-5, (err_x, err_x0)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("clip,dynamic,threshold_max", [(True, 0.0, math.inf), (False, 0.9, 1.5), (False, 0.95,
                                                                                                   math.inf)])
def test_clipping_and_dynamic_thresholding_equal_diffusers_thresholding(prediction, clip, dynamic, threshold_max):
    d = _diffusion("linear", prediction=prediction)
    max_value = 1e9 if threshold_max == math.inf else threshold_max
    err_x, err_x0 = _compare_step_by_step(d, 12, order=2, sde=False, spacing="trailing", clip=clip, dynamic=dynamic,
                                          threshold_max=max_value)
    assert err_x < 1e-5 and err_x0 < 1e-5, (err_x, err_x0)


def test_lower_order_final_off_equals_diffusers_too():
    d = _diffusion("cosine", prediction="v")
    err_x, _ = _compare_step_by_step(d, 8, order=3, sde=False, spacing="trailing", lower_order_final=False)
    assert err_x < 1e-5
    on, off = (DPMSolverPP(d, 8, order=3, lower_order_final=f) for f in (True, False))
    assert [on.order_at(i) for i in range(8)] == [1, 2, 3, 3, 3, 3, 2, 1]
    assert [off.order_at(i) for i in range(8)] == [1, 2, 3, 3, 3, 3, 3, 1]  # into sigma = 0 is always first order
    long = DPMSolverPP(d, 20, order=3)
    assert [long.order_at(i) for i in (17, 18, 19)] == [3, 3, 1]  # 15 steps or more: only the last is lowered


@pytest.mark.parametrize("order,sde", VARIANTS)
@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("clip", [True, False])
def test_whole_chain_equals_diffusers_with_identical_noise(order, sde, prediction, clip):
    """Our generator loop vs a diffusers loop fed the same x_T and, for the SDE, the same noise in the same order."""
    d, n, shape = _diffusion("cosine", prediction=prediction), 12, (2, 3, 8, 8)
    steps = list(dpm_solver_sample_loop_progressive(d, toy_model, shape, steps=n, order=order, sde=sde,
                                                    clip_denoised=clip, generator=torch.Generator().manual_seed(7),
                                                    dtype=F64))
    sched = _scheduler(d, n, order=order, sde=sde, spacing="trailing", thresholding=clip, max_value=1.0)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=g, dtype=F64)
    for i, t in enumerate(sched.timesteps):
        z = torch.randn(shape, generator=g, dtype=F64) if sde and i < n - 1 else None
        x = sched.step(toy_model(x, torch.full((2,), int(t))), t, x, variance_noise=z).prev_sample
        assert (steps[i].x_t - x).abs().max().item() < 1e-5 * max(1.0, x.abs().max().item()), i
    assert [s.t for s in steps] == sched.timesteps.tolist() and steps[-1].t == round(1000 / n) - 1
    assert torch.equal(steps[-1].x_t, steps[-1].pred_x0)  # the last step lands on x_theta itself
    assert [s.index for s in steps] == list(range(n)) and {s.total for s in steps} == {n}


def test_sde_noise_comes_from_the_generator_in_diffusers_order():
    """float32, one generator for x_T and every step's noise, as diffusers' pipelines draw them."""
    d, n, shape = _diffusion("linear", prediction="epsilon"), 10, (2, 3, 8, 8)

    def model32(x, t):
        return toy_model(x, t).float()

    ours = list(dpm_solver_sample_loop_progressive(d, model32, shape, steps=n, sde=True,
                                                   generator=torch.Generator().manual_seed(5)))[-1].x_t
    sched = _scheduler(d, n, order=2, sde=True, spacing="trailing", thresholding=True, max_value=1.0)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=g)
    for t in sched.timesteps:
        x = sched.step(model32(x, torch.full((2,), int(t))), t, x, generator=g).prev_sample
    assert ours.dtype == torch.float32 and (ours - x).abs().max().item() < 1e-4
    other = list(dpm_solver_sample_loop_progressive(d, model32, shape, steps=n, sde=True,
                                                    generator=torch.Generator().manual_seed(6)))[-1].x_t
    assert (other - ours).abs().max().item() > 0.1


@pytest.mark.parametrize("T", [50, 1000])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_equal_diffusers_dpm_solver_spacing(T, spacing):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    counts = range(1, T) if T <= 50 else [1, 2, 5, 10, 20, 25, 61, 100, 499, 500, 501, 998, 999]
    for n in counts:
        sched.set_timesteps(n)
        theirs, ours = sched.timesteps.tolist(), dpm_solver_timesteps(T, n, spacing)
        assert len(ours) == n and all(a > b for a, b in zip(ours, ours[1:])) and ours[-1] >= 0
        assert ours == theirs[:n], n  # diffusers' trailing overshoots to t = -1 for some n (see the DDIM test)
        if spacing != "leading":
            assert ours[0] == T - 1
    assert dpm_solver_timesteps(T, T, "linspace") == list(range(T - 1, -1, -1))  # diffusers repeats timesteps there
    assert dpm_solver_timesteps(T, T, "trailing") == list(range(T - 1, -1, -1))
    with pytest.raises(ValueError, match="at most T-1"):
        dpm_solver_timesteps(T, T, "leading")


@pytest.mark.parametrize("clip", [False, True])
def test_first_order_is_ddim(clip):
    d = _diffusion("cosine", prediction="v")
    for spacing in ("trailing", "leading"):
        kw = dict(generator=torch.Generator().manual_seed(2), dtype=F64, clip_denoised=clip)
        dpm = list(dpm_solver_sample_loop_progressive(d, toy_model, (2, 3, 8, 8), steps=15, order=1, spacing=spacing,
                                                      **kw))
        # DPM-Solver's "leading" is not DDIM's: hand DDIM the same timesteps through a one-off spacing
        kw["generator"] = torch.Generator().manual_seed(2)
        if spacing == "leading":
            d.ddim_timesteps = lambda steps, sp, offset=0: dpm_solver_timesteps(d.T, steps, "leading")
        ddim = list(d.ddim_sample_loop_progressive(toy_model, (2, 3, 8, 8), steps=15, eta=0.0, spacing=spacing, **kw))
        assert [s.t for s in dpm] == [s.t for s in ddim]
        for a, b in zip(dpm, ddim):
            assert torch.allclose(a.x_t, b.x_t, atol=1e-12) and torch.allclose(a.pred_x0, b.pred_x0, atol=1e-12)


def _quantile_noise(n=4001):
    q = torch.tensor([NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)], dtype=F64)
    return (q / q.std()).view(n, 1, 1, 1)


def gaussian_model(d: GaussianDiffusion, mu: float, s: float):
    """The exact optimal network for data N(mu, s^2), in the diffusion's prediction type:
    x0_hat = E[x_0 | x_t] = mu + sqrt(ab) s^2 (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab)."""
    ab_all = np.cumprod(1.0 - d.schedule.betas)

    def model(x, t):
        ab = float(ab_all[int(t[0])])
        x0 = mu + math.sqrt(ab) * s * s * (x - math.sqrt(ab) * mu) / (ab * s * s + 1 - ab)
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        return {"epsilon": eps, "x0": x0, "v": math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0}[d.prediction]

    return model


@pytest.mark.parametrize("kind", ["linear", "cosine", "quadratic", "sigmoid"])
@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("loop", [dpm_solver_sample_loop_progressive, unipc_sample_loop_progressive],
                         ids=["dpm-solver++", "unipc"])
def test_exact_denoiser_gives_the_data_and_beats_ddim_at_few_steps(kind, prediction, loop):
    mu, s = 0.3, 0.5
    d = _diffusion(kind, prediction=prediction)
    model = gaussian_model(d, mu, s)
    for order in (2, 3):
        x = list(loop(d, model, (1,), steps=50, order=order, clip_denoised=False, noise=_quantile_noise()))[-1].x_t
        assert abs(x.mean().item() - mu) < 0.02 * mu and abs(x.std().item() - s) < 0.02 * s, (order, x.std().item())
    for n in (5, 10, 20):  # the spread a deterministic few-step chain loses: the solver (order 2) loses less than DDIM
        dpm = list(loop(d, model, (1,), steps=n, clip_denoised=False, noise=_quantile_noise()))[-1].x_t
        ddim = list(d.ddim_sample_loop_progressive(model, (1,), steps=n, clip_denoised=False,
                                                   noise=_quantile_noise()))[-1].x_t
        assert abs(dpm.std().item() - s) < abs(ddim.std().item() - s), n


def test_sde_variant_with_the_exact_denoiser_samples_the_data():
    mu, s = 0.3, 0.5
    d = _diffusion("cosine", prediction="v")
    x = list(dpm_solver_sample_loop_progressive(d, gaussian_model(d, mu, s), (40000,), steps=50, sde=True,
                                                clip_denoised=False, generator=torch.Generator().manual_seed(0),
                                                dtype=F64))[-1].x_t
    # standard errors: mean 0.0025 (0.8 %), std 0.0018 (0.4 %)
    assert abs(x.mean().item() - mu) < 0.03 * mu and abs(x.std().item() - s) < 0.02 * s


def test_dispatch_same_seed_same_images_and_prompt_stop():
    d = _diffusion("cosine", T=100, prediction="v")
    for sampler in ("dpmpp-2m", "dpmpp-3m", "dpmpp-2m-sde", "unipc"):  # the multistep solvers
        cfg = SamplingConfig(sampler=sampler, steps=8, seed=3)
        a = list(d.sample_progressive(toy_model, (2, 3, 8, 8), cfg))
        assert len(a) == 8 and a[0].t == 99
        assert torch.equal(a[-1].x_t, d.sample(toy_model, (2, 3, 8, 8), cfg))
        assert not torch.equal(a[-1].x_t, d.sample(toy_model, (2, 3, 8, 8), SamplingConfig(sampler=sampler, steps=8,
                                                                                           seed=4)))
        calls = []

        def counting(x, t):
            calls.append(int(t[0]))
            return toy_model(x, t)

        steps = list(d.sample_progressive(counting, (1, 3, 8, 8), cfg, should_stop=lambda: len(calls) >= 3))
        assert len(steps) == 3 and len(calls) == 3


def test_bad_settings_are_refused_with_clear_messages():
    d = _diffusion(T=100)
    with pytest.raises(ValueError, match="order must be one of 1, 2, 3; got 4"):
        DPMSolverPP(d, 10, order=4)
    with pytest.raises(ValueError, match="sampling.steps must be a whole number from 1 to T=100; got 101"):
        DPMSolverPP(d, 101)
    sde = DPMSolverPP(d, 5, sde=True)
    with pytest.raises(ValueError, match="needs noise"):
        sde.step(torch.zeros(1, 3, 8, 8), 0, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="in order"):
        DPMSolverPP(d, 5).step(torch.zeros(1, 3, 8, 8), 2, torch.zeros(1, 3, 8, 8))
    SamplingConfig(sampler="ddim", dynamic_threshold=0.99).validate()  # every sampler bounds x_0 the same way


def test_threshold_x0():
    x = torch.tensor([[0.5, -3.0, 2.0, 0.2]]).view(1, 1, 2, 2)
    assert torch.equal(threshold_x0(x, clip=True), x.clamp(-1, 1))
    assert torch.equal(threshold_x0(x, clip=False), x)
    y = threshold_x0(x, dynamic=1.0)  # s = max |x| = 3: everything divided by 3
    assert torch.allclose(y, x / 3.0)
    assert torch.equal(threshold_x0(x * 0.1, dynamic=0.9), x * 0.1)  # s >= 1: small images pass unchanged
