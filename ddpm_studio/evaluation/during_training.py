"""Quality while training: an ``on_event`` listener that scores checkpoints as the trainer saves them.

The trainer knows nothing of it: ``Trainer.run(on_event=ScoreCheckpoints(...))`` (or wrapping
another listener with ``then=``). On each ``CheckpointSaved`` at least ``every`` steps after the
last scored one it samples ``num`` images of that checkpoint and scores them
(:func:`.metrics.evaluate`), on the training thread: training waits meanwhile, which is the cost
:func:`estimate_seconds` states beforehand. Results go to RUN/evaluation.jsonl, where the
Evaluate tab plots KID per step beside the loss. Off unless asked for (``train --eval-every K``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from . import metrics


def estimate_seconds(cfg, num: int, device: str = "cpu", probe: int = 8) -> float:
    """Seconds one evaluation of ``num`` samples will take, timed on an untrained network of this shape.

    An untrained network costs the same to run as a trained one; the scoring adds about a second.
    """
    import torch

    from ddpm_studio.engine.diffusion import GaussianDiffusion
    from ddpm_studio.engine.unet import build_model

    model = build_model(cfg.model).to(device).eval().requires_grad_(False)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    shape = (probe, cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)
    t0 = time.perf_counter()
    diffusion.sample(model, shape, cfg.sampling, generator=torch.Generator().manual_seed(0),
                     device=torch.device(device))
    return (time.perf_counter() - t0) * num / probe + 1.0


class ScoreCheckpoints:
    """Score the checkpoint saved at least ``every`` steps after the last one scored."""

    def __init__(self, run_dir, every: int, num: int = metrics.DEFAULT_NUM, *, device=None,
                 then: Callable[[object], None] | None = None, report: Callable[[str], None] | None = None,
                 data_folder=None):
        if every < 1:
            raise ValueError(f"every must be at least 1 step; got {every}")
        self.run_dir, self.every, self.num, self.device = run_dir, every, num, device
        self.then, self.report, self.data_folder = then, report, data_folder
        self.last_step: int | None = None
        self.readouts: list[metrics.Readout] = []
        self._real = None

    def __call__(self, event) -> None:
        from ddpm_studio.training.events import CheckpointSaved

        if self.then is not None:
            self.then(event)
        if not isinstance(event, CheckpointSaved):
            return
        if self.last_step is not None and event.step - self.last_step < self.every:
            return
        if self.last_step is None and event.step < self.every:
            return
        from ddpm_studio.artifacts.loading import load_model

        if self._real is None:
            self._real = metrics.run_real_images(self.run_dir, self.data_folder).images
        r = metrics.evaluate(load_model(event.path, device=self.device or "cpu"), self._real, self.num)
        self.last_step = event.step
        self.readouts.append(r)
        metrics.save_results(self.run_dir, [r])
        if self.report is not None:
            self.report(f"quality: {r.summary()} ({r.seconds_sampling + r.seconds_scoring:.0f} s)")
