"""A tiny network and its diffusion for the lab's numeric tests (not a test file)."""

from __future__ import annotations

import torch
from training_support import tiny_config

from ddpm_studio.engine.diffusion import GaussianDiffusion
from ddpm_studio.engine.unet import build_model


class GaussianPlusUNet(torch.nn.Module):
    """The exact ε-denoiser of data ~ N(0, 0.5² I) plus a small random U-Net term: samples that stay
    inside [-1, 1] (nothing clipped), yet depend on every pixel and t through the network."""

    def __init__(self, unet, diffusion, scale=0.3):
        super().__init__()
        self.unet, self.scale = unet, scale
        self.register_buffer("ab", torch.tensor(diffusion.schedule.alphas_cumprod, dtype=torch.float32))

    def forward(self, x, t):
        ab = self.ab[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        eps = (1 - ab).sqrt() * x / (ab * 0.25 + 1 - ab)
        return eps + self.scale * self.unet(x, t)


def tiny_model(prediction: str = "epsilon", seed: int = 0):
    """(model, diffusion, image_shape): 8 px, T = 20."""
    cfg = tiny_config()
    torch.manual_seed(seed)
    unet = build_model(cfg.model)
    with torch.no_grad():  # the output layer starts at zero: give it weights so the network matters
        unet.conv_out.weight.normal_(0, 0.05)
    diffusion = GaussianDiffusion(GaussianDiffusion.from_config(cfg.diffusion).schedule, prediction=prediction)
    model = GaussianPlusUNet(unet, diffusion).eval().requires_grad_(False)
    return model, diffusion, (cfg.model.in_channels, 8, 8)
