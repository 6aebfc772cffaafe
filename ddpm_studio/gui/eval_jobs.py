"""Job functions for the Evaluate tab and the dataset doctor (issue 17), run by :class:`.workers.Task`.

Each ``make_*`` returns ``job(state)`` calling the Qt-free services in ``ddpm_studio.evaluation``;
torch is imported here, on the worker thread. Results are numpy arrays and plain dataclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import Cancelled
from .workers import TaskState


@dataclass
class EvalResults:
    readouts: list  # metrics.Readout, oldest step first
    history: list = field(default_factory=list)  # every saved readout of the run (dicts), for the plot
    seconds_per_checkpoint: float = 0.0


@dataclass
class NearestResults:
    samples: np.ndarray  # (S, H, W, C) uint8
    neighbours: dict  # training row -> (H, W, C) uint8, only the rows shown
    report: Any  # memorization.NearestReport
    step: int


def make_evaluate(run_dir: str, *, num: int, checkpoint: str | None = None, all_checkpoints: bool = False,
                  device: str = "auto") -> Callable[[TaskState], Any]:
    def job(state: TaskState):
        import time

        from ..evaluation import metrics
        from ..artifacts.loading import load_model

        state.progress(0, 0, "Loading the training images…")
        real = metrics.run_real_images(run_dir, should_stop=state.should_stop)
        t0 = time.perf_counter()
        if all_checkpoints:
            readouts = []
            for r in metrics.evaluate_checkpoints(run_dir, real.images, num, device=device,
                                                  should_stop=state.should_stop, progress=state.progress):
                readouts.append(r)
                state.emit(r, flush=True)  # the plot grows checkpoint by checkpoint
        else:
            loaded = load_model(checkpoint or run_dir, device=device)
            readouts = [metrics.evaluate(loaded, real.images, num, should_stop=state.should_stop,
                                         progress=state.progress)]
        if state.should_stop():
            if readouts:
                metrics.save_results(run_dir, readouts)
            raise Cancelled()
        metrics.save_results(run_dir, readouts)
        per = (time.perf_counter() - t0) / max(1, len(readouts))
        return EvalResults(readouts, metrics.read_results(run_dir), per)

    return job


def make_nearest(run_dir: str, *, num: int = 64, checkpoint: str | None = None, device: str = "auto",
                 top: int = 3) -> Callable[[TaskState], Any]:
    """Sample ``num`` images of the run (newest good checkpoint, or ``checkpoint``) and find their neighbours."""
    def job(state: TaskState):
        from ..evaluation import memorization, metrics
        from ..artifacts.loading import load_model

        state.progress(0, 0, "Loading the training images…")
        real = metrics.run_real_images(run_dir, should_stop=state.should_stop)
        loaded = load_model(checkpoint or run_dir, device=device)
        samples = metrics.sample_for_eval(loaded, num, seed=metrics.EVAL_SEED + 7919, should_stop=state.should_stop,
                                          progress=state.progress)
        state.progress(0, 0, "Searching the training images…")
        rep = memorization.nearest_training_images(samples, real.images, k=top, train_paths=real.paths,
                                                   should_stop=state.should_stop)
        rows = {j for m in rep.matches for j in m.pixel_neighbours} | {m.feature_neighbour for m in rep.matches}
        return NearestResults(samples, {j: real.images[j].copy() for j in rows}, rep, int(loaded.step))

    return job


def make_timelapse(run_dir: str, gif_path: str, sheet_path: str | None) -> Callable[[TaskState], Any]:
    def job(state: TaskState):
        from ..evaluation.timelapse import write_timelapse

        state.progress(0, 0, "Writing the time-lapse…")
        return write_timelapse(run_dir, gif_path, sheet_path)

    return job


def make_doctor(paths: list[str], *, image_size: int, flip: bool) -> Callable[[TaskState], Any]:
    def job(state: TaskState):
        from ..evaluation.doctor import diagnose

        return diagnose(paths, image_size=image_size, flip=flip, progress=state.progress, should_stop=state.should_stop)

    return job


@dataclass
class RunSummary:
    run_dir: str
    checkpoints: list  # (step, path) oldest first
    loss: tuple  # (steps (n,), smoothed loss (n,)) numpy arrays
    history: list  # saved readouts (dicts)
    previews: int  # preview grids on disk (for the time-lapse)
    sampling: str = ""  # the run's sampler, in words (what Evaluate samples with)
    seconds_per_sample: float | None = None  # timed on an untrained network of the run's shape (the cost shown)


def make_open_run(run_dir: str, device: str = "auto") -> Callable[[TaskState], Any]:
    """Read what the Evaluate tab shows of a run: checkpoints, the loss curve, earlier evaluations."""
    def job(state: TaskState):
        from ..config import describe_sampling
        from ..evaluation.metrics import read_results
        from ..evaluation.timelapse import preview_files
        from ..artifacts.checkpoints import list_checkpoints, step_of
        from ..artifacts.runs import is_run_dir, read_config, read_metrics

        if not is_run_dir(run_dir):
            raise ValueError(f"{run_dir} is not a run folder (no config.json or checkpoints/)")
        cks = [(step_of(p), str(p)) for p in list_checkpoints(run_dir)]
        recs = [r for r in read_metrics(run_dir) if "step" in r and "loss" in r]
        steps = np.array([r["step"] for r in recs], dtype=np.float64)
        loss = np.array([r.get("loss_smooth", r["loss"]) for r in recs], dtype=np.float64)
        cfg = read_config(run_dir)
        per = None
        try:
            from ..engine.devices import select_device
            from ..evaluation.during_training import estimate_seconds

            probe = 8
            per = (estimate_seconds(cfg, probe, device=str(select_device(device)), probe=probe) - 1.0) / probe
        except (ValueError, RuntimeError):  # no such device, out of memory: no estimate, nothing fails
            per = None
        return RunSummary(run_dir, [c for c in cks if c[0] is not None], (steps, loss), read_results(run_dir),
                          len(preview_files(run_dir)), describe_sampling(cfg.sampling, cfg.diffusion.timesteps), per)

    return job
