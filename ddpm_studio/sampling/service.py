"""Generate images from a loaded model; shared by the CLI, the GUI and the tests.

``generate`` is a generator of the engine's ``StepResult``s (one per reverse step), so a caller can
draw each step, stop early, or just keep the last one. The model comes from
``artifacts.loading.load_model`` (a run folder, a checkpoint or a diffusers folder).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from ddpm_studio.artifacts.loaded import LoadedModel
from ddpm_studio.config import SamplingConfig
from ddpm_studio.engine.types import StepResult


def generate(loaded: LoadedModel, sampling: SamplingConfig, *, should_stop: Callable[[], bool] | None = None,
             device: str | torch.device | None = None, num_images: int | None = None,
             seed: int | None = None) -> Iterator[StepResult]:
    """Yield one StepResult per reverse step for ``sampling.num_images`` images (the last is x_0).

    The starting noise comes from a CPU generator seeded with ``sampling.seed`` (``seed`` and
    ``num_images`` override the config), so the same seed gives the same images on every device
    up to floating-point differences. A stopped chain simply ends.
    """
    sampling.validate()
    dev = loaded.device if device is None else (device if isinstance(device, torch.device) else torch.device(device))
    if dev != loaded.device:
        loaded.model.to(dev)
    n = sampling.num_images if num_images is None else num_images
    generator = torch.Generator(device="cpu").manual_seed(sampling.seed if seed is None else seed)
    shape = (n, *loaded.image_shape)
    yield from loaded.diffusion.sample_progressive(
        loaded.model, shape, sampling, generator=generator, device=dev, should_stop=should_stop
    )


def sample_images(loaded: LoadedModel, sampling: SamplingConfig, **kwargs) -> np.ndarray:
    """Run the chain to the end and return x_0 as (N, H, W, C) uint8."""
    last = None
    for last in generate(loaded, sampling, **kwargs):
        pass
    if last is None:
        raise ValueError("sampling produced no steps")
    return to_uint8(last.x_t)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) float in [-1, 1] → (B, H, W, C) uint8 numpy (values outside are clipped)."""
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor; got shape {tuple(x.shape)}")
    x = ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (B, H, W, C)
