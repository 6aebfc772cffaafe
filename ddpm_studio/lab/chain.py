"""A reverse chain that keeps what the lab needs: each step's input x_t, x̂0, the predicted noise,
and enough state to run the rest of the chain again from any recorded step.

``run_chain`` drives the engine's own loops (``GaussianDiffusion.sample_progressive``) with x_T and
a CPU generator seeded exactly as ``sampling.service.generate`` seeds them, so its last step is the
sample ``ddpm-studio sample --seed S`` makes with the same settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import SamplingConfig

HISTORY = 3  # x̂0 estimates kept per step: DPM-Solver++ 3M needs the last three to resume


@dataclass
class ChainStep:
    """Step ``index`` of a chain, taken at timestep ``t`` (0-based). Tensors are (B, C, H, W) on the CPU."""

    index: int
    t: int
    total: int
    x_in: torch.Tensor  # x_t: what the network saw at t
    x_out: torch.Tensor  # the chain's x after the step (at the next timestep; after the last: x_0)
    pred_x0: torch.Tensor  # x̂0 at t (bounded as the sampler bounds it)
    gen_state: torch.Tensor | None = None  # the generator's state after the step: same noise for a rerun
    history: list[torch.Tensor] = field(default_factory=list)  # x̂0 of this step and up to 2 before, oldest first

    @property
    def is_last(self) -> bool:
        return self.index == self.total - 1


def sampler_timesteps(diffusion, sampling: SamplingConfig) -> list[int]:
    """The timesteps a sampler visits, in order (one per network call): the engine's
    ``GaussianDiffusion.sampler_timesteps``."""
    return diffusion.sampler_timesteps(sampling)


def is_stochastic(sampling: SamplingConfig) -> bool:
    """Whether the sampler draws fresh noise after x_T (DDPM, DDIM with eta > 0, DPM-Solver++ 2M SDE)."""
    return sampling.sampler == "ddpm" or (sampling.sampler == "ddim" and sampling.eta > 0) \
        or sampling.sampler == "dpmpp-2m-sde"


def check_sampling(sampling: SamplingConfig, T: int) -> None:
    """The settings' own checks plus the model's T (one-line ValueError)."""
    sampling.validate()
    if sampling.sampler != "ddpm" and sampling.steps > T:
        raise ValueError(f"{sampling.sampler} with {sampling.steps} steps: the model has only T={T} timesteps")


def start_noise(shape, seed: int) -> tuple[torch.Tensor, torch.Generator]:
    """x_T ~ N(0, I) drawn from a CPU generator seeded with ``seed``, and that generator (which then
    gives the chain's later noise), as ``sampling.service.generate`` draws them."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=generator), generator


def predicted_noise(diffusion, x_in: torch.Tensor, pred_x0: torch.Tensor, t: int) -> torch.Tensor:
    """ε̂ (or v̂ for a v-prediction model) at t, from x_t and the x̂0 the sampler used:
    ε̂ = (x_t - sqrt(ᾱ_t) x̂0) / sqrt(1 - ᾱ_t) (eq. (4) solved for ε); v̂ = sqrt(ᾱ_t) ε̂ - sqrt(1 - ᾱ_t) x̂0."""
    ab = float(diffusion.schedule.alphas_cumprod[t])
    eps = (x_in - ab**0.5 * pred_x0) / (1.0 - ab) ** 0.5
    if diffusion.prediction == "v":
        return ab**0.5 * eps - (1.0 - ab) ** 0.5 * pred_x0
    return eps


def noise_label(diffusion) -> str:
    return "predicted v̂" if diffusion.prediction == "v" else "predicted noise ε̂"


def run_chain(model, diffusion, sampling: SamplingConfig, *, num: int, image_shape, seed: int,
              device: torch.device | None = None, should_stop: Callable[[], bool] | None = None,
              keep: Callable[[int, int], bool] | None = None) -> Iterator[ChainStep]:
    """Yield a :class:`ChainStep` for every step ``keep(index, total)`` accepts (default: all).

    x_T and the later noise come from ``start_noise((num, *image_shape), seed)``.
    """
    check_sampling(sampling, diffusion.T)
    x_T, generator = start_noise((num, *image_shape), seed)
    x_prev = x_T
    recent: list[torch.Tensor] = []
    for r in diffusion.sample_progressive(model, x_T.shape, sampling, generator=generator, device=device,
                                          should_stop=should_stop, noise=x_T):
        x0 = r.pred_x0.detach().float().cpu()
        recent = (recent + [x0])[-HISTORY:]
        x_out = r.x_t.detach().float().cpu()
        if keep is None or keep(r.index, r.total):
            yield ChainStep(r.index, int(r.t), r.total, x_prev, x_out, x0, generator.get_state(), list(recent))
        x_prev = x_out


NOISE_RANGE = 3.0  # ε̂ / v̂ are shown from -3 to 3 (mid-grey is 0)


def step_views(diffusion, step: ChainStep) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three views of a step as (N, H, W, C) uint8: x_t, x̂0 and ε̂ (v̂) scaled by 1/NOISE_RANGE."""
    from ..sampling.service import to_uint8

    noise = predicted_noise(diffusion, step.x_in, step.pred_x0, step.t)
    return to_uint8(step.x_in), to_uint8(step.pred_x0), to_uint8(noise / NOISE_RANGE)
