"""UniPC checked against diffusers' UniPCMultistepScheduler step for step and chain for chain, and with
the exact optimal denoiser for Gaussian data (also in test_engine_dpm_solver.py, which runs its
exact-denoiser and dispatch tests on UniPC too)."""

import math

import numpy as np
import pytest
import torch
from test_engine_dpm_solver import DIFFUSERS_PREDICTION, F64, _diffusion, _quantile_noise, gaussian_model, toy_model

from ddpm_studio.config import SamplingConfig
from ddpm_studio.engine.dpm_solver import dpm_solver_sample_loop_progressive
from ddpm_studio.engine.steps import logsnr_timesteps, trailing_timesteps
from ddpm_studio.engine.unipc import UniPC, unipc_sample_loop_progressive


def _scheduler(d, n, *, order, solver_type="bh2", spacing="trailing", lower_order_final=True, thresholding=False,
               ratio=0.995, max_value=1.0, corrector=True, float64_sigmas=True):
    """diffusers' UniPC on our betas; ``float64_sigmas`` hands it our float64 sigmas (as in the
    DPM-Solver++ tests: its own are a float32 cumprod, which alone moves x_0 estimates near t = T-1)."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=d.T, trained_betas=d.schedule.betas, solver_order=order,
        prediction_type=DIFFUSERS_PREDICTION[d.prediction], predict_x0=True, solver_type=solver_type,
        timestep_spacing=spacing, lower_order_final=lower_order_final, final_sigmas_type="zero",
        disable_corrector=[] if corrector else list(range(n)), thresholding=thresholding,
        dynamic_thresholding_ratio=ratio, sample_max_value=max_value)
    sched.set_timesteps(n)
    if float64_sigmas:
        ab = d.schedule.alphas_cumprod[sched.timesteps.numpy()]
        sched.sigmas = torch.from_numpy(np.append(np.sqrt((1 - ab) / ab), 0.0))
    return sched


def _rel(a, b):
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


def _compare_step_by_step(d, n, *, order, solver_type="bh2", spacing="trailing", lower_order_final=True,
                          corrector=True, clip=False, dynamic=0.0, threshold_max=math.inf, float64_sigmas=True):
    """Feed the same x and model output to both at every step; the largest relative differences of
    x_next and of x_0 (diffusers' model_outputs[-1]). Without lower_order_final diffusers' last step
    (into sigma = 0 at full order) has r_k = 0 and a singular system, so there only x_0 is compared."""
    thresholding = clip or dynamic > 0
    sched = _scheduler(d, n, order=order, solver_type=solver_type, spacing=spacing,
                       lower_order_final=lower_order_final, thresholding=thresholding,
                       ratio=dynamic if dynamic > 0 else 0.995, max_value=threshold_max if dynamic > 0 else 1.0,
                       corrector=corrector, float64_sigmas=float64_sigmas)
    ours = UniPC(d, n, order=order, solver_type=solver_type, spacing=spacing, lower_order_final=lower_order_final,
                 corrector=corrector, clip_denoised=clip, dynamic_threshold=dynamic, threshold_max=threshold_max)
    assert ours.timesteps == sched.timesteps.tolist()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=F64)
    err_x = err_x0 = 0.0
    for i, t in enumerate(ours.timesteps):
        out = toy_model(x, torch.full((2,), t))
        mine, pred_x0 = ours.step(out, i, x)
        if lower_order_final or i < n - 1:
            ref = sched.step(out, t, x).prev_sample
            err_x, err_x0 = max(err_x, _rel(mine, ref)), max(err_x0, _rel(pred_x0, sched.model_outputs[-1]))
        else:
            err_x0 = max(err_x0, _rel(pred_x0, sched.convert_model_output(out, sample=x)))
        x = mine
    assert torch.equal(x, pred_x0) and x.std() > 0.05  # x_0 is the last estimate; image-like, not a constant
    return err_x, err_x0


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("n,spacing,kind", [(5, "trailing", "linear"), (10, "trailing", "cosine"),
                                            (20, "linspace", "cosine"), (7, "leading", "linear")])
def test_steps_equal_diffusers_unipc_multistep(prediction, order, n, spacing, kind):
    d = _diffusion(kind, prediction=prediction)
    err_x, err_x0 = _compare_step_by_step(d, n, order=order, spacing=spacing)
    assert err_x < 1e-5 and err_x0 < 1e-5, (err_x, err_x0)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("order,n", [(2, 5), (3, 10), (3, 16)])
def test_bh1_equals_diffusers_too(prediction, order, n):
    d = _diffusion("cosine", prediction=prediction)
    err_x, err_x0 = _compare_step_by_step(d, n, order=order, solver_type="bh1")
    assert err_x < 1e-5 and err_x0 < 1e-5, (err_x, err_x0)
    a, b = (list(unipc_sample_loop_progressive(d, toy_model, (2, 3, 8, 8), steps=n, order=order, solver_type=s,
                                               generator=torch.Generator().manual_seed(1), dtype=F64))[-1].x_t
            for s in ("bh1", "bh2"))
    assert (a - b).abs().max().item() > 1e-4  # the two B(h) are different solvers


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_steps_equal_diffusers_with_its_own_float32_schedule(prediction):
    d = _diffusion("linear", prediction=prediction)
    err_x, err_x0 = _compare_step_by_step(d, 10, order=2, float64_sigmas=False)
    assert err_x < 1e-5 and err_x0 < 1e-5, (err_x, err_x0)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("clip,dynamic,threshold_max", [(True, 0.0, math.inf), (False, 0.9, 1.5),
                                                        (False, 0.95, math.inf)])
def test_clipping_and_dynamic_thresholding_equal_diffusers_thresholding(prediction, clip, dynamic, threshold_max):
    d = _diffusion("linear", prediction=prediction)
    max_value = 1e9 if threshold_max == math.inf else threshold_max
    err_x, err_x0 = _compare_step_by_step(d, 10, order=3, clip=clip, dynamic=dynamic, threshold_max=max_value)
    assert err_x < 1e-5 and err_x0 < 1e-5, (err_x, err_x0)


def test_without_the_corrector_it_is_unip_alone_as_in_diffusers():
    d = _diffusion("cosine", prediction="v")
    err_x, _ = _compare_step_by_step(d, 10, order=3, corrector=False)
    assert err_x < 1e-5
    on, off = (list(unipc_sample_loop_progressive(d, toy_model, (2, 3, 8, 8), steps=10, order=3, corrector=c,
                                                  generator=torch.Generator().manual_seed(1), dtype=F64))
               for c in (True, False))
    assert torch.equal(on[0].x_t, off[0].x_t)  # the first step has nothing to correct
    assert (on[-1].x_t - off[-1].x_t).abs().max().item() > 1e-4


def test_order_schedule_and_lower_order_final_off():
    d = _diffusion("cosine", prediction="v")
    err_x, err_x0 = _compare_step_by_step(d, 8, order=3, lower_order_final=False)
    assert err_x < 1e-5 and err_x0 < 1e-5
    on, off = (UniPC(d, 8, order=3, lower_order_final=f) for f in (True, False))
    assert [on.order_at(i) for i in range(8)] == [1, 2, 3, 3, 3, 3, 2, 1]
    assert [off.order_at(i) for i in range(8)] == [1, 2, 3, 3, 3, 3, 3, 1]  # into sigma = 0: always first order
    long = UniPC(d, 20, order=3)
    assert [long.order_at(i) for i in (17, 18, 19)] == [3, 2, 1]  # unlike DPM-Solver++, at every chain length


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("n", [5, 10])
def test_whole_chain_equals_diffusers(order, prediction, clip, n):
    """Our generator loop against a diffusers loop from the same x_T."""
    d, shape = _diffusion("cosine", prediction=prediction), (2, 3, 8, 8)
    steps = list(unipc_sample_loop_progressive(d, toy_model, shape, steps=n, order=order, clip_denoised=clip,
                                               generator=torch.Generator().manual_seed(7), dtype=F64))
    sched = _scheduler(d, n, order=order, thresholding=clip, max_value=1.0)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    for i, t in enumerate(sched.timesteps):
        x = sched.step(toy_model(x, torch.full((2,), int(t))), t, x).prev_sample
        assert _rel(steps[i].x_t, x) < 1e-5, i
    assert [s.t for s in steps] == sched.timesteps.tolist() and steps[0].t == 999
    assert [s.index for s in steps] == list(range(n)) and {s.total for s in steps} == {n}
    assert torch.equal(steps[-1].x_t, steps[-1].pred_x0)


def test_float32_chain_equals_diffusers_own_float32_loop():
    """The loop as the service runs it (float32, diffusers' own schedule), on a clipped eps model."""
    d, n, shape = _diffusion("linear", prediction="epsilon"), 10, (2, 3, 8, 8)

    def model32(x, t):
        return toy_model(x, t).float()

    ours = list(unipc_sample_loop_progressive(d, model32, shape, steps=n, order=3,
                                              generator=torch.Generator().manual_seed(5)))[-1].x_t
    sched = _scheduler(d, n, order=3, thresholding=True, float64_sigmas=False)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    for t in sched.timesteps:
        x = sched.step(model32(x, torch.full((2,), int(t))), t, x).prev_sample
    assert ours.dtype == torch.float32 and (ours - x).abs().max().item() < 1e-4


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_exact_denoiser_few_steps_unipc_loses_less_spread_than_dpm_solver(kind):
    """The exact denoiser (v), 5 and 10 steps: the error in std of UniPC-3 (bh2) is below DPM-Solver++ 2M's and
    3M's, and bh1's below bh2's (diffusers: bh1 for unconditional sampling under 10 steps). At 20 steps
    the solvers are within 0.01 of each other and the order flips on the cosine schedule, so not tested."""
    mu, s = 0.3, 0.5
    d = _diffusion(kind, prediction="v")
    model = gaussian_model(d, mu, s)

    def lost(loop, **kw):
        x = list(loop(d, model, (1,), clip_denoised=False, noise=_quantile_noise(), **kw))[-1].x_t
        return abs(s - x.std().item())

    for n in (5, 10):
        uni, bh1 = (lost(unipc_sample_loop_progressive, steps=n, order=3, solver_type=t) for t in ("bh2", "bh1"))
        dpm2, dpm3 = (lost(dpm_solver_sample_loop_progressive, steps=n, order=o) for o in (2, 3))
        assert bh1 < uni < min(dpm2, dpm3), (n, bh1, uni, dpm2, dpm3)


def test_the_sampler_name_unipc_is_order_2_bh2_on_log_snr_steps():
    """The name dispatches to order 2, bh2, and its spacing auto to logsnr (the same seed, the same chain;
    seeds, stopping: the DPM-Solver++ file's dispatch test covers unipc too)."""
    d = _diffusion("cosine", T=100, prediction="v")
    a = d.sample(toy_model, (2, 3, 8, 8), SamplingConfig(sampler="unipc", steps=8, seed=3))
    direct = list(unipc_sample_loop_progressive(d, toy_model, (2, 3, 8, 8), steps=8, order=2, solver_type="bh2",
                                                spacing="logsnr", generator=torch.Generator().manual_seed(3)))
    assert torch.equal(a, direct[-1].x_t) and direct[0].t == 99
    assert [r.t for r in direct] == logsnr_timesteps(d.schedule.alphas_cumprod, 8) != trailing_timesteps(100, 8)


def test_explicit_timesteps_replace_the_spacing():
    d = _diffusion("cosine", T=100, prediction="v")
    a = UniPC(d, 4, timesteps=[99, 60, 30, 5])
    assert a.timesteps == [99, 60, 30, 5] and len(a) == 4
    with pytest.raises(ValueError, match="distinct and descending"):
        UniPC(d, 3, timesteps=[99, 99, 5])
    with pytest.raises(ValueError, match="distinct and descending"):
        UniPC(d, 2, timesteps=[100, 5])


def test_bad_settings_are_refused_with_clear_messages():
    d = _diffusion(T=100)
    with pytest.raises(ValueError, match="UniPC order must be one of 1, 2, 3; got 4"):
        UniPC(d, 10, order=4)
    with pytest.raises(ValueError, match="UniPC solver_type must be one of bh2, bh1; got 'bh3'"):
        UniPC(d, 10, solver_type="bh3")
    with pytest.raises(ValueError, match="sampling.steps must be a whole number from 1 to T=100; got 101"):
        UniPC(d, 101)
    with pytest.raises(ValueError, match="in order"):
        UniPC(d, 5).step(torch.zeros(1, 3, 8, 8), 2, torch.zeros(1, 3, 8, 8))
    one = list(unipc_sample_loop_progressive(d, toy_model, (1, 3, 8, 8), steps=1, dtype=F64))
    assert len(one) == 1 and one[0].t == 99 and torch.equal(one[0].x_t, one[0].pred_x0)  # one step: x_theta(x_T)
