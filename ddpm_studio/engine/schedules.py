"""Noise schedules: the betas of the forward process and every coefficient derived from them.

Timesteps are 0-based: index ``t`` here is the paper's ``t + 1``. Every array is float64 numpy,
computed once, named as in improved-diffusion's ``gaussian_diffusion.py`` so the formulas in
``diffusion.py`` read like the paper's equations.
"""

from __future__ import annotations

import math

import numpy as np

from .choices import Schedule

SCHEDULE_KINDS = Schedule.values()
MAX_BETA = 0.999  # betas are clipped here so alpha_t stays > 0 (Nichol & Dhariwal 2021, eq. 17)


def _scaled_ends(T: int) -> tuple[float, float]:
    """The paper's beta_1 = 1e-4 and beta_T = 0.02 for T = 1000, scaled by 1000 / T for other T."""
    scale = 1000.0 / T
    return scale * 1e-4, scale * 0.02


def get_betas(kind: str, T: int) -> np.ndarray:
    """Betas (T,) float64 for schedule ``kind``.

    - ``linear``: the paper's, beta from 1e-4 to 0.02 over T=1000 (ends scaled by 1000/T).
    - ``cosine``: Nichol & Dhariwal 2021, alpha-bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), s=0.008
      (diffusers' ``squaredcos_cap_v2``).
    - ``quadratic``: sqrt(beta) linear between the scaled ends (the DDPM code's ``quad``,
      diffusers' ``scaled_linear``).
    - ``sigmoid``: sigmoid(linspace(-6, 6)) rescaled between the scaled ends (DDPM code's ``sigmoid``).

    Every schedule is clipped at 0.999: for T < 50 the scaled ends of the linear family exceed it.
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULE_KINDS)}; got {kind!r}")
    if not isinstance(T, (int, np.integer)) or isinstance(T, bool) or T < 1:
        raise ValueError(f"timesteps must be a whole number >= 1; got {T!r}")
    T = int(T)
    start, end = _scaled_ends(T)
    if kind == "linear":
        betas = np.linspace(start, end, T, dtype=np.float64)
    elif kind == "quadratic":
        betas = np.linspace(start**0.5, end**0.5, T, dtype=np.float64) ** 2
    elif kind == "sigmoid":
        x = np.linspace(-6.0, 6.0, T, dtype=np.float64)
        betas = 1.0 / (1.0 + np.exp(-x)) * (end - start) + start
    else:  # cosine

        def alpha_bar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = np.array([1.0 - alpha_bar((i + 1) / T) / alpha_bar(i / T) for i in range(T)], dtype=np.float64)
    return np.minimum(betas, MAX_BETA)


class NoiseSchedule:
    """Every quantity of the forward process that depends on t alone, precomputed in float64.

    Arrays have shape (T,) and are indexed by the 0-based timestep t.
    """

    def __init__(self, betas: np.ndarray, kind: str = "custom") -> None:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"betas must be a non-empty 1-D array; got shape {betas.shape}")
        if not np.all((betas > 0) & (betas < 1)):
            raise ValueError("betas must all lie strictly between 0 and 1")
        self.kind = kind
        self.T = int(betas.size)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)  # alpha-bar_t
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])  # alpha-bar_{t-1}; 1 before the first step
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # beta-tilde_t, eq. (7), Ho et al. 2020; 0 at t=0 where x_{t-1} = x_0 is known.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # log beta-tilde with the t=0 value (log 0) replaced by t=1's, as the paper's code does.
        if self.T > 1:
            self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1],
                                                                   self.posterior_variance[1:]))
        else:
            self.posterior_log_variance_clipped = np.log(betas.copy())
        # mu-tilde_t(x_t, x_0) = coef1 * x_0 + coef2 * x_t, eq. (7).
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = ((1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas)
                                     / (1.0 - self.alphas_cumprod))
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)  # SNR(t) = alpha-bar / (1 - alpha-bar)

    @classmethod
    def from_config(cls, kind: str, T: int) -> "NoiseSchedule":
        return cls(get_betas(kind, T), kind=kind)

    def __repr__(self) -> str:
        return f"NoiseSchedule(kind={self.kind!r}, T={self.T})"
