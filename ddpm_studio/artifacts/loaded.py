"""A model ready to sample: :class:`LoadedModel` (the EMA network, its diffusion and its config) and
:func:`build_loaded`, which builds one from a config and a state dict. ``loading.load_model`` finds
the weights; ``sampling.service.generate`` runs the chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ddpm_studio.config import RunConfig
from ddpm_studio.artifacts.checkpoints import load_weights_into


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


def ready_for_sampling(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device``, in eval mode, without gradients; on a CPU its convolution weights in
    channels_last, so oneDNN runs without layout reorders and the chain's activations follow: 1.14x
    (16 px) and 1.22x (32 px) faster sampling for the tiny preset (BENCHMARKS.md). Every loader uses it."""
    model.to(device).eval().requires_grad_(False)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


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
    ready_for_sampling(model, device)
    diffusion = GaussianDiffusion.from_config(config.diffusion)
    return LoadedModel(model, diffusion, config, step, source, list(notes or []))
