"""Tune a few-step chain's timesteps to one model, so that it lands where a long chain from the same noise does.

A deterministic sampler (DDIM with eta 0, DPM-Solver++ 2M / 3M, UniPC) is a numerical solution of the
model's probability-flow ODE; which timesteps it visits decides how close a 5-step chain comes to the
ODE's solution, and the best ones depend on the model (GITS, Chen et al. 2024; LD3, Tong et al. 2024).
``tune_timesteps`` draws ``images`` (256) starting points from a fixed seed, solves each with a 50-step
DPM-Solver++ 2M chain (the reference), and moves the chain's timesteps one at a time in log-SNR
(coarse to fine, keeping the first) while the chain's error against the reference falls. The error
is the mean squared difference of the images plus that of each pixel's spread (its standard deviation
over the images): the first alone lets a few-step chain trade the variety of its images for closeness
to each reference image, and lands further from the data on some sets (BENCHMARKS.md, "Timesteps tuned
to the model"). The result goes into ``SamplingConfig.timesteps``.

Given the model's training images (``data``), it then tries the found list with its last timestep at
0: the chain's last jump grows, and the solver's extrapolation from its last two predictions of x_0
sharpens the images. Text strokes and fine grain come back; photos can come out over-contrasted. So
that list is kept only when its images' 4 x 4 grids of average colour have a smaller Fréchet distance to
the training images' than the found list's (``StepTuning.data_check``), on ``check_images`` (1,024) chains
from the tuning's seed: on 256, the choice on a text model and a textures model changed with the seed.
Its error against the 50-step chain is larger: it stops imitating the reference where the reference is
blurrier than the data.

Plain Python: the CLI (``ddpm-studio tune-steps``) and the Sampling panel's worker call it alike.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_studio.artifacts.loaded import LoadedModel
from ddpm_studio.config import TUNABLE_SAMPLERS, SamplingConfig
from ddpm_studio.errors import Cancelled
from ddpm_studio.stats import frechet_distance

from .service import generate

REFERENCE = dict(sampler="dpmpp-2m", steps=50, spacing="auto")  # within noise of the ODE's solution (BENCHMARKS.md)
MOVES = (1.0, 0.5, 0.25, 0.12, 0.06)  # log-SNR distances tried, coarse to fine
TUNING_SEED = 20_240_601  # not a seed a user would type, so the tuning never saw the images a user looks at
CHUNK = 32  # images per network call
IMAGES = 256  # chains the error is measured on: with 128, two seeds found different steps (BENCHMARKS.md)
DATA_IMAGES = 4096  # training images the last-step check compares with, at most (a seeded subset)
CHECK_IMAGES = 1024  # chains per list in the last-step check: with 256, the choice changed with the seed
GRID = 4  # the last-step check compares 4 x 4 grids of average colour


@dataclass(frozen=True)
class StepTuning:
    """What tuning found: ``timesteps`` for ``sampler`` at ``len(timesteps)`` steps, and the errors
    (:func:`chain_error`, images in [-1, 1]) of the spacing's own steps and of the tuned ones against
    the reference chain."""

    sampler: str
    timesteps: tuple[int, ...]
    start: tuple[int, ...]
    error_start: float
    error: float
    reference_steps: int
    images: int
    chains: int
    seconds: float
    data_check: tuple[float, float] | None = None  # distances to the data: the found list, it ending at 0
    data_note: str = ""  # which images the check compared with, or why there was no check

    @property
    def ends_at_zero(self) -> bool:
        """Whether the last-step check moved the last timestep to 0."""
        return self.data_check is not None and self.data_check[1] < self.data_check[0]

    @property
    def improvement(self) -> float:
        """The fraction of the error removed (0 when the spacing's steps were already the best found)."""
        return 1.0 - self.error / self.error_start if self.error_start > 0 else 0.0

    def note(self) -> str:
        """One or two sentences for the Sampling panel."""
        cost = f"({self.chains} chains, {self.seconds:.0f} s)"
        if self.ends_at_zero:
            head = ("Tuned, last step at 0: its images come closer to the training images' colours and layout "
                    f"than with the steps closest to a {self.reference_steps}-step chain {cost}.")
        else:
            head = (f"Tuned: {self.improvement:.0%} closer to a {self.reference_steps}-step chain than the "
                    f"spacing's own steps {cost}.")
        if not self.data_note:
            return head
        if self.data_check is None:
            return f"{head} Last step not checked: {self.data_note}."
        return f"{head} Last step checked against {self.data_note}."

    def summary(self) -> str:
        head = f"{self.sampler}, {len(self.timesteps)} steps: {', '.join(map(str, self.timesteps))} "
        tail = f"{self.images} images, {self.chains} chains, {self.seconds:.0f} s"
        if self.ends_at_zero:
            found, zero = self.data_check
            return head + (f"(last step moved to 0: closer to the training images, colour-grid distance {found:.4f} "
                           f"-> {zero:.4f}; error to a {self.reference_steps}-step chain {self.error:.2e}, was "
                           f"{self.error_start:.2e}; {tail})")
        kept = "" if self.data_check is None else "; a last step at 0 moved away from the training images"
        return head + (f"(error to a {self.reference_steps}-step chain {self.error:.2e}, was {self.error_start:.2e}: "
                       f"{self.improvement:.0%} less{kept}; {tail})")


def check_tunable(sampling: SamplingConfig) -> None:
    """Refuse, with the reason, settings whose timesteps cannot be tuned."""
    if sampling.sampler not in TUNABLE_SAMPLERS:
        raise ValueError(f"tuning needs a deterministic sampler ({', '.join(TUNABLE_SAMPLERS)}); "
                         f"{sampling.sampler} draws fresh noise at every step, so its images never repeat")
    if sampling.sampler == "ddim" and sampling.eta > 0:
        raise ValueError("tuning needs DDIM with eta 0 (deterministic)")
    if sampling.steps < 2:
        raise ValueError("tuning needs at least 2 steps (one step always starts at the first timestep)")


def _final_images(loaded: LoadedModel, cfg: SamplingConfig, images: int, seed: int, stop) -> torch.Tensor:
    """x_0 of ``images`` chains from the seed, in chunks; the same seed gives the same x_T for every cfg."""
    out = []
    for k, start in enumerate(range(0, images, CHUNK)):
        last = None
        for last in generate(loaded, cfg, num_images=min(CHUNK, images - start), seed=seed + k, should_stop=stop):
            pass
        if stop is not None and stop():
            raise Cancelled("step tuning was cancelled")
        out.append(last.x_t.float())
    return torch.cat(out)


def chain_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean squared difference per pixel, plus that of each pixel's standard deviation over the images."""
    return float((x - reference).square().mean() + (x.std(0) - reference.std(0)).square().mean())


def own_timesteps(loaded: LoadedModel, sampling: SamplingConfig) -> list[int]:
    """The timesteps ``sampling`` visits on this model."""
    return loaded.diffusion.sampler_timesteps(sampling)


def _log_snr(loaded: LoadedModel) -> np.ndarray:
    ab = np.asarray(loaded.diffusion.schedule.alphas_cumprod, dtype=np.float64)
    return 0.5 * (np.log(ab) - np.log1p(-ab))  # log(alpha / sigma), falling with t


def _moved(ts: list[int], i: int, delta: float, lam: np.ndarray) -> list[int] | None:
    """``ts`` with step i moved by ``delta`` in log-SNR (to the nearest timestep), or None if that breaks order."""
    t = int(np.abs(lam - (lam[ts[i]] + delta)).argmin())
    cand = ts[:i] + [t] + ts[i + 1:]
    ok = t != ts[i] and all(a > b for a, b in zip(cand, cand[1:]))
    return cand if ok else None


def colour_grid(x: torch.Tensor) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] -> their GRID x GRID average colours, flattened: (N, GRID^2 C)."""
    return torch.nn.functional.adaptive_avg_pool2d(x.float(), GRID).flatten(1).double().numpy()


def _data_grid(data: np.ndarray) -> np.ndarray:
    """The colour grids of at most DATA_IMAGES training images ((N, H, W, C) uint8), a seeded subset."""
    if len(data) > DATA_IMAGES:
        data = data[np.sort(np.random.default_rng(0).choice(len(data), DATA_IMAGES, replace=False))]
    return colour_grid(torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).float() / 127.5 - 1.0)


def check_last_step(final: Callable[[list[int]], torch.Tensor], found: list[int],
                    data: np.ndarray | None) -> tuple[list[int], tuple[float, float] | None]:
    """``found`` or ``found`` with its last timestep at 0, whichever chain's images (``final(ts)``) are closer to
    the training images ``data`` by the Fréchet distance of their colour grids; and the two distances (None,
    and ``found`` kept, without training images or when it already ends at 0)."""
    if data is None or found[-1] == 0 or len(data) < 2:
        return found, None
    zero, real = found[:-1] + [0], _data_grid(data)
    check = (frechet_distance(colour_grid(final(found)), real), frechet_distance(colour_grid(final(zero)), real))
    return (zero if check[1] < check[0] else found), check


def tune_timesteps(loaded: LoadedModel, sampling: SamplingConfig, *, images: int = IMAGES, seed: int = TUNING_SEED,
                   reference_steps: int = REFERENCE["steps"], data: np.ndarray | None = None,
                   data_note: str = "", check_images: int = CHECK_IMAGES, should_stop: Callable[[], bool] | None = None,
                   progress: Callable[[int, float], None] | None = None,
                   phase: Callable[[str], None] | None = None) -> StepTuning:
    """Coordinate search over ``sampling``'s timesteps (all but the first) on this model; see the module.
    ``data_note`` (which images ``data`` are, or why there are none) goes into the result for its note;
    ``phase(text)`` hears of the two long stretches ``progress`` does not count (the reference, the check)."""
    sampling = dataclasses.replace(sampling, timesteps=None)
    sampling.validate()
    check_tunable(sampling)
    t0 = time.perf_counter()
    reference_steps = min(reference_steps, loaded.diffusion.T)  # a model of few timesteps: all of them
    reference_cfg = dataclasses.replace(sampling, **{**REFERENCE, "steps": reference_steps}, eta=0.0)
    if phase is not None:
        phase(f"solving {images} chains with {reference_steps} steps, the reference")
    reference = _final_images(loaded, reference_cfg, images, seed, should_stop)
    lam, errors = _log_snr(loaded), {}

    def final(ts: list[int], n: int = images) -> torch.Tensor:
        return _final_images(loaded, dataclasses.replace(sampling, timesteps=tuple(ts)), n, seed, should_stop)

    def error(ts: list[int]) -> float:
        if tuple(ts) not in errors:
            errors[tuple(ts)] = chain_error(final(ts), reference)
            if progress is not None:
                progress(len(errors), min(errors.values()))
        return errors[tuple(ts)]

    start = own_timesteps(loaded, sampling)
    best, best_err = start, error(start)
    for delta in MOVES:
        improved = True
        while improved:
            improved = False
            for i in range(1, len(best)):
                for cand in filter(None, (_moved(best, i, s * delta, lam) for s in (1.0, -1.0))):
                    if error(cand) < best_err * (1 - 1e-6):
                        best, best_err, improved = cand, error(cand), True
    if phase is not None and data is not None:
        phase(f"checking the last step against the training images ({max(images, check_images)} chains per list)")
    best, check = check_last_step(lambda ts: final(ts, max(images, check_images)), best, data)
    return StepTuning(sampling.sampler, tuple(best), tuple(start), errors[tuple(start)], error(best), reference_steps,
                      images, len(errors), time.perf_counter() - t0, check, data_note)


def tuned(sampling: SamplingConfig, result: StepTuning) -> SamplingConfig:
    """``sampling`` with the tuned timesteps (and their count as the steps)."""
    if result.sampler != sampling.sampler:
        raise ValueError(f"these timesteps were tuned for {result.sampler}, not {sampling.sampler}")
    return dataclasses.replace(sampling, steps=len(result.timesteps), timesteps=result.timesteps)


__all__ = ["StepTuning", "chain_error", "check_last_step", "check_tunable", "colour_grid", "own_timesteps",
           "tune_timesteps", "tuned"]
