"""The Training panel's decisions, without Qt: what Start does, which run a finished session leaves
open for Continue, and what Open Run and the plots read from disk (on a worker thread, never the UI's).

The panel (gui/panels/training_panel.py) is a view over a :class:`TrainingSession`: it shows what
the session decides and runs what it plans; tests drive the session directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpm_studio.config import RunConfig
from ddpm_studio.training.events import TrainFinished


@dataclass
class StartPlan:
    """What Start will run."""

    run_dir: str
    resume: bool
    images: Any  # the ImageSet to train on, or None: the trainer loads cfg.data itself
    fresh: bool  # a new run: the plots start empty


@dataclass
class SessionEnd:
    """What a training job returns: the trainer's result and the run's config as saved (None: unreadable)."""

    result: TrainFinished
    run_config: RunConfig | None


@dataclass
class History:
    """A run's logged losses (metrics.jsonl), in step order."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    buckets: list | None = None  # the last log's loss per t-bucket

    @property
    def last_step(self) -> int:
        return self.steps[-1] if self.steps else 0


def load_history(run_dir: str | Path) -> History:
    """Parse a run's metrics.jsonl (file I/O: call it from a worker)."""
    from ddpm_studio.artifacts.runs import read_metrics

    recs = [r for r in read_metrics(run_dir) if "step" in r and "loss" in r]
    h = History([int(r["step"]) for r in recs], [r["loss"] for r in recs],
                [r.get("loss_smooth", r["loss"]) for r in recs])
    buckets = recs[-1].get("bucket_loss") if recs else None
    h.buckets = buckets if isinstance(buckets, list) and buckets else None
    return h


def read_run_config(run_dir: str | Path) -> RunConfig:
    """A run folder's config.json; ValueError in plain words when it is not a run folder."""
    from ddpm_studio.artifacts.runs import read_config

    if not (Path(run_dir) / "config.json").is_file():
        raise ValueError(f"{run_dir} is not a run folder (it has no config.json)")
    return read_config(run_dir)


@dataclass
class OpenedRun:
    """What Open Run shows: the run's config and its newest preview grid (None: it has none readable)."""

    config: RunConfig
    preview: Any = None  # (H, W, 3) uint8
    preview_name: str = ""  # e.g. "step_001200"


def read_run(run_dir: str | Path) -> OpenedRun:
    """A run folder's config.json and newest samples/step_*.png (file I/O: call it from a worker)."""
    cfg = read_run_config(run_dir)
    previews = sorted((Path(run_dir) / "samples").glob("step_*.png"))
    if not previews:
        return OpenedRun(cfg)
    import numpy as np
    from PIL import Image

    try:
        with Image.open(previews[-1]) as im:
            grid = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
    except (OSError, ValueError):  # a damaged preview does not keep the run from opening
        return OpenedRun(cfg)
    return OpenedRun(cfg, grid, previews[-1].stem)


def finish_job(result: TrainFinished, run_dir: str) -> SessionEnd:
    """The end of a training job (worker thread): the result with the run's config read back."""
    try:
        return SessionEnd(result, read_run_config(run_dir))
    except (ValueError, OSError):
        return SessionEnd(result, None)


class TrainingSession:
    """Which run Start continues (if any), and what it runs."""

    def __init__(self) -> None:
        self.resume_dir: str | None = None  # the run Start continues; None: Start makes a new run
        self.resume_config: RunConfig | None = None
        self.run_dir: str | None = None  # the run of the last Start

    @property
    def continuing(self) -> bool:
        return self.resume_dir is not None

    def plan_start(self, cfg: RunConfig, images: Any, data_folder: str | None, runs_dir: Path) -> StartPlan:
        """What Start runs for ``cfg``; ValueError (plain words) when it cannot start."""
        if self.resume_dir is None and images is None:
            raise ValueError("there are no images to train on yet: drop a folder on the Dataset tab first")
        if images is not None and self.resume_dir is None and int(images.image_size) != cfg.data.image_size:
            raise ValueError(f"the dataset is {images.image_size} px but data.image_size is {cfg.data.image_size}")
        if self.resume_dir is not None:
            same_data = (images is not None and cfg.data.folder == data_folder
                         and cfg.data.image_size == int(images.image_size))
            plan = StartPlan(self.resume_dir, True, images if same_data else None, fresh=False)
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            plan = StartPlan(str(runs_dir / f"{stamp}-{cfg.model.preset}"), False, images, fresh=True)
        self.run_dir = plan.run_dir
        return plan

    def opened(self, path: str, cfg: RunConfig) -> None:
        """A run folder was opened: Start continues it."""
        self.resume_dir, self.resume_config = str(path), cfg

    def finished(self, end: SessionEnd | None) -> None:
        """A session ended: Start continues its run, if its config could be read back."""
        if end is None or not self.run_dir:
            return
        if end.run_config is None:
            self.resume_dir, self.resume_config = None, None
        else:
            self.resume_dir, self.resume_config = self.run_dir, end.run_config

    def forget(self) -> None:
        """New Run: the next Start makes a new run."""
        self.resume_dir, self.resume_config = None, None

    def history_total(self, history: History) -> int:
        """The progress bar's total for a loaded history (a run without a step limit: its last step)."""
        total = self.resume_config.train.steps if self.resume_config is not None else history.last_step
        total = history.last_step if total is None else total
        return max(total, history.last_step, 1)
