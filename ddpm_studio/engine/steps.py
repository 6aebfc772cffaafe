"""What every sampler shares: which timesteps a few-step chain visits, the bound on the predicted x_0,
and noise drawn from an explicit generator. ``diffusion.py`` (ancestral, DDIM) and ``dpm_solver.py``
(DPM-Solver++) both build on these, so neither imports the other at import time.
"""

from __future__ import annotations

import numpy as np
import torch

from .choices import Spacing

SPACINGS = Spacing.values()  # how a few-step sampler picks its timesteps
# The noisiest sigma / alpha the logsnr spacing spreads its steps from: where the DDPM paper's linear schedule
# ends (157 at T = 1000), so that schedule's own range is used whole; the cosine schedule's clipped last
# beta puts its last timestep at 2e4, beyond which nothing is left to spend steps on.
LOGSNR_SIGMA_MAX = 160.0


def _randn(shape, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def clip_x0(pred_x0: torch.Tensor, *, clip_denoised: bool = True, clip_range: float = 1.0,
            dynamic_threshold: float | None = None, threshold_max: float = 1.0) -> torch.Tensor:
    """Bound a predicted x_0 as diffusers' schedulers do: dynamic thresholding when
    ``dynamic_threshold`` is set (Saharia et al. 2022: s = that quantile of |x_0| per image, clamped to
    [1, threshold_max]; x_0 -> clamp(x_0, -s, s) / s), else clipping to [-clip_range, clip_range]
    when ``clip_denoised``, else unchanged."""
    if dynamic_threshold is not None:
        B = pred_x0.shape[0]
        flat = pred_x0.reshape(B, -1)  # (B, C*H*W)
        mags = flat.abs() if flat.dtype in (torch.float32, torch.float64) else flat.abs().float()
        s = torch.quantile(mags, float(dynamic_threshold), dim=1).clamp(min=1.0, max=float(threshold_max))
        s = s.to(flat.dtype)[:, None]
        return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(pred_x0.shape)
    if clip_denoised:
        return pred_x0.clamp(-clip_range, clip_range)
    return pred_x0


def _bounds(sampling) -> dict:
    """The x_0-bounding keywords of a SamplingConfig (older configs lack some fields)."""
    return {"clip_denoised": sampling.clip_denoised, "clip_range": getattr(sampling, "clip_range", 1.0),
            "dynamic_threshold": getattr(sampling, "dynamic_threshold", None),
            "threshold_max": getattr(sampling, "threshold_max", 1.0)}


def check_steps(T: int, steps) -> None:
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 1 <= steps <= T:
        raise ValueError(f"sampling.steps must be a whole number from 1 to T={T}; got {steps!r}")


def check_spacing(spacing) -> None:
    if spacing not in SPACINGS:
        raise ValueError(f"sampling.spacing must be one of {', '.join(SPACINGS)}; got {spacing!r}")


def trailing_timesteps(T: int, steps: int) -> list[int]:
    """round(T - i T/steps) - 1 for i = 0 .. steps-1: starts at T-1 for every step count.

    The values are diffusers' ``np.round(np.arange(T, 0, -T / steps)) - 1`` bit for bit; only its
    first ``steps`` are kept, because for some step counts (62 of 1..1000 at T=1000, e.g. 61) that
    float ``arange`` has one extra element, which would become the timestep -1.
    """
    return (np.round(np.arange(T, 0, -T / steps)[:steps]).astype(np.int64) - 1).tolist()


def logsnr_timesteps(alphas_cumprod, steps: int, sigma_max: float = LOGSNR_SIGMA_MAX) -> list[int]:
    """Timesteps evenly spaced in log-SNR lambda = log(alpha / sigma), from t = T-1 towards t = 0.

    The chain starts at t = T-1; its other steps are the timesteps nearest to points 1 .. steps-1 of
    linspace(lambda_hi, lambda_0, steps + 1), and its last step goes on to x_0. This is DPM-Solver's
    "logSNR" order (Lu et al. 2022), recommended there for small images: with the linear schedule it puts
    more of a short chain's steps at low noise, where edges are drawn, than trailing does. lambda_hi is
    lambda_{T-1}, but no noisier than sigma / alpha = ``sigma_max`` (default 160): the cosine schedule's
    last timestep alone has sigma / alpha = 2e4, which would otherwise spend a short chain's steps on pure
    noise (at 10 steps, four of them). Where the step count asks for more points near t = 0 than there are
    timesteps (about 25 steps and up at T = 1000), neighbours are pushed apart, so every count from 1 to T
    gives that many distinct timesteps from T-1 down (at T: all of them).
    """
    ab = np.asarray(alphas_cumprod, dtype=np.float64)
    T = ab.size
    check_steps(T, steps)
    lam = 0.5 * (np.log(ab) - np.log1p(-ab))  # decreasing in t
    targets = np.linspace(max(lam[-1], -np.log(sigma_max)), lam[0], steps + 1)[:-1]
    # lam is decreasing, so search the reversed (increasing) array; pick the nearer neighbour of each target
    rev = lam[::-1]
    hi = np.clip(np.searchsorted(rev, targets), 1, T - 1)
    nearer = np.where(np.abs(rev[hi] - targets) < np.abs(rev[hi - 1] - targets), hi, hi - 1)
    ts = (T - 1 - nearer).astype(np.int64)
    for i in range(steps - 2, -1, -1):  # from the end: each at least one above the next
        ts[i] = max(ts[i], ts[i + 1] + 1)
    ts[0] = T - 1
    for i in range(1, steps):  # from the start: each at least one below the one before
        ts[i] = min(ts[i], ts[i - 1] - 1)
    return ts.tolist()


def _needs_schedule(spacing: str, alphas_cumprod) -> None:
    if spacing == "auto":
        raise ValueError("sampling.spacing 'auto' names each sampler's own spacing; resolve it with "
                         "choices.resolve_spacing before asking for timesteps")
    if spacing == "logsnr" and alphas_cumprod is None:
        raise ValueError("the logsnr spacing needs the noise schedule (alphas_cumprod)")


def ddim_timesteps(T: int, steps: int, spacing: str = "trailing", steps_offset: int = 0,
                   alphas_cumprod=None) -> list[int]:
    """The DDIM timesteps, descending, as diffusers' ``DDIMScheduler.set_timesteps`` spaces them.

    - ``leading``: ``range(0, T, T // steps)`` + ``steps_offset`` (diffusers' default). For
      ``steps > T / 2`` the stride is 1 and the chain starts at t = steps - 1, far from pure noise.
    - ``trailing``: :func:`trailing_timesteps`, from T - 1 down (Lin et al. 2024, Table 2).
    - ``linspace``: ``linspace(0, T - 1, steps)`` rounded; one step is [T - 1] (numpy's one-point
      linspace, and so diffusers, would give [0]: a single step from t = 0, not from noise).
    - ``logsnr``: :func:`logsnr_timesteps` of ``alphas_cumprod`` (which must be given).
    """
    check_steps(T, steps)
    check_spacing(spacing)
    _needs_schedule(spacing, alphas_cumprod)
    if spacing == "logsnr":
        return logsnr_timesteps(alphas_cumprod, steps)
    if spacing == "leading":
        stride = T // steps
        ts = [i * stride + int(steps_offset) for i in range(steps)][::-1]
        if ts[0] > T - 1:
            raise ValueError(f"sampling.steps_offset={steps_offset} puts a timestep past T-1={T - 1} "
                             f"with {steps} leading steps")
        return ts
    if spacing == "trailing":
        return trailing_timesteps(T, steps)
    if steps == 1:
        return [T - 1]
    return np.linspace(0, T - 1, steps).round()[::-1].astype(np.int64).tolist()


def checked_timesteps(T: int, timesteps) -> list[int]:
    """An explicit list of timesteps as ints, refused unless distinct, descending and within 0..T-1."""
    ts = [int(t) for t in timesteps]
    if not ts or any(a <= b for a, b in zip(ts, ts[1:])) or ts[0] > T - 1 or ts[-1] < 0:
        raise ValueError(f"timesteps must be distinct and descending from at most T-1={T - 1} to at least 0; "
                         f"got {ts}")
    return ts


def _check_start(start_index, n_steps: int, noise) -> None:
    """A resumed chain (start_index k > 0) starts from a given x; k must name one of its steps."""
    whole = isinstance(start_index, (int, np.integer)) and not isinstance(start_index, bool)
    if not whole or not 0 <= start_index < n_steps:
        raise ValueError(f"start_index must be a whole number from 0 to {n_steps - 1}; got {start_index!r}")
    if start_index > 0 and noise is None:
        raise ValueError("resuming a chain (start_index > 0) needs the x it holds there, given as noise=")
