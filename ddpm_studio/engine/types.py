"""Small value types shared by the samplers and their callers."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepResult:
    """One step of a reverse chain, as the samplers yield it.

    ``t`` is the 0-based timestep that was just denoised (T-1 ... 0); ``index`` counts the
    steps yielded so far starting at 0 and ``total`` is how many this chain will yield.
    ``x_t`` is the sample *after* the step (x_{t-1} in the paper's notation; the final step's
    ``x_t`` is x_0), ``pred_x0`` the model's prediction of x_0 at this step. Both are
    (B, C, H, W) float tensors in [-1, 1] (x_t may exceed it), on the sampler's device.
    """

    t: int
    index: int
    total: int
    x_t: torch.Tensor
    pred_x0: torch.Tensor
