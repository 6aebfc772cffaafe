"""Exponential moving average of a model's weights (the paper samples from an EMA with decay 0.9999)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A shadow copy of ``model`` whose weights follow ``decay * shadow + (1 - decay) * weights``.

    With ``warmup`` the decay used at step ``s`` is ``min(decay, (1 + s) / (10 + s))`` so the first
    updates follow the model closely instead of averaging in the random initial weights. Buffers are
    copied as they are. ``module`` is the shadow network, in eval mode, without gradients.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be from 0 to below 1; got {decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        if self.warmup:
            return min(self.decay, (1.0 + step) / (10.0 + step))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the shadow weights toward ``model``'s: shadow += (1 - d) * (weights - shadow)."""
        d = self.decay_at(step)
        shadow = [p for p in self.module.parameters()]
        params = [p.detach() for p in model.parameters()]
        if len(shadow) != len(params):
            raise ValueError("EMA.update got a model with a different set of parameters")
        floats = [(s, p) for s, p in zip(shadow, params) if s.is_floating_point()]
        if floats:
            torch._foreach_lerp_([s for s, _ in floats], [p for _, p in floats], 1.0 - d)
        for s, p in zip(self.module.buffers(), model.buffers()):
            s.copy_(p)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights (a plain tensor dict, safetensors-friendly)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)

    def to(self, *args, **kwargs) -> "EMA":
        self.module.to(*args, **kwargs)
        return self
