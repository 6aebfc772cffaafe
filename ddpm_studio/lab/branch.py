"""Branch a chain at one of its steps, to see which features are already decided at that t
(Ho et al. 2020, §4.3 and Fig. 7: samples that share x_t share more the smaller t is).

Two ways, both returning the branches' x_0 as one (count·B, C, H, W) batch, branch-major:

- :func:`rerun_rest`: run the chain's remaining steps again from its x at that point, with new
  noise (stochastic samplers only; with ``same_noise`` the chain's own noise, which reproduces it);
- :func:`renoise`: take x̂0 at that step, draw x_t ~ q(x_t | x_0) at a chosen t
  (``GaussianDiffusion.q_sample``) and denoise from there with the sampler's remaining steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import SamplingConfig
from .chain import ChainStep, check_sampling, is_stochastic, sampler_timesteps


def _repeat(x: torch.Tensor, count: int) -> torch.Tensor:
    return x.repeat(count, *([1] * (x.dim() - 1)))  # (count*B, C, H, W), branch-major


def _finish(model, diffusion, sampling, x, *, start_index, generator, history=None, device=None,
            should_stop=None) -> torch.Tensor | None:
    last = None
    for last in diffusion.sample_progressive(model, x.shape, sampling, generator=generator, device=device,
                                             should_stop=should_stop, noise=x, start_index=start_index,
                                             history=history):
        pass
    if last is None or last.index != last.total - 1:
        return None  # stopped
    return last.x_t.detach().float().cpu()


def rerun_rest(model, diffusion, sampling: SamplingConfig, step: ChainStep, *, count: int, seed: int = 0,
               same_noise: bool = False, device=None,
               should_stop: Callable[[], bool] | None = None) -> torch.Tensor | None:
    """The chain's steps after ``step`` run ``count`` times from ``step.x_out``: (count·B, C, H, W) x_0.

    New noise comes from a generator seeded with ``seed``; ``same_noise`` (count 1) restores the
    generator the chain had after ``step`` instead, which reproduces the chain's own x_0. None if stopped.
    """
    check_sampling(sampling, diffusion.T)
    if count < 1:
        raise ValueError(f"the number of branches must be at least 1; got {count}")
    if same_noise and count != 1:
        raise ValueError("branching with the chain's own noise makes one branch; set the count to 1")
    if not same_noise and not is_stochastic(sampling):
        raise ValueError(f"{sampling.sampler} adds no noise after x_T, so every rerun would be the same image: "
                         "choose DDPM, DDIM with η > 0 or DPM-Solver++ 2M SDE, or re-noise x̂0 instead")
    if step.is_last:  # nothing left to run: every branch is the chain's own x_0
        return _repeat(step.x_out, count)
    if same_noise:
        if step.gen_state is None:
            raise ValueError("this step has no recorded generator state")
        generator = torch.Generator(device="cpu")
        generator.set_state(step.gen_state)
    else:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
    history = [_repeat(h, count) for h in step.history]
    return _finish(model, diffusion, sampling, _repeat(step.x_out, count), start_index=step.index + 1,
                   generator=generator, history=history, device=device, should_stop=should_stop)


def nearest_index(timesteps: list[int], t: int) -> int:
    """The position in ``timesteps`` of the visited timestep nearest ``t`` (ties: the larger t)."""
    return min(range(len(timesteps)), key=lambda i: (abs(timesteps[i] - t), -timesteps[i]))


@dataclass
class Renoised:
    t: int  # the timestep x̂0 was noised to (one the sampler visits)
    start_index: int  # the sampler's step at that timestep
    x_t: torch.Tensor  # (count·B, C, H, W) the noised x̂0
    x0: torch.Tensor | None  # (count·B, C, H, W) denoised again; None if stopped


def renoise(model, diffusion, sampling: SamplingConfig, pred_x0: torch.Tensor, *, t: int, count: int, seed: int = 0,
            device=None, should_stop: Callable[[], bool] | None = None) -> Renoised:
    """x_t = sqrt(ᾱ_t) x̂0 + sqrt(1 - ᾱ_t) ε, ε ~ N(0, I) from a generator seeded with ``seed``
    (eq. (4)), ``count`` times, then denoised by the sampler from t. ``t`` is moved to the nearest
    timestep the sampler visits (DDPM visits them all)."""
    check_sampling(sampling, diffusion.T)
    if count < 1:
        raise ValueError(f"the number of branches must be at least 1; got {count}")
    if not 0 <= int(t) < diffusion.T:
        raise ValueError(f"the re-noising t must be from 0 to T-1={diffusion.T - 1}; got {t}")
    ts = sampler_timesteps(diffusion, sampling)
    k = nearest_index(ts, int(t))
    t_used = int(ts[k])
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    x0 = _repeat(pred_x0.detach().float().cpu(), count)
    eps = torch.randn(x0.shape, generator=generator)
    x_t = diffusion.q_sample(x0, t_used, eps)  # q(x_t | x_0)
    out = _finish(model, diffusion, sampling, x_t, start_index=k, generator=generator, device=device,
                  should_stop=should_stop)
    return Renoised(t_used, k, x_t, out)
