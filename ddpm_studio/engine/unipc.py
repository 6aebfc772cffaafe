"""UniPC, the multistep predictor-corrector sampler of Zhao et al. 2023 ("UniPC: A Unified
Predictor-Corrector Framework for Fast Sampling of Diffusion Models"), in the data-prediction form
(diffusers' ``predict_x0=True``).

Notation as in ``dpm_solver.py`` (VP, 0-based t): ``alpha_t``, ``sigma_t``, ``lambda_t =
log(alpha_t / sigma_t)``, and m_j = x_theta(x_j, t_j) the network's x_0 estimate at the j-th visited
timestep. A step j goes from t_j to t_{j+1}; with ``h = lambda_{j+1} - lambda_j``, its order p uses
m_j and the p - 1 estimates before it, through r_k = (lambda_{j-k} - lambda_j) / h and the scaled
differences D_k = (m_{j-k} - m_j) / r_k (k = 1 .. p-1):

- **UniP-p** (the predictor): ``x_{j+1} = (sigma_{j+1}/sigma_j) x_j - alpha_{j+1} (e^-h - 1) m_j
  - alpha_{j+1} B(h) sum_k rho^p_k D_k``;
- **UniC-p** (the corrector): once the network has been called at x_{j+1}, the same update again
  with coefficients rho^c and one more term ``rho^c_p (m_{j+1} - m_j)``. Its result replaces x_{j+1}
  as the start of the next predictor step (the network never sees it), raising the order by one
  without another network call. Both updates start from the same x_j with the same r_k and D_k, so
  the corrected point is the predicted one plus ``- alpha_{j+1} B(h) (sum_k (rho^c_k - rho^p_k) D_k
  + rho^c_p (m_{j+1} - m_j))``: that is how it is computed here, so a chain resumed at any step
  needs only the x it held there and the recent x_0 estimates (the lab's branch point).
- The coefficients solve the paper's small linear systems R rho = b, R_{ik} = r_k^(i-1) (r_p = 1),
  b_i = i! h phi_{i+1}(h) / B(h) (with -h for data prediction), where B(h) = -h (``bh1``) or
  e^-h - 1 (``bh2``, diffusers' default); order 2's predictor uses rho^p = 1/2 and order 1's
  corrector rho^c = 1/2 (diffusers' simplifications).

Warm-up from order 1; the last step goes to sigma = 0 (diffusers' ``final_sigmas_type="zero"``),
where the update is x_theta itself, so it is first order and takes no corrector (there is no later
network call to correct with, and nothing to correct: x_0 = m_{n-1} whatever x_{n-1} is). With
``lower_order_final`` (default) step i is at most order n - i, as diffusers does for every chain
length. Step for step this is diffusers' ``UniPCMultistepScheduler`` (tests/test_engine_unipc.py).

Torch and numpy only. Coefficients are Python floats computed in float64 from the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from .dpm_solver import MultistepSolver, multistep_chain
from .types import StepResult

if TYPE_CHECKING:
    from .diffusion import GaussianDiffusion, Model

SOLVER_TYPES = ("bh2", "bh1")  # B(h) = e^-h - 1 (diffusers' default) or -h, h the step in lambda


class UniPC(MultistepSolver):
    """One UniPC chain (order 1-3, ``solver_type`` bh2 or bh1, ``corrector`` on by default); see
    :class:`dpm_solver.MultistepSolver` for the calling convention."""

    name = "UniPC"

    def __init__(self, diffusion: "GaussianDiffusion", steps: int, *, order: int = 2, solver_type: str = "bh2",
                 corrector: bool = True, **kwargs) -> None:
        if solver_type not in SOLVER_TYPES:
            raise ValueError(f"UniPC solver_type must be one of {', '.join(SOLVER_TYPES)}; got {solver_type!r}")
        super().__init__(diffusion, steps, order=order, **kwargs)
        self.solver_type, self.corrector = solver_type, corrector
        self._coefs: dict[tuple[int, int], tuple] = {}

    def order_at(self, i: int) -> int:
        """The predictor's order at step i: warm-up from 1, first order into x_0, at most n - i with
        lower_order_final (diffusers' rule)."""
        n = len(self.timesteps)
        if i == n - 1:
            return 1
        order = min(self.order, i + 1)  # only i earlier estimates exist
        return min(order, n - i) if self.lower_order_final else order

    def coefficients(self, j: int, p: int) -> tuple[float, float, float, float, list[float], list[float], list[float]]:
        """Step j at order p (t_j -> t_{j+1}, sigma_{j+1} > 0): ``(sigma_{j+1}/sigma_j, alpha_{j+1},
        e^-h - 1, B(h), r_1..r_{p-1}, rho^p, rho^c)``."""
        key = (j, p)
        if key not in self._coefs:
            lam = self.lam
            h = lam[j + 1] - lam[j]
            hh = -h  # data prediction integrates in -lambda
            phi1 = math.expm1(hh)  # h phi_1(h) = e^-h - 1
            B = hh if self.solver_type == "bh1" else phi1
            rks = [(lam[j - k] - lam[j]) / h for k in range(1, p)]
            R, b = [], []
            h_phi_k, factorial = phi1 / hh - 1.0, 1  # phi_2(h), then the phi_{k+1} recursion
            for i in range(1, p + 1):
                R.append([r ** (i - 1) for r in rks + [1.0]])
                b.append(h_phi_k * factorial / B)
                factorial *= i + 1
                h_phi_k = h_phi_k / hh - 1.0 / factorial
            R_, b_ = np.array(R, dtype=np.float64), np.array(b, dtype=np.float64)
            rho_p = [] if p == 1 else [0.5] if p == 2 else np.linalg.solve(R_[:-1, :-1], b_[:-1]).tolist()
            rho_c = [0.5] if p == 1 else np.linalg.solve(R_, b_).tolist()
            self._coefs[key] = (self.sigma[j + 1] / self.sigma[j], self.alpha[j + 1], phi1, B, rks, rho_p, rho_c)
        return self._coefs[key]

    def _differences(self, estimates: list[torch.Tensor], rks: list[float]) -> list[torch.Tensor]:
        """D_k = (m_{j-k} - m_j) / r_k for the estimates m_{j-p+1} .. m_j (oldest first)."""
        m_j = estimates[-1]
        return [(estimates[-1 - k] - m_j) / r for k, r in enumerate(rks, start=1)]

    def correct(self, x: torch.Tensor, i: int, m_i: torch.Tensor) -> torch.Tensor:
        """UniC: x at t_i (the predictor's output of step i-1) corrected with the new estimate m_i.
        ``self.history`` still ends at m_{i-1}; the order is that of step i-1 (fewer on a resumed chain)."""
        p = min(self.order_at(i - 1), len(self.history))
        _, a_t, _, B, rks, rho_p, rho_c = self.coefficients(i - 1, p)
        earlier = self.history[-p:]
        total = rho_c[-1] * (m_i - earlier[-1])
        for D_k, rc, rp in zip(self._differences(earlier, rks), rho_c[:-1], rho_p):
            total = total + (rc - rp) * D_k
        return x - (a_t * B) * total

    def predict(self, x: torch.Tensor, i: int, p: int) -> torch.Tensor:
        """UniP-p from x at t_i (corrected) with ``self.history`` ending at m_i."""
        ratio, a_t, phi1, B, rks, rho_p, _ = self.coefficients(i, p)
        estimates = self.history[-p:]
        x_next = ratio * x - (a_t * phi1) * estimates[-1]
        for D_k, rp in zip(self._differences(estimates, rks), rho_p):
            x_next = x_next - (a_t * B * rp) * D_k
        return x_next

    def step(self, model_output: torch.Tensor, i: int, x: torch.Tensor,
             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_order_of_calls(i)
        m_i = self.denoise(model_output, x, i)
        last = i == len(self.timesteps) - 1
        if self.corrector and i > 0 and self.history and not last:
            x = self.correct(x, i, m_i)
        self.history = (self.history + [m_i])[-self.order:]
        if last:  # into sigma = 0: x_0 = m_i in every order
            x_next = m_i
        else:
            x_next = self.predict(x, i, min(self.order_at(i), len(self.history)))
        self._next += 1
        return x_next, m_i


def unipc_sample_loop_progressive(diffusion: "GaussianDiffusion", model: "Model", shape, *, steps: int,
                                  order: int = 2, solver_type: str = "bh2", corrector: bool = True,
                                  spacing: str = "trailing", lower_order_final: bool = True,
                                  clip_denoised: bool = True, dynamic_threshold: float | None = None,
                                  threshold_max: float = math.inf, clip_range: float = 1.0,
                                  generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                                  device=None, should_stop: Callable[[], bool] | None = None,
                                  dtype: torch.dtype | None = None, start_index: int = 0,
                                  history: list[torch.Tensor] | None = None,
                                  timesteps: list[int] | None = None) -> Iterator[StepResult]:
    """UniPC from x_T (``noise``, else drawn from ``generator``): one StepResult per network call, its
    ``x_t`` the predictor's output (what the network sees next; after the last step x_0). Deterministic:
    no noise after x_T. ``start_index`` k > 0 resumes at step k from ``noise`` = the x_t of step k-1,
    with ``history`` the pred_x0 of the steps before it (oldest first; up to ``order`` are used)."""
    solver = UniPC(diffusion, steps, order=order, solver_type=solver_type, corrector=corrector, spacing=spacing,
                   lower_order_final=lower_order_final, clip_denoised=clip_denoised,
                   dynamic_threshold=dynamic_threshold, threshold_max=threshold_max, clip_range=clip_range,
                   timesteps=timesteps)
    yield from multistep_chain(solver, model, shape, generator=generator, noise=noise, device=device,
                               should_stop=should_stop, dtype=dtype, start_index=start_index, history=history)
