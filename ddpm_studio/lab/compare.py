"""The compare board: the same x_T through several samplers, step counts or η, one row each.

A row spec is ``sampler[:steps[:eta]]`` (``ddim:50``, ``ddim:50:0.5``, ``dpmpp-2m:20``, ``ddpm``), or
``sampler:steps:tuned`` for the timesteps a Tune found for this model (``unipc:5:tuned``, from
``sampling.tuning_store``); a list is comma-separated. Every row starts from the x_T of ``seed`` and a
generator in the state ``sampling.service.generate`` leaves it in, so each row is what ``ddpm-studio sample --seed S``
makes with that row's settings.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..config import SAMPLER_INFO, SAMPLERS, TUNABLE_SAMPLERS, SamplingConfig, sampler_default_steps
from .chain import check_sampling, start_noise

MAX_ROWS = 12


@dataclass(frozen=True)
class Spec:
    """One row as written: ``sampler[:steps[:eta|tuned]]`` (steps None: the sampler's own default)."""

    item: str
    sampler: str
    steps: int | None
    eta: float
    tuned: bool = False


def _spec(item: str) -> Spec:
    parts = item.split(":")
    name = parts[0].strip().lower()
    if name not in SAMPLERS or len(parts) > 3:
        raise ValueError(f"{item!r} is not sampler[:steps[:eta]] with a sampler from {', '.join(SAMPLERS)}")
    steps, eta = None, 0.0
    if len(parts) >= 2 and parts[1].strip():
        try:
            steps = int(parts[1])
        except ValueError:
            raise ValueError(f"{item!r}: the steps must be a whole number; got {parts[1]!r}") from None
    if len(parts) == 3 and parts[2].strip().lower() == "tuned":
        if name not in TUNABLE_SAMPLERS or steps is None:
            raise ValueError(f"{item!r}: tuned timesteps are for {', '.join(TUNABLE_SAMPLERS)} with a step count, "
                             "e.g. unipc:5:tuned")
        return Spec(item, name, steps, 0.0, tuned=True)
    if len(parts) == 3:
        if name != "ddim":
            raise ValueError(f"{item!r}: only DDIM takes an η")
        try:
            eta = float(parts[2])
        except ValueError:
            raise ValueError(f"{item!r}: η must be a number (or 'tuned'); got {parts[2]!r}") from None
    return Spec(item, name, steps, eta)


def split_specs(text: str) -> list[Spec]:
    """The rows of ``"ddim:50,dpmpp-2m:20,ddpm"`` as written, checked for everything but the model's T
    (so the window can refuse a bad list before it loads a model). One-line ValueError naming the item."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise ValueError("give at least one sampler, e.g. ddim:50,dpmpp-2m:20,ddpm")
    if len(items) > MAX_ROWS:
        raise ValueError(f"a compare board has at most {MAX_ROWS} rows; got {len(items)}")
    return [_spec(item) for item in items]


def parse_specs(text: str, base: SamplingConfig, T: int,
                tunings: Callable[[], list] | None = None) -> list[SamplingConfig]:
    """``"ddim:50,dpmpp-2m:20,ddpm"`` → one SamplingConfig per row (the rest of ``base`` kept).

    A sampler given without steps takes its own default (``config.sampler_default_steps``); η is
    only for DDIM. A ``:tuned`` row takes its timesteps from ``tunings()`` (called once, only when a row
    asks: the model's ``tuning_store`` entries). Raises a one-line ValueError naming the bad item.
    """
    from ..sampling.tuning_store import find

    rows, entries = [], None
    for spec in split_specs(text):
        steps = sampler_default_steps(spec.sampler, T) if spec.steps is None else spec.steps
        if spec.sampler == "ddpm" and spec.steps is not None and steps != T:
            raise ValueError(f"{spec.item!r}: DDPM always takes all T={T} steps; leave the steps out")
        row = dataclasses.replace(base, sampler=spec.sampler, steps=steps, eta=spec.eta, timesteps=None)
        if spec.tuned:
            if entries is None:
                entries = tunings() if tunings is not None else []
            found = find(entries, row)
            if found is None:
                raise ValueError(f"{spec.item!r}: no Tune remembered for this model with {spec.sampler} at {steps} "
                                 "steps; tune it first (the Sampling panel's Tune, or ddpm-studio tune-steps)")
            row = dataclasses.replace(row, timesteps=tuple(found["timesteps"]))
        try:
            check_sampling(row, T)
        except ValueError as e:
            raise ValueError(f"{spec.item!r}: {e}") from None
        rows.append(row)
    return rows


def describe(sampling: SamplingConfig, T: int) -> str:
    """A row label: "DDIM · 50 steps · η 0.5"."""
    label = SAMPLER_INFO[sampling.sampler]["label"].split(" (")[0]
    steps = T if sampling.sampler == "ddpm" else sampling.steps
    text = f"{label} · {steps} steps"
    if sampling.sampler == "ddim":
        text += f" · η {sampling.eta:g}"
    return text + (" · tuned" if sampling.timesteps else "")


@dataclass
class CompareRow:
    index: int
    label: str
    sampling: SamplingConfig
    images: torch.Tensor  # (num, C, H, W) x_0 in [-1, 1]
    seconds_per_image: float
    steps: int  # network calls


def run_compare(model, diffusion, rows: list[SamplingConfig], *, num: int, image_shape, seed: int, device=None,
                should_stop: Callable[[], bool] | None = None,
                progress: Callable[[int, int, str], None] | None = None) -> Iterator[CompareRow]:
    """Yield each row when its chain has finished (a stopped board simply ends)."""
    if not 1 <= int(num) <= 256:
        raise ValueError(f"the number of images per row must be from 1 to 256; got {num}")
    for row in rows:
        check_sampling(row, diffusion.T)
    x_T, generator = start_noise((num, *image_shape), seed)
    after_x_T = generator.get_state()
    for i, row in enumerate(rows):
        if should_stop is not None and should_stop():
            return
        g = torch.Generator(device="cpu")
        g.set_state(after_x_T)
        label = describe(row, diffusion.T)
        t0 = time.perf_counter()
        last = None
        for last in diffusion.sample_progressive(model, x_T.shape, row, generator=g, device=device,
                                                 should_stop=should_stop, noise=x_T):
            if progress is not None:
                progress(last.index + 1, last.total, f"row {i + 1} of {len(rows)}: {label}")
        if last is None or last.index != last.total - 1:
            return
        images = last.x_t.detach().float().cpu()  # the copy to the host waits for the device: the clock sees it all
        seconds = time.perf_counter() - t0
        yield CompareRow(i, label, row, images, seconds / num, last.total)


def row_caption(row: CompareRow) -> list[str]:
    return [row.label, f"{row.seconds_per_image:.3g} s / image"]

