"""The forward process, the training objective and the samplers of Ho et al. 2020.

Notation follows the paper with 0-based timesteps (our ``t`` is the paper's ``t + 1``):
``alpha-bar_t = prod_{s<=t} (1 - beta_s)``, ``x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps``.

The samplers are generators yielding a :class:`StepResult` per step (the pattern of
improved-diffusion's ``p_sample_loop_progressive``): the CLI, the live canvas and the tests all
drain the same loop. Single steps are exposed as ``p_sample_step`` / ``ddim_step``, taking the
network's output rather than the network, so they can be checked against diffusers' schedulers.

Random numbers are drawn from the explicit ``generator`` on the generator's own device and then
moved, so a CPU generator gives the same samples on every device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from .choices import LossWeighting, Prediction, Sampler, Variance, resolve_spacing
from .schedules import NoiseSchedule
from .steps import (SPACINGS, _bounds, _check_start, _randn, check_spacing, check_steps,  # noqa: F401
                    checked_timesteps, clip_x0, ddim_timesteps, trailing_timesteps)
from .types import StepResult

if TYPE_CHECKING:  # config.py has no torch; imported only for annotations
    from ..config import DiffusionConfig, SamplingConfig

PREDICTIONS = Prediction.values()
LOSS_WEIGHTINGS = LossWeighting.values()
VARIANCES = Variance.values()
# DPM-Solver++ samplers (engine/dpm_solver.py): name -> (solver order, stochastic SDE variant)
DPM_SAMPLERS = {"dpmpp-2m": (2, False), "dpmpp-3m": (3, False), "dpmpp-2m-sde": (2, True)}
# UniPC (engine/unipc.py): name -> its settings (see config.SAMPLER_INFO for why this order)
UNIPC_SAMPLERS = {"unipc": dict(order=2, solver_type="bh2")}  # diffusers' defaults; with log-SNR steps (auto)

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _model_device(model) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


class GaussianDiffusion:
    """Forward process q, reverse process p and the loss, for one noise schedule."""

    def __init__(self, schedule: NoiseSchedule, prediction: str = "epsilon", loss_weighting: str = "none",
                 min_snr_gamma: float = 5.0) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}; got {prediction!r}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}; got {loss_weighting!r}")
        if not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be > 0; got {min_snr_gamma!r}")
        self.schedule = schedule
        self.prediction = prediction
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self._cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: "DiffusionConfig") -> "GaussianDiffusion":
        """From a DiffusionConfig; explicit ``betas`` (imported models) override ``schedule``."""
        betas = getattr(cfg, "betas", None)
        if betas is not None:
            if len(betas) != cfg.timesteps:
                raise ValueError(f"diffusion.betas must have diffusion.timesteps={cfg.timesteps} values; got "
                                 f"{len(betas)}")
            schedule = NoiseSchedule(np.asarray(betas, dtype=np.float64), kind="custom")
        else:
            schedule = NoiseSchedule.from_config(cfg.schedule, cfg.timesteps)
        return cls(schedule, prediction=cfg.prediction,
                   loss_weighting=cfg.loss_weighting, min_snr_gamma=cfg.min_snr_gamma)

    @property
    def T(self) -> int:
        return self.schedule.T

    # -- coefficients ---------------------------------------------------------------------------
    def _coef(self, name: str, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor | float:
        """Schedule array ``name`` at ``t``: a Python float for an int t, else (B, 1, 1, 1) like x."""
        arr: np.ndarray = getattr(self.schedule, name)
        if isinstance(t, (int, np.integer)):
            return float(arr[int(t)])
        key = (name, x.device, x.dtype)
        table = self._cache.get(key)
        if table is None:
            table = torch.from_numpy(arr).to(device=x.device, dtype=x.dtype)
            self._cache[key] = table
        return table[t.to(x.device)].view(-1, *([1] * (x.dim() - 1)))  # (B, 1, 1, 1)

    # -- forward process ------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(alpha-bar_t) x_0, (1 - alpha-bar_t) I), eq. (4)."""
        return (self._coef("sqrt_alphas_cumprod", t, x0) * x0
                + self._coef("sqrt_one_minus_alphas_cumprod", t, x0) * noise)

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """One transition x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), eq. (2)."""
        return (self._coef("alphas", t, x_prev) ** 0.5) * x_prev + (self._coef("betas", t, x_prev) ** 0.5) * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int):
        """q(x_{t-1} | x_t, x_0) = N(mu-tilde, beta-tilde I), eqs. (6)-(7): (mean, variance, log_variance)."""
        mean = self._coef("posterior_mean_coef1", t, x_t) * x0 + self._coef("posterior_mean_coef2", t, x_t) * x_t
        var = self._coef("posterior_variance", t, x_t)
        log_var = self._coef("posterior_log_variance_clipped", t, x_t)
        if isinstance(t, (int, np.integer)):
            var = torch.full_like(x_t, var)
            log_var = torch.full_like(x_t, log_var)
        else:
            var, log_var = var.expand_as(x_t), log_var.expand_as(x_t)
        return mean, var, log_var

    # -- what the network predicts --------------------------------------------------------------
    def predict_x0_and_eps(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int):
        """Turn the network's output (epsilon, x_0 or v) into (pred_x0, pred_eps)."""
        if self.prediction == "epsilon":
            eps = model_output
            x0 = (self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                  - self._coef("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)
        elif self.prediction == "x0":
            x0 = model_output
            eps = self._eps_from_x0(x0, x_t, t)
        else:  # v = sqrt(alpha-bar) eps - sqrt(1 - alpha-bar) x_0 (Salimans & Ho 2022)
            a, s = self._coef("sqrt_alphas_cumprod", t, x_t), self._coef("sqrt_one_minus_alphas_cumprod", t, x_t)
            x0 = a * x_t - s * model_output
            eps = s * x_t + a * model_output
        return x0, eps

    def _eps_from_x0(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        return ((self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0)
                / self._coef("sqrt_recipm1_alphas_cumprod", t, x_t))

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """What the network should output for (x_0, eps, t)."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "x0":
            return x0
        # v = sqrt(alpha-bar_t) eps - sqrt(1 - alpha-bar_t) x_0 (Salimans & Ho 2022)
        return (self._coef("sqrt_alphas_cumprod", t, x0) * noise
                - self._coef("sqrt_one_minus_alphas_cumprod", t, x0) * x0)

    def loss_weights(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
        """Per-sample weights (B,) of the squared error, or None for the paper's unweighted L_simple.

        min-SNR-gamma (Hang et al. 2023) weights the x_0 error by w = min(SNR, gamma); expressed on the
        predicted quantity that is w / SNR for epsilon, w for x_0 and w / (SNR + 1) for v. Its weight
        vanishes at the noisiest steps (SNR -> 0), where every sampling chain begins; min_snr_plus1 uses
        w = min(SNR + 1, gamma) instead, the plain v-loss's x_0 weight capped at gamma, which stays >= 1.
        """
        if self.loss_weighting == "none":
            return None
        snr = self._coef("snr", t, like).flatten()  # (B,)
        base = snr + 1.0 if self.loss_weighting == "min_snr_plus1" else snr
        clipped = torch.clamp(base, max=self.min_snr_gamma)
        if self.prediction == "epsilon":
            return clipped / snr
        if self.prediction == "x0":
            return clipped
        return clipped / (snr + 1.0)

    def training_losses(self, model: Model, x0: torch.Tensor, t: torch.Tensor | None = None,
                        noise: torch.Tensor | None = None, generator: torch.Generator | None = None):
        """Per-sample loss (B,) and the timesteps used (B,): L_simple, eq. (14), or its variants."""
        B = x0.shape[0]
        if t is None:
            gen_device = generator.device if generator is not None else x0.device
            t = torch.randint(0, self.T, (B,), generator=generator, device=gen_device).to(x0.device)
        if noise is None:
            noise = _randn(x0.shape, generator, x0.device, x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, t)
        target = self.training_target(x0, noise, t)
        loss = (out.float() - target.float()).square().mean(dim=tuple(range(1, x0.dim())))  # (B,)
        w = self.loss_weights(t, loss)
        if w is not None:
            loss = loss * w
        return loss, t

    # -- single reverse steps -------------------------------------------------------------------
    def p_sample_step(self, model_output: torch.Tensor, x_t: torch.Tensor, t: int, *, variance: str = "fixed_small",
                      clip_denoised: bool = True, noise: torch.Tensor | None = None, **bounds):
        """One ancestral step x_t -> x_{t-1} (Algorithm 2): (x_{t-1}, pred_x0).

        The mean is the posterior mean mu-tilde(x_t, pred_x0), eq. (7) -- equal to Algorithm 2's
        ``(x_t - beta_t / sqrt(1 - alpha-bar_t) eps) / sqrt(alpha_t)`` when nothing is clipped.
        ``variance``: fixed_small sigma_t^2 = beta-tilde_t, fixed_large sigma_t^2 = beta_t (Sec. 3.2).
        No noise is added at t = 0. ``bounds``: ``clip_range``, ``dynamic_threshold``,
        ``threshold_max`` as for :func:`clip_x0`.
        """
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {', '.join(VARIANCES)}; got {variance!r}")
        pred_x0, _ = self.predict_x0_and_eps(model_output, x_t, t)
        pred_x0 = clip_x0(pred_x0, clip_denoised=clip_denoised, **bounds)
        mean = self._coef("posterior_mean_coef1", t, x_t) * pred_x0 + self._coef("posterior_mean_coef2", t, x_t) * x_t
        if t == 0:
            return mean, pred_x0
        if noise is None:
            raise ValueError("p_sample_step needs noise for t > 0")
        var = self._coef("posterior_variance" if variance == "fixed_small" else "betas", t, x_t)
        return mean + var**0.5 * noise, pred_x0

    def ddim_step(self, model_output: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int, *, eta: float = 0.0,
                  clip_denoised: bool = True, noise: torch.Tensor | None = None, **bounds):
        """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12): (x_{t_prev}, pred_x0).

        ``t_prev = -1`` means the final step to x_0 (alpha-bar = 1). When pred_x0 is clipped the
        epsilon is recomputed from it (as improved-diffusion does; diffusers'
        ``use_clipped_model_output=True``), which makes eta=1 over all steps equal ancestral
        sampling with beta-tilde. ``bounds`` as for :func:`clip_x0` (thresholding also recomputes eps).
        """
        pred_x0, eps = self.predict_x0_and_eps(model_output, x_t, t)
        if clip_denoised or bounds.get("dynamic_threshold") is not None:
            pred_x0 = clip_x0(pred_x0, clip_denoised=clip_denoised, **bounds)
            eps = self._eps_from_x0(pred_x0, x_t, t)
        a_t = float(self.schedule.alphas_cumprod[t])
        a_prev = float(self.schedule.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5  # eq. (16)
        x_prev = a_prev**0.5 * pred_x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            if noise is None:
                raise ValueError("ddim_step needs noise when eta > 0")
            x_prev = x_prev + sigma * noise
        return x_prev, pred_x0

    def ddim_timesteps(self, steps: int, spacing: str = "trailing", steps_offset: int = 0) -> list[int]:
        """The DDIM sub-sequence of ``steps`` timesteps, descending (see :func:`ddim_timesteps`)."""
        return ddim_timesteps(self.T, steps, spacing, steps_offset, self.schedule.alphas_cumprod)

    def sampler_timesteps(self, sampling: "SamplingConfig") -> list[int]:
        """The timesteps ``sample_progressive(sampling)`` visits, in order (one per network call)."""
        if sampling.sampler == "ddpm":
            return list(range(self.T - 1, -1, -1))
        if getattr(sampling, "timesteps", None):
            return list(sampling.timesteps)  # tuned for this model
        spacing = resolve_spacing(sampling.sampler, getattr(sampling, "spacing", "trailing"))
        if sampling.sampler == "ddim":
            return self.ddim_timesteps(sampling.steps, spacing, getattr(sampling, "steps_offset", 0))
        from .dpm_solver import dpm_solver_timesteps

        return dpm_solver_timesteps(self.T, sampling.steps, spacing, self.schedule.alphas_cumprod)

    # -- sampling loops -------------------------------------------------------------------------
    def _start(self, model, shape, noise, device, dtype, generator):
        if noise is not None:
            device = torch.device(device) if device is not None else noise.device
            return noise.to(device), device
        device = torch.device(device) if device is not None else _model_device(model)
        return _randn(tuple(shape), generator, device, dtype or torch.float32), device

    def p_sample_loop_progressive(self, model: Model, shape, *, variance: str = "fixed_small",
                                  clip_denoised: bool = True,
                                  generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                                  device=None, should_stop: Callable[[], bool] | None = None,
                                  dtype: torch.dtype | None = None, start_index: int = 0,
                                  **bounds) -> Iterator[StepResult]:
        """Ancestral sampling, Algorithm 2: yields T steps t = T-1 ... 0; the last x_t is x_0.

        ``noise`` is x_T (else drawn from ``generator``); noise for each step with t > 0 is drawn
        from ``generator`` in order. A set ``should_stop`` ends the chain before the next step.
        ``start_index`` k > 0 resumes a chain: ``noise`` is then the x the chain holds before its
        step k (the x_t of step k-1's StepResult, at t = T-1-k) and steps k … T-1 are taken.
        """
        if variance not in VARIANCES:
            raise ValueError(f"sampling.variance must be one of {', '.join(VARIANCES)}; got {variance!r}")
        _check_start(start_index, self.T, noise)
        with torch.inference_mode():
            x, device = self._start(model, shape, noise, device, dtype, generator)
            B = x.shape[0]
            for i, t in enumerate(range(self.T - 1, -1, -1)):
                if i < start_index:
                    continue
                if should_stop is not None and should_stop():
                    return
                out = model(x, torch.full((B,), t, dtype=torch.long, device=device))
                z = _randn(x.shape, generator, device, x.dtype) if t > 0 else None
                x, pred_x0 = self.p_sample_step(out.to(x.dtype), x, t, variance=variance, clip_denoised=clip_denoised,
                                                noise=z, **bounds)
                yield StepResult(t=t, index=i, total=self.T, x_t=x, pred_x0=pred_x0)

    def ddim_sample_loop_progressive(self, model: Model, shape, *, steps: int, eta: float = 0.0,
                                     clip_denoised: bool = True,
                                     generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                                     device=None, should_stop: Callable[[], bool] | None = None,
                                     dtype: torch.dtype | None = None, spacing: str = "trailing", steps_offset: int = 0,
                                     start_index: int = 0, timesteps: list[int] | None = None,
                                     **bounds) -> Iterator[StepResult]:
        """DDIM sampling over ``ddim_timesteps(steps, spacing, steps_offset)``; each step goes to the next
        timestep of that list (the last to alpha-bar = 1). Noise is drawn only for steps with sigma > 0.

        diffusers' DDIMScheduler steps instead to ``t - T // steps``; the two agree whenever the
        timesteps are evenly spaced by ``T // steps`` (leading at any offset; trailing when steps
        divides T), and otherwise diffusers' chain jumps between timesteps it does not evaluate.
        ``start_index`` k > 0 resumes at step k: ``noise`` is the x at timestep ``ts[k]``. An explicit
        ``timesteps`` list (descending) replaces the spacing's.
        """
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"sampling.eta must be from 0 to 1; got {eta!r}")
        ts = (self.ddim_timesteps(steps, spacing, steps_offset) if timesteps is None
              else checked_timesteps(self.T, timesteps))
        _check_start(start_index, len(ts), noise)
        with torch.inference_mode():
            x, device = self._start(model, shape, noise, device, dtype, generator)
            B = x.shape[0]
            for i, t in enumerate(ts):
                if i < start_index:
                    continue
                if should_stop is not None and should_stop():
                    return
                t_prev = ts[i + 1] if i + 1 < len(ts) else -1
                out = model(x, torch.full((B,), t, dtype=torch.long, device=device))
                z = _randn(x.shape, generator, device, x.dtype) if eta > 0 and t_prev >= 0 else None
                x, pred_x0 = self.ddim_step(out.to(x.dtype), x, t, t_prev, eta=eta, clip_denoised=clip_denoised,
                                            noise=z, **bounds)
                yield StepResult(t=t, index=i, total=len(ts), x_t=x, pred_x0=pred_x0)

    def sample_progressive(self, model: Model, shape, sampling: "SamplingConfig", *,
                           generator: torch.Generator | None = None,
                           device=None, should_stop: Callable[[], bool] | None = None,
                           noise: torch.Tensor | None = None,
                           dtype: torch.dtype | None = None, start_index: int = 0,
                           history: list[torch.Tensor] | None = None) -> Iterator[StepResult]:
        """Dispatch on ``sampling.sampler``; without a generator one is seeded from ``sampling.seed``.
        ``noise`` (x_T) and ``dtype`` as for the loops. ``start_index`` k > 0 resumes a chain at its
        step k from ``noise`` = the x it held there; DPM-Solver++ and UniPC also take ``history``, the
        pred_x0 of the steps before k (oldest first; the solver keeps at most its order of them)."""
        if generator is None:
            generator = torch.Generator().manual_seed(int(sampling.seed))
        bounds = _bounds(sampling)
        bounds.update(noise=noise, dtype=dtype, start_index=start_index)
        explicit = getattr(sampling, "timesteps", None)
        if explicit is not None and sampling.sampler != "ddpm":
            bounds["timesteps"] = list(explicit)  # tuned for this model: replace the spacing's
        spacing = resolve_spacing(sampling.sampler, getattr(sampling, "spacing", "trailing"))
        if sampling.sampler == "ddpm":
            return self.p_sample_loop_progressive(model, shape, variance=sampling.variance, generator=generator,
                                                  device=device, should_stop=should_stop, **bounds)
        if sampling.sampler == "ddim":
            return self.ddim_sample_loop_progressive(model, shape, steps=sampling.steps, eta=sampling.eta,
                                                     generator=generator,
                                                     device=device, should_stop=should_stop,
                                                     spacing=spacing,
                                                     steps_offset=getattr(sampling, "steps_offset", 0), **bounds)
        if sampling.sampler in DPM_SAMPLERS:
            from .dpm_solver import dpm_solver_sample_loop_progressive

            order, sde = DPM_SAMPLERS[sampling.sampler]
            return dpm_solver_sample_loop_progressive(
                self, model, shape, steps=sampling.steps, order=order, sde=sde,
                spacing=spacing, generator=generator, device=device,
                should_stop=should_stop, history=history, **bounds)
        if sampling.sampler in UNIPC_SAMPLERS:
            from .unipc import unipc_sample_loop_progressive

            return unipc_sample_loop_progressive(
                self, model, shape, steps=sampling.steps, spacing=spacing,
                generator=generator, device=device, should_stop=should_stop, history=history,
                **UNIPC_SAMPLERS[sampling.sampler], **bounds)
        raise ValueError(f"sampling.sampler must be one of {', '.join(Sampler.values())}; got {sampling.sampler!r}")

    def sample(self, model: Model, shape, sampling: "SamplingConfig", **kwargs) -> torch.Tensor | None:
        """Drain :meth:`sample_progressive` and return the last x_t: x_0 when the chain ran to the end
        (the caller checks its own ``should_stop``), None if it was stopped before the first step."""
        last = None
        for step in self.sample_progressive(model, shape, sampling, **kwargs):
            last = step
        return None if last is None else last.x_t
