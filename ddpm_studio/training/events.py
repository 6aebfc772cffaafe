"""Events the trainer reports through its ``on_event`` callback.

Plain dataclasses of Python numbers and numpy arrays (no tensors), so a Qt worker can pass them
through a signal as ``object`` and the CLI can print them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ddpm_studio.engine.choices import Choice


class FinishReason(Choice):
    """Why a training session ended (equal to the plain strings older code compared with)."""

    COMPLETED = "completed"  # reached train.steps
    STOPPED = "stopped"  # asked to stop (Stop button, Ctrl+C, closing the window)
    TIME_LIMIT = "time_limit"  # train.minutes ran out
    NAN = "nan"  # the loss stopped being a number; rolled back to the last good checkpoint
    ERROR = "error"  # a failure during the steps (out of memory, disk full)
    ALREADY_COMPLETE = "already_complete"  # resumed a run already at its total

    @property
    def failed(self) -> bool:
        return self in (FinishReason.NAN, FinishReason.ERROR)


@dataclass
class TrainStarted:
    run_dir: str
    start_step: int  # > 0 when resumed
    total_steps: int | None  # None: no step limit (the clock or a stop ends the run)
    device: str  # e.g. "cpu", "cuda:0", "mps"
    num_parameters: int
    num_images: int
    resumed: bool
    notes: list[str] = field(default_factory=list)  # plain-words remarks, e.g. a damaged newest checkpoint was skipped
    precision: str = "fp32"  # what this session computes in: fp32, or bf16 / fp16 autocast (train.precision resolved)
    skipped: list = field(default_factory=list)  # data.SkippedFile for every file the image load left out


@dataclass
class StepMetrics:
    """Logged every ``train.log_every`` steps (also written to metrics.jsonl)."""

    step: int  # steps completed so far in the run
    total_steps: int | None  # None: no step limit
    loss: float  # mean loss over the steps since the last event
    loss_smooth: float  # exponential moving average of the loss
    grad_norm: float
    lr: float
    images_per_sec: float
    elapsed_sec: float  # training time in this session
    eta_sec: float | None
    # mean loss per t-bucket (10 buckets of T), None if empty
    bucket_loss: list[float | None] = field(default_factory=list)


@dataclass
class PreviewReady:
    step: int
    images: np.ndarray  # (N, H, W, C) uint8, C in {1, 3}


@dataclass
class CheckpointSaved:
    step: int
    path: str


@dataclass
class TrainFinished:
    step: int
    reason: FinishReason
    message: str  # plain words for the user
    checkpoint: str | None  # last good checkpoint path
