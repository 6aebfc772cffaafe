"""Quality while training: an ``on_event`` listener that scores checkpoints as the trainer saves them.

The trainer knows nothing of it: ``Trainer.run(on_event=ScoreCheckpoints(...))`` (or wrapping
another listener with ``then=``); the CLI (``train_listener``) and the window's training job
(``gui.jobs.make_train``) compose it when ``train.eval_every`` > 0. On each ``CheckpointSaved`` at
least ``every`` steps after the last scored one it samples ``num`` images of that checkpoint and
scores them (:func:`.metrics.evaluate`), on the training thread: training waits meanwhile, which is
the cost :func:`estimate_seconds` states beforehand (:func:`plan_lines`). Results go to
RUN/evaluation.jsonl, where the Evaluate tab plots KID per step beside the loss; ``on_readout``
hands each one to the caller too (the Training panel's plot). A scoring that cannot be done (too
few training images, say) is reported once and the listener stops scoring; it never raises into
the trainer. Off unless asked for (``train.eval_every`` = 0, the default).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ddpm_studio.errors import Cancelled

from . import metrics


def samples_per_score(cfg, device) -> int:
    """``train.eval_num``, or its default for the device (0: 256 on a CPU, 1024 on CUDA)."""
    return cfg.train.eval_num or metrics.default_num(device)


def plan_lines(cfg, num: int, seconds: float) -> list[str]:
    """What is said before training scores itself: a note when checkpoints do not fall on every K-th
    step, and the cost ("quality every K steps: N samples, about X s each ...")."""
    every, ckpt = cfg.train.eval_every, cfg.train.checkpoint_every
    lines = []
    if ckpt == 0 or every % ckpt:
        lines.append(f"note: checkpoints are saved every {ckpt or 'few minutes'} "
                     f"steps; each is scored once {every} steps have passed since the last")
    lines.append(f"quality every {every} steps: {num} samples, about {metrics.human_seconds(seconds)} "
                 "each (training waits meanwhile)")
    return lines


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
    """Score the checkpoint saved at least ``every`` steps after the last one scored.

    ``real``: the training images (uint8, as the model sees them) when the caller has them; else they
    are read as the run reads them (``data_folder`` replacing its folder). ``should_stop``: a scoring
    under way ends early (nothing saved) when it turns true, so a Stop is prompt.
    """

    def __init__(self, run_dir, every: int, num: int = metrics.DEFAULT_NUM, *, device=None,
                 then: Callable[[object], None] | None = None, report: Callable[[str], None] | None = None,
                 data_folder=None, real=None, on_readout: Callable[[metrics.Readout], None] | None = None,
                 should_stop: Callable[[], bool] | None = None):
        if every < 1:
            raise ValueError(f"every must be at least 1 step; got {every}")
        self.run_dir, self.every, self.num, self.device = run_dir, every, num, device
        self.then, self.report, self.data_folder = then, report, data_folder
        self.on_readout, self.should_stop = on_readout, should_stop
        self.last_step: int | None = None
        self.readouts: list[metrics.Readout] = []
        self.failed: str | None = None  # why scoring stopped, when it could not be done
        self._real = real

    def __call__(self, event) -> None:
        from ddpm_studio.training.events import CheckpointSaved

        if self.then is not None:
            self.then(event)
        if not isinstance(event, CheckpointSaved) or self.failed is not None:
            return
        if self.last_step is not None and event.step - self.last_step < self.every:
            return
        if self.last_step is None and event.step < self.every:
            return
        try:
            r = self._score(event.path)
        except Cancelled:
            return  # stopped while scoring: the run ends, this checkpoint stays unscored
        except (ValueError, OSError, RuntimeError, MemoryError) as e:  # too few images, out of memory: said once
            self.failed = str(e)
            if self.report is not None:
                self.report(f"quality: not scored from now on: {e}")
            return
        self.last_step = event.step
        self.readouts.append(r)
        metrics.save_results(self.run_dir, [r])
        if self.on_readout is not None:
            self.on_readout(r)
        if self.report is not None:
            self.report(f"quality: {r.summary()} ({r.seconds_sampling + r.seconds_scoring:.0f} s)")

    def _score(self, checkpoint) -> metrics.Readout:
        from ddpm_studio.artifacts.loading import load_model

        if self._real is None:
            self._real = metrics.run_real_images(self.run_dir, self.data_folder).images
        loaded = load_model(checkpoint, device=self.device or "cpu")
        return metrics.evaluate(loaded, self._real, self.num, should_stop=self.should_stop)
