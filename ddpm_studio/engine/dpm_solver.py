"""DPM-Solver++ multistep samplers (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models"), in the data-prediction form.

Notation (VP, 0-based t as everywhere in the engine): ``alpha_t = sqrt(alpha-bar_t)``,
``sigma_t = sqrt(1 - alpha-bar_t)``, ``lambda_t = log(alpha_t / sigma_t)`` (half the log-SNR) and
``x_theta(x_t, t)`` the network's estimate of x_0 (any prediction type is turned into it). The
diffusion ODE has the exact solution (eq. (9) of the paper)

    x_t = (sigma_t / sigma_s) x_s + sigma_t * integral_{lambda_s}^{lambda_t} e^lambda x_theta dlambda,

and the solvers approximate x_theta in that integral by a polynomial in lambda through the current
and the previous one or two estimates (multistep: one network call per step). With
``h = lambda_t - lambda_s``:

- order 1 (= DDIM): ``x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) D0``;
- 2M (Algorithm 2): adds ``- 0.5 alpha_t (e^-h - 1) D1``, D1 the scaled difference to the previous estimate;
- 3M: the third-order multistep update of the authors' code (and diffusers');
- SDE variant (``sde-dpmsolver++``): the same polynomials on the reverse SDE, adding fresh noise
  ``sigma_t sqrt(1 - e^-2h) z`` at every step.

The last step goes to sigma = 0 (diffusers' ``final_sigmas_type="zero"``), where every update
reduces to x_0 = x_theta, so it is first order; with ``lower_order_final`` (default) chains of
fewer than 15 steps also take the step before it at order <= 2 (diffusers' rule, for stability).
Step for step this is diffusers' ``DPMSolverMultistepScheduler`` (tests/test_engine_dpm_solver.py).

Torch and numpy only. Coefficients are Python floats computed in float64 from the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from .steps import (_check_start, _needs_schedule, _randn, check_spacing, check_steps, checked_timesteps, clip_x0,
                    logsnr_timesteps, trailing_timesteps)
from .types import StepResult

if TYPE_CHECKING:
    from .diffusion import GaussianDiffusion, Model

ORDERS = (1, 2, 3)
LOWER_ORDER_FINAL_BELOW = 15  # diffusers: with lower_order_final, chains shorter than this end on low orders


def dpm_solver_timesteps(T: int, steps: int, spacing: str = "trailing", alphas_cumprod=None) -> list[int]:
    """The timesteps visited, descending, as diffusers' ``DPMSolverMultistepScheduler`` spaces them.

    This differs from DDIM's spacing (diffusers defines them separately):

    - ``trailing``: round(T - i T/steps) - 1, from T - 1 down (as DDIM's);
    - ``linspace``: ``linspace(0, T - 1, steps + 1)`` rounded, descending, without its final 0;
      at steps = T that rounding repeats timesteps, so all of T - 1 .. 0 are used instead;
    - ``leading``: ``i * (T // (steps + 1))`` for i = steps .. 1; needs steps < T;
    - ``logsnr`` (not in diffusers): :func:`steps.logsnr_timesteps` of ``alphas_cumprod``, as for DDIM.
    """
    check_steps(T, steps)
    check_spacing(spacing)
    _needs_schedule(spacing, alphas_cumprod)
    if spacing == "logsnr":
        return logsnr_timesteps(alphas_cumprod, steps)
    if spacing == "trailing":
        return trailing_timesteps(T, steps)
    if spacing == "leading":
        ratio = T // (steps + 1)
        if ratio < 1:
            raise ValueError(f"sampling.steps must be at most T-1={T - 1} for DPM-Solver++ with leading spacing; "
                             f"got {steps}")
        return [i * ratio for i in range(steps, 0, -1)]
    ts = np.linspace(0, T - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    if np.any(np.diff(ts) >= 0):
        return list(range(T - 1, -1, -1))
    return ts.tolist()


def threshold_x0(x0: torch.Tensor, *, clip: bool = True, dynamic: float | None = 0.0,
                 max_value: float = math.inf, clip_range: float = 1.0) -> torch.Tensor:
    """Keep the predicted x_0 in range: clip to [-clip_range, clip_range], or dynamic thresholding
    (``dynamic`` > 0, the quantile, e.g. 0.995; Saharia et al. 2022), which replaces clipping: per
    image s = that quantile of |x_0|, at least 1 and at most ``max_value``; x_0 is clipped to
    [-s, s] and divided by s. The same rule as :func:`diffusion.clip_x0`, with 0 meaning off."""
    return clip_x0(x0, clip_denoised=clip, clip_range=clip_range,
                   dynamic_threshold=dynamic if dynamic else None, threshold_max=max_value)


class MultistepSolver:
    """What the multistep solvers share (DPM-Solver++ here, UniPC in unipc.py): the visited timesteps,
    alpha, sigma and lambda there and at the end point x_0, the x_0 bound, and the last ``order``
    x_theta estimates. ``step(model_output, i, x)`` must be called for i = 0, 1, ... in order (as
    diffusers' ``scheduler.step``); it takes the network's raw output at ``timesteps[i]`` and
    returns ``(x_next, pred_x0)``, x_next being at ``timesteps[i + 1]`` (after the last step: x_0).
    ``timesteps`` (descending, distinct, from 0 .. T-1) replaces the spacing when given.
    """

    name = "multistep solver"

    def __init__(self, diffusion: "GaussianDiffusion", steps: int, *, order: int, spacing: str = "trailing",
                 lower_order_final: bool = True, clip_denoised: bool = True,
                 dynamic_threshold: float | None = None, threshold_max: float = math.inf,
                 clip_range: float = 1.0, timesteps: list[int] | None = None) -> None:
        if order not in ORDERS:
            raise ValueError(f"{self.name} order must be one of {', '.join(map(str, ORDERS))}; got {order!r}")
        dynamic_threshold = float(dynamic_threshold or 0.0)
        if not 0.0 <= dynamic_threshold <= 1.0:
            raise ValueError(f"sampling.dynamic_threshold must be from 0 to 1; got {dynamic_threshold!r}")
        self.diffusion = diffusion
        self.timesteps = (dpm_solver_timesteps(diffusion.T, steps, spacing, diffusion.schedule.alphas_cumprod)
                          if timesteps is None else checked_timesteps(diffusion.T, timesteps))
        self.order, self.lower_order_final = order, lower_order_final
        self.clip_denoised, self.dynamic_threshold, self.threshold_max = clip_denoised, dynamic_threshold, threshold_max
        self.clip_range = clip_range
        ab = diffusion.schedule.alphas_cumprod  # float64
        # alpha, sigma, lambda at each visited timestep, then at the end point x_0 (alpha 1, sigma 0, lambda +inf)
        self.alpha = [math.sqrt(ab[t]) for t in self.timesteps] + [1.0]
        self.sigma = [math.sqrt(1.0 - ab[t]) for t in self.timesteps] + [0.0]
        self.lam = [math.log(a) - math.log(s) for a, s in zip(self.alpha[:-1], self.sigma[:-1])] + [math.inf]
        self.history: list[torch.Tensor] = []  # x_theta of the steps taken so far, newest last (<= order kept)
        self._next = 0

    def resume_at(self, i: int, history: list[torch.Tensor] | None = None) -> None:
        """Continue a chain at step ``i``: ``history`` holds the x_theta of steps before i, oldest
        first (the pred_x0 they yielded); with fewer than the order needs, step i warms up again."""
        if not 0 <= i < len(self.timesteps):
            raise ValueError(f"start_index must be a whole number from 0 to {len(self.timesteps) - 1}; got {i!r}")
        self.history = list(history or [])[-self.order:][-i:] if i > 0 else []
        self._next = i

    def __len__(self) -> int:
        return len(self.timesteps)

    def needs_noise(self, i: int) -> bool:
        """Whether step i adds fresh noise (only stochastic solvers do)."""
        return False

    def denoise(self, model_output: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        """x_theta(x, t_i): the network's output turned into x_0, then clipped or thresholded."""
        x0, _ = self.diffusion.predict_x0_and_eps(model_output, x, int(self.timesteps[i]))
        return threshold_x0(x0, clip=self.clip_denoised, dynamic=self.dynamic_threshold, max_value=self.threshold_max,
                            clip_range=self.clip_range)

    def _check_order_of_calls(self, i: int) -> None:
        if i != self._next:
            raise ValueError(f"{type(self).__name__}.step must be called for steps 0, 1, ... in order; expected "
                             f"{self._next}, got {i}")


class DPMSolverPP(MultistepSolver):
    """One DPM-Solver++ chain (orders 1-3, ``sde`` for the SDE variant); see :class:`MultistepSolver`."""

    name = "DPM-Solver++"

    def __init__(self, diffusion: "GaussianDiffusion", steps: int, *, order: int = 2, sde: bool = False,
                 **kwargs) -> None:
        super().__init__(diffusion, steps, order=order, **kwargs)
        self.sde = sde

    def order_at(self, i: int) -> int:
        """The order step i is taken at: warm-up from 1, first order into x_0, diffusers' lower_order_final."""
        n = len(self.timesteps)
        order = min(self.order, i + 1)  # only i earlier estimates exist
        if i == n - 1:
            return 1  # into sigma = 0: every order's update is x_theta itself, higher terms would only add error
        if self.lower_order_final and n < LOWER_ORDER_FINAL_BELOW and i == n - 2:
            return min(order, 2)
        return order

    def needs_noise(self, i: int) -> bool:
        """Whether step i adds fresh noise (SDE variant, every step but the one into x_0)."""
        return self.sde and self.sigma[i + 1] > 0

    def step(self, model_output: torch.Tensor, i: int, x: torch.Tensor,
             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_order_of_calls(i)
        m0 = self.denoise(model_output, x, i)
        self.history = (self.history + [m0])[-self.order:]
        order = min(self.order_at(i), len(self.history))  # a resumed chain may hold fewer estimates
        a_t, s_t, s_s = self.alpha[i + 1], self.sigma[i + 1], self.sigma[i]
        h = self.lam[i + 1] - self.lam[i]
        if self.needs_noise(i) and noise is None:
            raise ValueError("the SDE variant of DPM-Solver++ needs noise for every step but the last")

        # the polynomial in lambda through the last `order` estimates: D0 + D1 (lambda - lambda_s)/h + ...
        D0 = m0
        if order >= 2:
            h0 = self.lam[i] - self.lam[i - 1]
            r0 = h0 / h
            D1_0 = (m0 - self.history[-2]) / r0
        if order == 2:
            D1 = D1_0
        if order == 3:
            h1 = self.lam[i - 1] - self.lam[i - 2]
            r1 = h1 / h
            D1_1 = (self.history[-2] - self.history[-3]) / r1
            D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
            D2 = (D1_0 - D1_1) / (r0 + r1)

        if s_t == 0.0:  # the end point: (sigma_t / sigma_s) = 0 and e^-h = 0, so x_0 = D0 in every variant
            x_next = D0
        elif not self.sde:
            phi1 = math.expm1(-h)  # e^-h - 1
            x_next = (s_t / s_s) * x - (a_t * phi1) * D0
            if order == 2:  # midpoint form, Algorithm 2 of the paper
                x_next = x_next - 0.5 * (a_t * phi1) * D1
            elif order == 3:
                x_next = x_next + (a_t * (phi1 / h + 1.0)) * D1 - (a_t * ((phi1 + h) / h**2 - 0.5)) * D2
        else:
            psi = -math.expm1(-2.0 * h)  # 1 - e^-2h
            x_next = (s_t / s_s * math.exp(-h)) * x + (a_t * psi) * D0
            if order == 2:
                x_next = x_next + 0.5 * (a_t * psi) * D1
            elif order == 3:
                x_next = (x_next + (a_t * (psi / (-2.0 * h) + 1.0)) * D1
                          + (a_t * ((psi - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * D2)
            x_next = x_next + (s_t * math.sqrt(psi)) * noise
        self._next += 1
        return x_next, m0


def dpm_solver_sample_loop_progressive(diffusion: "GaussianDiffusion", model: "Model", shape, *, steps: int,
                                       order: int = 2, sde: bool = False, spacing: str = "trailing",
                                       lower_order_final: bool = True, clip_denoised: bool = True,
                                       dynamic_threshold: float | None = None, threshold_max: float = math.inf,
                                       clip_range: float = 1.0, generator: torch.Generator | None = None,
                                       noise: torch.Tensor | None = None, device=None,
                                       should_stop: Callable[[], bool] | None = None,
                                       dtype: torch.dtype | None = None, start_index: int = 0,
                                       history: list[torch.Tensor] | None = None,
                                       timesteps: list[int] | None = None) -> Iterator[StepResult]:
    """DPM-Solver++ (order 1-3, ODE or SDE) from x_T: yields one StepResult per network call.

    ``noise`` is x_T (else drawn from ``generator``); the SDE variant then draws one noise tensor
    per step from ``generator`` after the network call, as diffusers' pipelines do (the step into
    x_0 draws none: diffusers' draw there is multiplied by sigma = 0). A set ``should_stop`` ends
    the chain before the next network call. ``start_index`` k > 0 resumes at step k from ``noise``
    = the x at ``timesteps[k]``, with ``history`` the pred_x0 of the steps before it (oldest first).
    """
    solver = DPMSolverPP(diffusion, steps, order=order, sde=sde, spacing=spacing, lower_order_final=lower_order_final,
                         clip_denoised=clip_denoised, dynamic_threshold=dynamic_threshold, threshold_max=threshold_max,
                         clip_range=clip_range, timesteps=timesteps)
    yield from multistep_chain(solver, model, shape, generator=generator, noise=noise, device=device,
                               should_stop=should_stop, dtype=dtype, start_index=start_index, history=history)


def multistep_chain(solver: MultistepSolver, model: "Model", shape, *, generator: torch.Generator | None = None,
                    noise: torch.Tensor | None = None, device=None, should_stop: Callable[[], bool] | None = None,
                    dtype: torch.dtype | None = None, start_index: int = 0,
                    history: list[torch.Tensor] | None = None) -> Iterator[StepResult]:
    """Drive one multistep solver from x_T (``noise``, else drawn from ``generator``): one network call
    and one StepResult per step; noise for a stochastic step is drawn after its network call."""
    n = len(solver)
    _check_start(start_index, n, noise)
    if start_index > 0:
        solver.resume_at(start_index, history)
    with torch.inference_mode():
        x, device = solver.diffusion._start(model, shape, noise, device, dtype, generator)
        solver.history = [h.to(device=x.device, dtype=x.dtype) for h in solver.history]  # a resumed chain's
        B = x.shape[0]
        for i, t in enumerate(solver.timesteps):
            if i < start_index:
                continue
            if should_stop is not None and should_stop():
                return
            out = model(x, torch.full((B,), t, dtype=torch.long, device=device))
            z = _randn(x.shape, generator, device, x.dtype) if solver.needs_noise(i) else None
            x, pred_x0 = solver.step(out.to(x.dtype), i, x, noise=z)
            yield StepResult(t=int(t), index=i, total=n, x_t=x, pred_x0=pred_x0)
