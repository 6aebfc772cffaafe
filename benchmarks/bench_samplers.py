"""Sample quality against network evaluations (NFE) for each sampler, and seconds per image.

Run by hand (about 10 minutes on 2 CPU cores with the defaults):

    OMP_NUM_THREADS=1 python benchmarks/bench_samplers.py --minutes 3 --num 300
    python benchmarks/bench_samplers.py --run RUN_DIR          # score a model you already trained

Without --run it trains the tiny preset (16 px, v-prediction, min-SNR-5) on the built-in dataset
for --minutes with the ordinary trainer. Then, for every sampler and NFE (5, 10, 20, 50, 100), it
draws --num samples from the same seeds and scores them with a Frechet distance between
features of the samples and of the training images. The features come from a FIXED random-weight
conv net (three strided convs, mean- and max-pooled: 192 numbers per image): not Inception, so the
numbers compare samplers with each other on this model, not with published FIDs. Lower is better. Beside it,
the same distance on 4x4-average-pooled pixels (a plainer scorer: colour, contrast and layout, no texture).

Also measured: "Generate 16 images of 16 px with the default sampler for the tiny preset, chain
only" (goal <= 1 s on 2 cores): the median of 5 chains of sampling.service.generate with the
default SamplingConfig, after one warm-up chain.

With --diffusers it also scores diffusers' own DPMSolverMultistepScheduler (2M) and
UniPCMultistepScheduler (bh2) on the same model, seeds and scorer, with trailing spacing (rows
"diffusers-dpmpp-2m" and "diffusers-unipc"): they must equal the variants dpmpp-2m:spacing=trailing and
unipc:spacing=trailing (the app's samplers walk log-SNR steps, which diffusers has no name for).

--variants scores settings the sampler names do not reach, each NAME:key=value,key=value:
our engine's loops for ddim, dpmpp-2m, dpmpp-3m, dpmpp-2m-sde and unipc, and ipndm (this file's own,
order=1-4, not in the app); keys: the loop's keywords, e.g. order, solver_type, corrector, lower_order_final,
spacing; besides the engine's spacings, spacing=logsnr-full, karras[,rho=R] and quadratic, see
BENCH_SPACINGS. Or diffusers-dpmpp-2m / diffusers-unipc with scheduler keywords (e.g. solver_order=3,
final_sigmas_type=sigma_min, euler_at_final=true; spacing=logsnr hands diffusers-dpmpp-2m the engine's
log-SNR timesteps). nfe=N scores that variant at N evaluations only (e.g. ddim:nfe=50 as the reference).
teleport=S (any engine loop) starts the chain at sigma / alpha = S instead of t = T-1, carrying x_T there by the
exact probability-flow solution of a Gaussian with the training images' mean and covariance (Wang & Vastola's
"analytical teleportation"; not in the app); teleport_tol=E picks S as the lowest noise level at which that
Gaussian's denoiser is still within E (RMS per pixel, in [-1, 1]) of the training set's exact denoiser;
teleport=model picks the S at which the model's own x_0 prediction is closest to the Gaussian's.
tuned=true walks the timesteps the app's Tune finds for this model, sampler and NFE (sampling/tuning.py: 256
images from its own seed, never this file's, against a 50-step DPM-Solver++ 2M chain, then its last-step check
against the run's training images).
The same seeds for every row.
results.json keeps every point; benchmarks/plot_samplers.py draws it.

Self-contained on purpose (no code shared with bench_quality.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

SAMPLERS = ("ddim", "dpmpp-2m", "dpmpp-3m", "dpmpp-2m-sde", "unipc")
NFES = (5, 10, 20, 50, 100)
SEED_BASE = 1000  # batch b of every row starts from the seed SEED_BASE + b (--seed-base)


def feature_net(channels: int) -> torch.nn.Module:
    """A fixed random conv net (seeded): image in [-1, 1] (B, C, H, W) -> (B, 192) features."""
    g = torch.Generator().manual_seed(1234)
    convs = [torch.nn.Conv2d(channels, 32, 3, padding=1), torch.nn.Conv2d(32, 64, 3, stride=2, padding=1),
             torch.nn.Conv2d(64, 96, 3, stride=2, padding=1)]
    for c in convs:
        fan_in = c.in_channels * 9
        with torch.no_grad():
            c.weight.copy_(torch.randn(c.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            c.bias.zero_()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = torch.nn.ModuleList(convs)

        def forward(self, x):
            for c in self.convs:
                x = torch.relu(c(x))
            return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)  # (B, 96 + 96)

    return Net().eval().requires_grad_(False)


def _unit(images_u8: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) in [-1, 1]."""
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).to(dtype) / 127.5 - 1.0


def features(net: torch.nn.Module, images_u8: np.ndarray) -> np.ndarray:
    x = _unit(images_u8)
    with torch.inference_mode():
        return torch.cat([net(x[i:i + 500]) for i in range(0, len(x), 500)]).double().numpy()


def pooled_pixels(images_u8: np.ndarray) -> np.ndarray:
    """The images 4x4-average-pooled, flattened: (N, H/4 * W/4 * C) in [-1, 1], a second, plainer scorer's input."""
    return torch.nn.functional.avg_pool2d(_unit(images_u8), 4).flatten(1).double().numpy()


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), square roots by eigendecomposition."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(np.clip(inner, 0,
                                                                                                  None)).sum())


def train(minutes: float, run_dir: Path) -> Path:
    from ddpm_studio.config import RunConfig
    from ddpm_studio.training.trainer import Trainer

    cfg = RunConfig.from_preset("tiny", train=dict(minutes=minutes, steps=None, preview_every=0,
                                                   checkpoint_every=0, device="cpu"))
    done = Trainer(cfg, run_dir).run()
    print(f"trained: {done.message}")
    return run_dir


def sample(loaded, sampler: str, steps: int, num: int, batch: int) -> tuple[np.ndarray, float]:
    from ddpm_studio.config import SamplingConfig
    from ddpm_studio.sampling.service import generate, to_uint8

    out, t0 = [], time.perf_counter()
    for b, start in enumerate(range(0, num, batch)):
        n = min(batch, num - start)
        cfg = SamplingConfig(sampler=sampler, steps=steps, num_images=n, seed=SEED_BASE + b)
        last = None
        for last in generate(loaded, cfg):
            pass
        out.append(to_uint8(last.x_t))
    return np.concatenate(out), (time.perf_counter() - t0) / num


def parse_variant(spec: str) -> tuple[str, dict]:
    """'unipc:order=2,solver_type=bh1' -> ('unipc', {'order': 2, 'solver_type': 'bh1'})."""
    name, _, rest = spec.partition(":")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        low = value.lower()
        if low in ("true", "false"):
            kwargs[key] = low == "true"
        else:
            try:
                kwargs[key] = int(value)
            except ValueError:
                try:
                    kwargs[key] = float(value)
                except ValueError:
                    kwargs[key] = value
    return name, kwargs


def _distinct(ts: list[int], name: str, steps: int) -> list[int]:
    if len(set(ts)) != len(ts):
        raise ValueError(f"{name} spacing repeats timesteps at {steps} steps: {ts}")
    return ts


def logsnr_full_timesteps(diffusion, steps: int) -> list[int]:
    """The engine's logsnr spacing without its bound at sigma/alpha = 160: the same on the linear schedule; on
    the cosine one its grid starts at sigma/alpha = 2e4, and its first points fall on 999, 998, ..."""
    from ddpm_studio.engine.steps import logsnr_timesteps

    return logsnr_timesteps(diffusion.schedule.alphas_cumprod, steps, sigma_max=float("inf"))


def karras_timesteps(diffusion, steps: int, rho: float = 7.0) -> list[int]:
    """Karras et al.'s (EDM) spacing: sigma_i = (smax^(1/rho) + i/steps (smin^(1/rho) - smax^(1/rho)))^rho for
    i = 0..steps-1, from sigma(T-1) towards sigma(0) (the end point, where the chain goes to x_0, is not
    evaluated), each mapped to the timestep of the nearest log-sigma."""
    ab = diffusion.schedule.alphas_cumprod
    log_sigma = 0.5 * np.log((1.0 - ab) / ab)  # increasing in t
    smax, smin = np.exp(log_sigma[-1]), np.exp(log_sigma[0])
    ramp = np.arange(steps) / steps
    sig = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    ts = [int(np.argmin(np.abs(log_sigma - np.log(v)))) for v in sig]
    return _distinct(ts, "Karras", steps)


def quadratic_timesteps(diffusion, steps: int) -> list[int]:
    """DPM-Solver's "time_quadratic" spacing: t_i = (sqrt(T-1) (1 - i/steps))^2, i = 0..steps-1."""
    T = diffusion.T
    ts = [int(round(((T - 1) ** 0.5 * (1 - i / steps)) ** 2)) for i in range(steps)]
    return _distinct(ts, "quadratic", steps)


BENCH_SPACINGS = {"logsnr-full": logsnr_full_timesteps, "karras": karras_timesteps,
                  "quadratic": quadratic_timesteps}


AB_WEIGHTS = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def ipndm_chain(loaded, timesteps: list[int], n: int, seed: int, order: int = 4):
    """iPNDM (Zhang & Chen 2023, the DEIS paper's improved PNDM; not in the engine): Adams-Bashforth on
    dx/ds = eps in x = x_t / alpha_t, s = sigma_t / alpha_t, with the fixed weights of equal steps whatever the
    spacing, the order rising from 1 (the first step is DDIM's); the last step goes to s = 0 at full order.
    x_0 estimates clipped to [-1, 1] as the app's samplers do. Yields one StepResult-like object at the end."""
    from types import SimpleNamespace

    from ddpm_studio.engine.dpm_solver import threshold_x0

    d, ab = loaded.diffusion, loaded.diffusion.schedule.alphas_cumprod
    alpha = [float(np.sqrt(ab[t])) for t in timesteps]
    s = [float(np.sqrt(1 - ab[t])) / a for t, a in zip(timesteps, alpha)] + [0.0]
    x = torch.randn((n, *loaded.image_shape), generator=torch.Generator().manual_seed(seed)) / alpha[0]
    eps_history: list[torch.Tensor] = []  # newest first
    with torch.inference_mode():
        for j, t in enumerate(timesteps):
            x_t = x * alpha[j]
            x0, _ = d.predict_x0_and_eps(loaded.model(x_t, torch.full((n,), t, dtype=torch.long)), x_t, int(t))
            eps_history = [(x - threshold_x0(x0, clip=True)) / s[j]] + eps_history[:order - 1]
            weights = AB_WEIGHTS[len(eps_history)]
            x = x + (s[j + 1] - s[j]) * sum(w * e for w, e in zip(weights, eps_history))
    yield SimpleNamespace(x_t=x)


def _flat_images(images_u8: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C*H*W) float64 in [-1, 1], flattened in the model's (C, H, W) order."""
    return _unit(images_u8, torch.float64).reshape(len(images_u8), -1)


_GAUSS: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
_TELEPORT_RATIOS: dict[tuple, float] = {}  # (id(loaded), rule, tol) -> sigma / alpha, found once per model


def gaussian_stats(loaded) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's training images flattened in [-1, 1], their mean, and the eigenvalues and eigenvectors of their
    covariance (float64); read and computed once per model."""
    if id(loaded) not in _GAUSS:
        from ddpm_studio.data import load_images

        x = _flat_images(load_images(loaded.config.data, use_cache=True).images)
        mu = x.mean(0)
        lam, U = torch.linalg.eigh(torch.cov((x - mu).T))
        _GAUSS[id(loaded)] = (x, mu, lam.clamp_min(0.0), U)
    return _GAUSS[id(loaded)]


def gaussian_x0(loaded, x_flat: torch.Tensor, a: float, s: float) -> torch.Tensor:
    """The Gaussian model's optimal denoiser E[x_0 | x_t] at alpha = a, sigma = s, for (N, C*H*W) float64 x_t."""
    _, mu, lam, U = gaussian_stats(loaded)
    return mu + ((x_flat - a * mu) @ U) * (a * lam / (a * a * lam + s * s)) @ U.T


def timestep_at(diffusion, ratio: float) -> int:
    """The timestep whose sigma / alpha is nearest ``ratio`` (in log)."""
    ab = np.asarray(diffusion.schedule.alphas_cumprod, dtype=np.float64)
    return int(np.argmin(np.abs(0.5 * np.log((1 - ab) / ab) - np.log(ratio))))


def teleport(loaded, x: torch.Tensor, t_from: int, t_to: int) -> torch.Tensor:
    """The probability-flow ODE's exact solution from t_from to t_to if the data were Gaussian with the training
    images' mean and covariance (Wang & Vastola 2023): in each eigendirection of the covariance the deviation
    from alpha_t mu scales with the marginal's standard deviation sqrt(alpha_t^2 lambda + sigma_t^2)."""
    _, mu, lam, U = gaussian_stats(loaded)
    ab = loaded.diffusion.schedule.alphas_cumprod
    a0, a1 = float(np.sqrt(ab[t_from])), float(np.sqrt(ab[t_to]))
    s0, s1 = float(np.sqrt(1 - ab[t_from])), float(np.sqrt(1 - ab[t_to]))
    scale = torch.sqrt((a1 ** 2 * lam + s1 ** 2) / (a0 ** 2 * lam + s0 ** 2))
    y = (x.reshape(len(x), -1).double() - a0 * mu) @ U
    return ((y * scale) @ U.T + a1 * mu).reshape(x.shape).to(x.dtype)


def gaussian_error(loaded, ratio: float, n: int = 256) -> float:
    """RMS difference per pixel, at sigma / alpha = ratio, between the exact optimal denoiser of the training
    images (a softmax over all of them) and the Gaussian model's, on n noised training images (seed 0)."""
    X = gaussian_stats(loaded)[0]
    g = torch.Generator().manual_seed(0)
    x0 = X[torch.randperm(len(X), generator=g)[:n]]
    a = 1.0 / (1.0 + ratio ** 2) ** 0.5
    s = ratio * a
    xt = a * x0 + s * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    exact = torch.softmax(-torch.cdist(xt, a * X) ** 2 / (2 * s * s), dim=1) @ X
    return float(((exact - gaussian_x0(loaded, xt, a, s)) ** 2).mean().sqrt())


def teleport_ratio(loaded, tol: float) -> float:
    """The lowest sigma / alpha on a log grid from 160 down to 1 above which the Gaussian model's denoiser stays
    within ``tol`` (RMS per pixel) of the training images' exact one."""
    ratio = 160.0
    for r in np.geomspace(160.0, 1.0, 41)[1:]:
        if gaussian_error(loaded, float(r)) > tol:
            break
        ratio = float(r)
    print(f"teleport: tol {tol} -> sigma/alpha {ratio:.2f}", flush=True)
    return ratio


def model_gaussian_gap(loaded, n: int = 64) -> list[tuple[float, float]]:
    """(sigma / alpha, RMS per pixel) on a log grid from 160 down to 1: how far the model's x_0 prediction is from
    the Gaussian model's at points the Gaussian flow carried there from x_T (n images, seed 0)."""
    d = loaded.diffusion
    ab = np.asarray(d.schedule.alphas_cumprod, dtype=np.float64)
    x_T = torch.randn((n, *loaded.image_shape), generator=torch.Generator().manual_seed(0))
    gaps = []
    with torch.inference_mode():
        for r in np.geomspace(160.0, 1.0, 41):
            t = timestep_at(d, float(r))
            x = teleport(loaded, x_T, d.T - 1, t)
            x0, _ = d.predict_x0_and_eps(loaded.model(x, torch.full((n,), t, dtype=torch.long)), x, t)
            g = gaussian_x0(loaded, x.reshape(n, -1).double(), float(np.sqrt(ab[t])), float(np.sqrt(1 - ab[t])))
            gaps.append((float(r), float(((x0.reshape(n, -1).double() - g) ** 2).mean().sqrt())))
    return gaps


def teleport_ratio_model(loaded) -> float:
    """The sigma / alpha where the model and the Gaussian agree best: above it the model (little trained at high
    noise) is the worse of the two, below it the Gaussian (the data are not Gaussian)."""
    ratio, gap = min(model_gaussian_gap(loaded), key=lambda p: p[1])
    print(f"teleport: model-Gaussian gap smallest at sigma/alpha {ratio:.2f} ({gap:.3f})", flush=True)
    return ratio


def teleport_start(loaded, kw: dict) -> float:
    """The sigma / alpha a teleport variant starts at (popping its keys from kw): teleport=S, teleport=model or
    teleport_tol=E; a searched one is found once per model, not again for every batch."""
    value = kw.pop("teleport", None)
    if "teleport_tol" in kw:
        key = (id(loaded), "tol", float(kw.pop("teleport_tol")))
    elif value == "model":
        key = (id(loaded), "model", None)
    else:
        return float(value)
    if key not in _TELEPORT_RATIOS:
        _TELEPORT_RATIOS[key] = teleport_ratio(loaded, key[2]) if key[1] == "tol" else teleport_ratio_model(loaded)
    return _TELEPORT_RATIOS[key]


_TUNED: dict[tuple, list[int]] = {}  # (id(loaded), sampler, steps) -> the app's tuned timesteps, once per model


def tuned_timesteps(loaded, name: str, steps: int) -> list[int]:
    """The timesteps the app's Tune (sampling.tuning.tune_timesteps, its own seeds, the last-step check against the
    run's training images when they are at hand) finds for this model."""
    from ddpm_studio.config import SamplingConfig
    from ddpm_studio.evaluation.metrics import tuning_images
    from ddpm_studio.sampling.tuning import tune_timesteps

    key = (id(loaded), name, steps)
    if key not in _TUNED:
        result = tune_timesteps(loaded, SamplingConfig(sampler=name, steps=steps), data=tuning_images(loaded)[0])
        print(f"  tuned: {result.summary()}", flush=True)
        _TUNED[key] = list(result.timesteps)
    return _TUNED[key]


def teleport_timesteps(diffusion, steps: int, ratio: float) -> list[int]:
    """``steps`` log-SNR spaced timesteps from the one nearest sigma / alpha = ``ratio`` down."""
    from ddpm_studio.engine.steps import logsnr_timesteps

    t_skip = timestep_at(diffusion, ratio)
    return logsnr_timesteps(diffusion.schedule.alphas_cumprod[:t_skip + 1], steps, sigma_max=float("inf"))


def engine_chain(loaded, name: str, kwargs: dict, steps: int, n: int, seed: int):
    """One chain of our engine's loop ``name`` with ``kwargs``; x_T from the seed as generate() draws it."""
    from ddpm_studio.engine.diffusion import DPM_SAMPLERS, UNIPC_SAMPLERS
    from ddpm_studio.engine.dpm_solver import dpm_solver_sample_loop_progressive
    from ddpm_studio.engine.unipc import unipc_sample_loop_progressive

    d, kw = loaded.diffusion, dict(kwargs)
    if kw.get("spacing") in BENCH_SPACINGS:  # spacings the engine does not have: explicit timesteps
        extra = {"rho": float(kw.pop("rho"))} if "rho" in kw else {}
        kw["timesteps"] = BENCH_SPACINGS[kw.pop("spacing")](d, steps, **extra)
    if kw.pop("tuned", False):
        kw["timesteps"] = tuned_timesteps(loaded, name, steps)
        kw.pop("spacing", None)
    if name == "ipndm":
        from ddpm_studio.engine.dpm_solver import dpm_solver_timesteps

        ts = kw.pop("timesteps", None) or dpm_solver_timesteps(d.T, steps, kw.pop("spacing", "logsnr"),
                                                               d.schedule.alphas_cumprod)
        return ipndm_chain(loaded, ts, n, seed, **kw)
    common = dict(generator=torch.Generator().manual_seed(seed), device=loaded.device)
    shape = (n, *loaded.image_shape)
    if "teleport" in kw or "teleport_tol" in kw:  # start lower, x carried there by the Gaussian's exact flow
        if kw.pop("spacing", "logsnr") != "logsnr":
            raise ValueError("a teleport variant walks log-SNR steps from where it starts")
        kw["timesteps"] = teleport_timesteps(d, steps, teleport_start(loaded, kw))
        x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        common = dict(noise=teleport(loaded, x_T, d.T - 1, kw["timesteps"][0]), device=loaded.device)
    if name == "ddim":
        return d.ddim_sample_loop_progressive(loaded.model, shape, steps=steps, **{"spacing": "trailing", **kw},
                                              **common)
    if name in DPM_SAMPLERS:
        order, sde = DPM_SAMPLERS[name]
        return dpm_solver_sample_loop_progressive(d, loaded.model, shape, steps=steps,
                                                  **{"order": order, "sde": sde, **kw}, **common)
    return unipc_sample_loop_progressive(d, loaded.model, shape, steps=steps, **{**UNIPC_SAMPLERS[name], **kw},
                                         **common)


def sample_variant(loaded, spec: str, steps: int, num: int, batch: int) -> tuple[np.ndarray, float]:
    from ddpm_studio.sampling.service import to_uint8

    name, kwargs = parse_variant(spec)
    kwargs.pop("nfe", None)  # the point's NFE comes from the caller
    if name.startswith("diffusers-"):
        return sample_diffusers(loaded, name, steps, num, batch, **kwargs)
    out, t0 = [], time.perf_counter()
    for b, start in enumerate(range(0, num, batch)):
        last = None
        for last in engine_chain(loaded, name, kwargs, steps, min(batch, num - start), SEED_BASE + b):
            pass
        out.append(to_uint8(last.x_t))
    return np.concatenate(out), (time.perf_counter() - t0) / num


def sample_diffusers(loaded, kind: str, steps: int, num: int, batch: int, **options) -> tuple[np.ndarray, float]:
    """The same chain with one of diffusers' schedulers (same betas, prediction, trailing spacing, clipping, seeds);
    ``options`` override those scheduler settings."""
    import diffusers

    from ddpm_studio.sampling.service import to_uint8

    from ddpm_studio.engine.steps import logsnr_timesteps

    logsnr = options.pop("spacing", None) == "logsnr"  # DPM-Solver++ only: our log-SNR timesteps handed to it
    pred = {"epsilon": "epsilon", "x0": "sample", "v": "v_prediction"}[loaded.config.diffusion.prediction]
    common = {**dict(num_train_timesteps=loaded.diffusion.T, trained_betas=loaded.diffusion.schedule.betas,
                     prediction_type=pred, timestep_spacing="trailing", thresholding=True, sample_max_value=1.0,
                     final_sigmas_type="zero"), **options}
    cls = {"diffusers-dpmpp-2m": diffusers.DPMSolverMultistepScheduler,
           "diffusers-unipc": diffusers.UniPCMultistepScheduler}[kind]
    out, t0 = [], time.perf_counter()
    for b, start in enumerate(range(0, num, batch)):
        n = min(batch, num - start)
        sched = cls(**common)
        if logsnr:
            sched.set_timesteps(timesteps=logsnr_timesteps(loaded.diffusion.schedule.alphas_cumprod, steps))
        else:
            sched.set_timesteps(steps)
        x = torch.randn((n, *loaded.image_shape), generator=torch.Generator().manual_seed(SEED_BASE + b))
        with torch.inference_mode():
            for t in sched.timesteps:
                x = sched.step(loaded.model(x, torch.full((n,), int(t))), t, x).prev_sample
        out.append(to_uint8(x))
    return np.concatenate(out), (time.perf_counter() - t0) / num


def default_chain_seconds(repeats: int = 5) -> tuple[float, str]:
    """16 images of 16 px, the default SamplingConfig, tiny preset (random weights: the time is the same)."""
    from ddpm_studio.config import RunConfig, SamplingConfig
    from ddpm_studio.engine.unet import build_model
    from ddpm_studio.artifacts.loaded import build_loaded
    from ddpm_studio.sampling.service import generate

    cfg = RunConfig.from_preset("tiny")
    torch.manual_seed(0)
    loaded = build_loaded(cfg, build_model(cfg.model).state_dict(), step=0, source="random", device=torch.device("cpu"))
    sampling = SamplingConfig(num_images=16)

    def chain():
        t0 = time.perf_counter()
        for _ in generate(loaded, sampling):
            pass
        return time.perf_counter() - t0

    chain()  # warm-up
    times = [chain() for _ in range(repeats)]
    return statistics.median(times), f"{sampling.sampler}, {sampling.steps} steps, {sampling.spacing}"


def main() -> int:
    global SEED_BASE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a trained run folder (else train the tiny preset for --minutes)")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--out", default="bench_samplers_out", help="folder for the trained run and results.json")
    ap.add_argument("--num", type=int, default=300, help="samples per (sampler, NFE) point")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--nfe", default=",".join(map(str, NFES)))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--diffusers", action="store_true", help="also score diffusers' DPM-Solver++ 2M and UniPC")
    ap.add_argument("--variants", nargs="*", default=[], metavar="NAME:K=V,...",
                    help="engine or diffusers settings to score too (see the top of this file)")
    ap.add_argument("--no-default-chain", action="store_true", help="skip the default-sampler timing")
    ap.add_argument("--seed-base", type=int, default=SEED_BASE, help="batch b uses seed SEED_BASE + b")
    args = ap.parse_args()
    SEED_BASE = args.seed_base
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from ddpm_studio.data import load_images
    from ddpm_studio.artifacts.loading import load_model

    secs, what = (None, "not measured") if args.no_default_chain else default_chain_seconds()
    if secs is not None:
        print(f"default chain: 16 images of 16 px, tiny preset, {what}: {secs:.3f} s "
              f"(median of 5, {torch.get_num_threads()} thread(s))")

    run = Path(args.run) if args.run else train(args.minutes, out / "run")
    loaded = load_model(run, device="cpu")
    real = load_images(loaded.config.data, use_cache=True).images
    net = feature_net(real.shape[-1])
    real_f, real_pix = features(net, real), pooled_pixels(real)
    print(f"model: {run} (step {loaded.step:,}); {len(real):,} real images; {args.num} samples per point")

    results = {"default_chain_sec": secs, "default_sampler": what, "run": str(run), "step": loaded.step,
               "num": args.num, "threads": torch.get_num_threads(), "load_start": os.getloadavg()[0],
               "started": time.strftime("%Y-%m-%d %H:%M"), "seed_base": args.seed_base, "points": []}
    nfes = [int(n) for n in args.nfe.split(",")]
    samplers = [s for s in args.samplers.split(",") if s]
    samplers += (["diffusers-dpmpp-2m", "diffusers-unipc"] if args.diffusers else []) + args.variants
    for sampler in samplers:
        own = parse_variant(sampler)[1].get("nfe") if sampler in args.variants else None  # e.g. ddim:nfe=50
        for nfe in nfes if own is None else [own]:
            draw = sample_variant if sampler.startswith("diffusers-") or sampler in args.variants else sample
            images, per_image = draw(loaded, sampler, nfe, args.num, args.batch)
            fd, fd_pix = frechet(features(net, images), real_f), frechet(pooled_pixels(images), real_pix)
            results["points"].append(dict(sampler=sampler, nfe=nfe, frechet=fd, frechet_pix=fd_pix,
                                          sec_per_image=per_image, load=os.getloadavg()[0]))
            print(f"{sampler:>13}  NFE {nfe:>3}: Frechet {fd:8.3f}  (4x4-pooled pixels {fd_pix:.4f})  "
                  f"{per_image * 1000:7.2f} ms/image", flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")  # after every point

    print("\n| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
    print("|---|" + "---|" * len(nfes))
    for sampler in samplers:
        row = [p for p in results["points"] if p["sampler"] == sampler]
        cells = " | ".join(f"{p['frechet']:.2f} ({p['sec_per_image'] * 1000:.1f} ms)" for p in row)
        print(f"| {sampler} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
