"""Training objectives: epsilon / x_0 / v targets and min-SNR-gamma weights against closed forms."""

import math

import numpy as np
import pytest
import torch

from ddpm_studio.engine.diffusion import GaussianDiffusion
from ddpm_studio.engine.schedules import NoiseSchedule

F64 = torch.float64


def _setup(prediction, weighting="none", gamma=5.0, kind="linear", T=1000):
    d = GaussianDiffusion(NoiseSchedule.from_config(kind, T), prediction=prediction, loss_weighting=weighting,
                          min_snr_gamma=gamma)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 2, 4, 4, generator=g, dtype=F64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    t = torch.tensor([0, 3, 100, 487, 800, T - 1])
    out = torch.randn(x0.shape, generator=g, dtype=F64)  # an arbitrary network output
    ab = torch.from_numpy(np.cumprod(1 - d.schedule.betas))[t].view(-1, 1, 1, 1)  # alpha-bar from the betas
    return d, x0, noise, t, out, ab


def _mse(a, b):
    return (a - b).square().mean(dim=(1, 2, 3))


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_unweighted_loss_is_mse_to_the_closed_form_target(prediction):
    d, x0, noise, t, out, ab = _setup(prediction)
    seen = {}

    def model(x_t, tt):
        seen["x_t"], seen["t"] = x_t, tt
        return out

    loss, t_used = d.training_losses(model, x0, t=t, noise=noise)
    assert torch.equal(t_used, t)
    assert torch.allclose(seen["x_t"], ab.sqrt() * x0 + (1 - ab).sqrt() * noise, atol=1e-12)  # eq. (4)
    target = {"epsilon": noise, "x0": x0, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[prediction]
    assert loss.shape == (6,)
    assert torch.allclose(loss.double(), _mse(out, target), rtol=1e-6)


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_exact_target_is_decoded_back_to_x0_and_eps(prediction):
    d, x0, noise, t, _, ab = _setup(prediction, kind="cosine")
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    target = d.training_target(x0, noise, t)
    px0, peps = d.predict_x0_and_eps(target, x_t, t)
    assert torch.allclose(px0, x0, atol=1e-6) and torch.allclose(peps, noise, atol=1e-6)


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
@pytest.mark.parametrize("weighting", ["min_snr", "min_snr_plus1"])
def test_min_snr_weighting_equals_min_snr_times_x0_error(prediction, gamma, weighting):
    """Hang et al. 2023 define the loss as min(SNR, gamma) * ||x_0 - x0_hat||^2 whatever the network predicts;
    min_snr_plus1 is min(SNR + 1, gamma) * ||x_0 - x0_hat||^2."""
    d, x0, noise, t, out, ab = _setup(prediction, weighting, gamma)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    if prediction == "epsilon":
        x0_hat = (x_t - (1 - ab).sqrt() * out) / ab.sqrt()
    elif prediction == "x0":
        x0_hat = out
    else:
        x0_hat = ab.sqrt() * x_t - (1 - ab).sqrt() * out
    snr = (ab / (1 - ab)).flatten()
    expected = torch.clamp(snr + (weighting == "min_snr_plus1"), max=gamma) * _mse(x0, x0_hat)
    loss, _ = d.training_losses(lambda x, tt: out, x0, t=t, noise=noise)
    assert torch.allclose(loss.double(), expected, rtol=1e-5)
    # and the weights themselves at one t, written out by hand for epsilon
    if prediction == "epsilon" and weighting == "min_snr":
        s = float(snr[3])
        assert float(d.loss_weights(t, loss)[3]) == pytest.approx(min(s, gamma) / s)


def test_min_snr_plus1_trains_the_noisiest_step_and_matches_min_snr_where_snr_is_large():
    """At t = T-1 (SNR ~ 4e-5) min-SNR's weight on the x_0 error all but vanishes and min_snr_plus1's is ~1."""
    d1, x0, noise, t, out, _ = _setup("v", "min_snr", 5.0)
    d2 = _setup("v", "min_snr_plus1", 5.0)[0]
    w1, w2 = d1.loss_weights(t, x0), d2.loss_weights(t, x0)
    snr = d1._coef("snr", t, x0).flatten()
    assert float(snr[-1]) < 1e-3 and float(w1[-1] * (snr[-1] + 1)) < 1e-3  # x_0-space weight of min-SNR
    assert float(w2[-1] * (snr[-1] + 1)) == pytest.approx(1.0, rel=1e-3)
    big = snr >= 5.0
    assert big.any() and torch.equal(w1[big], w2[big])  # both capped at gamma


def test_random_timesteps_and_noise_come_from_the_generator():
    d = GaussianDiffusion(NoiseSchedule.from_config("linear", 50))
    x0 = torch.zeros(64, 1, 4, 4)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    l1, t1 = d.training_losses(model, x0, generator=torch.Generator().manual_seed(3))
    l2, t2 = d.training_losses(model, x0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t1, t2) and torch.equal(l1, l2)
    assert t1.min() >= 0 and t1.max() <= 49 and len(set(t1.tolist())) > 20  # uniform over 0..T-1
    assert math.isclose(l1.mean().item(), 1.0, abs_tol=0.1)  # E[eps^2] = 1 for a zero prediction
