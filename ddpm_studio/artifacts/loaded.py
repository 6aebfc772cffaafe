"""Load a trained model and generate images from it; shared by the CLI, the GUI and the tests.

``load_model`` opens a run folder (its newest good checkpoint) or one checkpoint file and returns
a :class:`LoadedModel` holding the EMA network. ``generate`` is a generator of the engine's
``StepResult``s (one per reverse step), so a caller can draw each step, stop early, or just keep
the last one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ddpm_studio.config import RunConfig, SamplingConfig
from ddpm_studio.engine.types import StepResult
from ddpm_studio.training.checkpoints import (CheckpointError, load_checkpoint, load_latest,
                                              load_weights_into)


@dataclass
class LoadedModel:
    model: torch.nn.Module  # the network used for sampling (EMA weights), in eval mode
    diffusion: object  # engine.diffusion.GaussianDiffusion
    config: RunConfig
    step: int  # training steps behind these weights
    source: str  # the folder or file it came from
    notes: list[str] = field(default_factory=list)  # e.g. "skipped a damaged newer checkpoint"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this model makes."""
        m = self.config.model
        return (m.in_channels, m.image_size, m.image_size)


def _is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (
        (path / "config.json").is_file() and (path / "diffusion_pytorch_model.safetensors").is_file()
    ) or (path / "unet" / "config.json").is_file()


def _load_diffusers_folder(path: Path, device: torch.device) -> LoadedModel:
    # HOOK (issue 7): diffusers-format import lives in the interop module (it raises
    # DiffusersFormatError, a CheckpointError, naming any unsupported setting).
    from ddpm_studio.interop.diffusers_format import load_diffusers_folder

    return load_diffusers_folder(path, device)


def build_loaded(config: RunConfig, weights: dict[str, torch.Tensor], *, step: int, source: str,
                 device: torch.device, notes: list[str] | None = None) -> LoadedModel:
    """A LoadedModel for ``config`` with ``weights`` (a U-Net state dict) loaded on ``device``."""
    from ddpm_studio import footprint
    from ddpm_studio.engine.diffusion import GaussianDiffusion
    from ddpm_studio.engine.unet import build_model

    memory, where = footprint.device_memory(device)
    footprint.check_fits(config.model, memory=memory, where=where)  # before a byte is allocated
    model = build_model(config.model)
    load_weights_into(model, weights, "EMA")
    model.to(device).eval().requires_grad_(False)
    diffusion = GaussianDiffusion.from_config(config.diffusion)
    return LoadedModel(model, diffusion, config, step, source, list(notes or []))


def load_model(source: str | os.PathLike, device: str | torch.device | None = None) -> LoadedModel:
    """Open a run folder (newest good checkpoint) or a ``.safetensors`` checkpoint for sampling.

    ``device``: "auto"/None (CUDA, then MPS, then CPU), "cpu", "cuda", "mps" or a torch.device.
    Raises CheckpointError (a ValueError) saying why when ``source`` cannot be used.
    """
    from ddpm_studio.engine.devices import select_device

    path = Path(source).expanduser()
    dev = device if isinstance(device, torch.device) else select_device(device or "auto")
    if not path.exists():
        from ddpm_studio.interop.diffusers_format import missing_path_message  # says how to download a Hub id

        raise CheckpointError(missing_path_message(source))
    if path.is_dir():
        if (path / "checkpoints").is_dir():
            ckpt, notes = load_latest(path, with_state=False)
        elif _is_diffusers_folder(path):
            return _load_diffusers_folder(path, dev)
        else:
            raise CheckpointError(f"{path} is neither a DDPM Studio run folder (no checkpoints/) nor a diffusers model folder")
    else:
        ckpt, notes = load_checkpoint(path, with_state=False), []
    weights = ckpt.ema_state or ckpt.model_state
    if not ckpt.ema_state:
        notes.append("this checkpoint has no EMA weights; sampling from the raw model weights")
    return build_loaded(ckpt.config, weights, step=ckpt.step, source=str(path), device=dev, notes=notes)


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
