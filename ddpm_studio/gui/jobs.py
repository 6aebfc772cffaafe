"""The job functions the panels run on worker threads (see :mod:`.workers`).

Each ``make_*`` returns ``job(state)``, which calls a service (data, training, sampling, export)
and relays what it reports. Heavy imports (torch and everything that imports it) happen here, in
the worker thread, so the window starts without them. Tensors become numpy ``uint8`` here, never
on the UI thread.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import DataConfig, RunConfig, SamplingConfig
from ..errors import Cancelled
from ..logs import logger as log
from .workers import TaskState, runs_below_the_ui

DEFAULT_CHAIN_BUDGET = 300 * 1024 * 1024  # bytes of recorded reverse-chain frames per generation


# -- messages from jobs to panels ---------------------------------------------------------------
@dataclass
class TrainerReady:
    trainer: Any  # training.Trainer, for snapshots from the sampling panel


@dataclass
class PreviewGrid:
    step: int
    grid: np.ndarray  # (H, W, C) uint8


@dataclass
class QualityPoint:
    """One quality score of a checkpoint while training (``train.eval_every``), for the Training panel's plot."""

    step: int
    kid: float
    kid_lo: float  # the 95% bootstrap interval
    kid_hi: float
    floor_kid: float  # held-out real images against the rest
    num_samples: int
    summary: str


@dataclass
class QualityNote:
    text: str  # what the scorer says (a readout's summary, or why it stopped scoring)


@dataclass
class ModelReady:
    config: RunConfig
    step: int
    source: str
    loaded: Any = None  # the LoadedModel itself, so the panel can reuse it for the next generation


@dataclass
class ChainFrame:
    index: int  # position in the chain, 0 … total-1
    t: int  # 0-based timestep just denoised
    total: int
    xt: np.ndarray  # (H, W, C) uint8 grid of x_t
    x0: np.ndarray  # (H, W, C) uint8 grid of the predicted x_0


@dataclass
class SampleResult:
    images: np.ndarray  # (N, H, W, C) uint8, the final samples
    grid: np.ndarray  # (H, W, C) uint8
    stride: int  # every stride-th step was recorded (plus the last)
    total: int  # steps in the chain


def chain_stride(total_steps: int, frame_bytes: int, budget_bytes: int = DEFAULT_CHAIN_BUDGET) -> int:
    """Record every k-th step so that ``total_steps / k`` frames of ``frame_bytes`` fit the budget."""
    if total_steps <= 0 or frame_bytes <= 0:
        return 1
    max_frames = max(2, budget_bytes // frame_bytes)
    return max(1, math.ceil(total_steps / max_frames))


def recorded(index: int, total: int, stride: int) -> bool:
    return index % stride == 0 or index == total - 1


# -- dataset --------------------------------------------------------------------------------------
def make_load_dataset(paths: list[str] | None, data_cfg: DataConfig) -> Callable[[TaskState], Any]:
    """Load dropped folders/files (or the built-in set when ``paths`` is empty)."""
    paths = list(paths or [])

    def job(state: TaskState):
        from .. import data

        kwargs = dict(progress=state.progress, should_stop=state.should_stop)
        if not paths:
            return data.load_images(dataclasses.replace(data_cfg, folder=None), **kwargs)
        if len(paths) == 1 and os.path.isdir(paths[0]):
            return data.load_images(dataclasses.replace(data_cfg, folder=paths[0]), **kwargs)
        return data.load_paths(paths, data_cfg, **kwargs)

    return job


# -- training -------------------------------------------------------------------------------------
def make_train(cfg: RunConfig, run_dir: str, images: Any, resume: bool, control: Any) -> Callable[[TaskState], Any]:
    def job(state: TaskState):
        from ..sampling.export import make_grid
        from ..training.events import PreviewReady, StepMetrics
        from ..training.session import finish_job
        from ..training.trainer import Trainer

        trainer = Trainer(cfg, run_dir, images=images, resume=resume)
        state.emit(TrainerReady(trainer), flush=True)

        def on_event(ev) -> None:
            if isinstance(ev, PreviewReady):
                state.emit(PreviewGrid(ev.step, make_grid(ev.images)), flush=True)
            elif isinstance(ev, StepMetrics):
                state.emit(ev)  # batched: at most ~30 deliveries a second
            else:
                state.emit(ev, flush=True)

        listener = on_event
        if cfg.train.eval_every > 0:
            listener = quality_listener(cfg, run_dir, images, state, on_event, control.should_stop)
        result = trainer.run(control=control, on_event=listener)
        return finish_job(result, run_dir)  # the run's config read back here, not on the UI thread

    return job


def quality_listener(cfg: RunConfig, run_dir: str, images: Any, state: TaskState, then: Callable[[object], None],
                     should_stop: Callable[[], bool]) -> Callable[[object], None]:
    """``then``, with the checkpoint scorer in front (``train.eval_every`` > 0): each readout goes to
    RUN/evaluation.jsonl (what the Evaluate tab reads) and to the panel as a :class:`QualityPoint`."""
    from ..engine.devices import select_device
    from ..evaluation.during_training import ScoreCheckpoints, samples_per_score

    device = select_device(cfg.train.device)

    def readout(r) -> None:
        state.emit(QualityPoint(int(r.step), r.kid, r.kid_lo, r.kid_hi, r.floor_kid, r.num_samples, r.summary()),
                   flush=True)

    return ScoreCheckpoints(run_dir, cfg.train.eval_every, samples_per_score(cfg, device), device=device, then=then,
                            report=lambda text: state.emit(QualityNote(text), flush=True),
                            real=None if images is None else images.images, on_readout=readout,
                            should_stop=should_stop)


def make_quality_cost(cfg: RunConfig) -> Callable[[TaskState], Any]:
    """The lines ``train`` prints before it scores itself (the cost of one score, timed on an untrained
    network of this shape); "" when scoring is off."""

    def job(state: TaskState) -> str:
        if cfg.train.eval_every <= 0:
            return ""
        from ..engine.devices import select_device
        from ..evaluation.during_training import estimate_seconds, plan_lines, samples_per_score

        device = select_device(cfg.train.device)
        num = samples_per_score(cfg, device)
        return "\n".join(plan_lines(cfg, num, estimate_seconds(cfg, num, device=str(device))))

    return job


# -- sampling -------------------------------------------------------------------------------------
# SamplingConfig fields the Sampling panel has no control for: they come from the model itself (an
# imported diffusers model's steps offset, clip range and thresholding; issue 15). The spacing has a
# control of its own.
MODEL_SAMPLING_FIELDS = ("steps_offset", "clip_range", "dynamic_threshold", "threshold_max")


def model_sampling(panel: SamplingConfig, model: SamplingConfig) -> SamplingConfig:
    """The panel's settings, with the fields it does not show taken from the model's own config."""
    return dataclasses.replace(panel, **{f: getattr(model, f) for f in MODEL_SAMPLING_FIELDS})


def make_sample(get_model: Callable[[], Any], sampling: SamplingConfig,
                budget_bytes: int = DEFAULT_CHAIN_BUDGET) -> Callable[[TaskState], Any]:
    """Run one reverse chain; emit recorded frames as :class:`ChainFrame`, return :class:`SampleResult`."""

    def job(state: TaskState):
        from ..sampling.export import make_grid
        from ..sampling.service import generate, to_uint8

        loaded = get_model()
        state.emit(ModelReady(loaded.config, int(loaded.step), str(loaded.source), loaded), flush=True)
        sampling_used = model_sampling(sampling, loaded.config.sampling)
        if state.should_stop():
            raise Cancelled()
        stride = None
        last = None
        for r in generate(loaded, sampling_used, should_stop=state.should_stop):
            last = r
            if stride is not None and not recorded(r.index, r.total, stride):
                continue
            xt = make_grid(to_uint8(r.x_t))
            x0 = make_grid(to_uint8(r.pred_x0))
            if stride is None:
                stride = chain_stride(r.total, xt.nbytes + x0.nbytes, budget_bytes)
            state.emit(ChainFrame(r.index, int(r.t), r.total, xt, x0))
        if state.should_stop() or last is None or last.index != last.total - 1:
            raise Cancelled()
        images = to_uint8(last.x_t)  # the final x_t is x_0
        return SampleResult(images, make_grid(images), stride or 1, last.total)

    return job


def make_tune(get_model: Callable[[], Any], sampling: SamplingConfig, images: int | None = None,
              open_images=None, remember: bool = False) -> Callable[[TaskState], Any]:
    """Tune ``sampling``'s timesteps to the model on ``images`` chains (None: ``sampling.tuning.IMAGES``);
    return its ``StepTuning``. The last-step check uses the run's training images, or else ``open_images``
    (the Dataset panel's ImageSet) when they are the model's size and channels. With ``remember`` (a model
    from disk) the result is kept for its weights (``sampling.tuning_store``); a failed write only logs."""

    def job(state: TaskState):
        from ..evaluation.metrics import tuning_images
        from ..sampling.tuning import IMAGES, tune_timesteps

        loaded = get_model()
        used = model_sampling(sampling, loaded.config.sampling)
        data, said = tuning_images(loaded, open_images=open_images, should_stop=state.should_stop)
        if data is None and open_images is None:
            said += "; open them in the Dataset panel to have it checked"
        result = tune_timesteps(loaded, used, images=images or IMAGES, data=data, data_note=said,
                                should_stop=state.should_stop,
                                progress=lambda n, err: state.progress(n, 0, f"chain {n} tried; best error {err:.2e}"),
                                phase=lambda text: state.progress(0, 0, text[0].upper() + text[1:] + "…", force=True))
        if remember:
            from ..sampling import tuning_store

            try:
                tuning_store.remember(tuning_store.model_key(loaded), used, result)
            except OSError as e:
                log.warning("the tuning could not be remembered: %s", e)
        return result

    return job


# -- export ---------------------------------------------------------------------------------------
def make_export_png(image: np.ndarray, path: str, scale: int = 1) -> Callable[[TaskState], Any]:
    def job(state: TaskState):
        from ..sampling.export import save_png, upscale_nearest

        save_png(upscale_nearest(image, scale) if scale > 1 else image, path)
        return [Path(path)]

    return job


def make_export_samples(images: np.ndarray, target: str, per_image: bool, scale: int = 1) -> Callable[[TaskState], Any]:
    def job(state: TaskState):
        from ..sampling.export import make_grid, save_png, save_pngs, upscale_nearest

        if per_image:
            ims = np.stack([upscale_nearest(im, scale) for im in images]) if scale > 1 else images
            return save_pngs(ims, target)
        grid = make_grid(images)
        save_png(upscale_nearest(grid, scale) if scale > 1 else grid, target)
        return [Path(target)]

    return job


def make_export_gif(frames: list[np.ndarray], path: str, *, stride: int = 1, fps: int = 20,
                    hold_last_sec: float = 1.0, scale: int = 1) -> Callable[[TaskState], Any]:
    """``frames`` are the recorded x_t grids, first to last; every ``stride``-th is kept, plus the last."""

    def job(state: TaskState):
        from ..sampling.export import save_gif, upscale_nearest

        if not frames:
            raise ValueError("there is no reverse chain to export yet: press Generate first")
        keep = [i for i in range(len(frames)) if i % stride == 0 or i == len(frames) - 1]
        out = []
        for n, i in enumerate(keep):
            if state.should_stop():
                raise Cancelled()
            out.append(upscale_nearest(frames[i], scale) if scale > 1 else frames[i])
            state.progress(n + 1, len(keep), "Preparing GIF frames")
        save_gif(out, path, fps=fps, hold_last_sec=hold_last_sec)
        return [Path(path)]

    return job


# -- device ---------------------------------------------------------------------------------------
def threads_for_workers(torch_module, below_the_ui: bool, environ=None, cpu_count=None) -> int:
    """How many threads torch uses in the window's workers, set once at start-up.

    Where a worker thread runs below the UI thread's priority (:func:`.workers.lower_this_threads_priority`,
    Linux), torch gets every core: the UI thread still wins a core the moment it has work. Elsewhere
    one core is left for the UI: on a 2-core machine with every core training at the UI's own
    priority, the longest UI stall measured 102 ms, and 63 ms with a core left free (BENCHMARKS.md).
    An explicit OMP_NUM_THREADS is respected. Returns the thread count torch uses afterwards.
    """
    environ = os.environ if environ is None else environ
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    if "OMP_NUM_THREADS" not in environ:
        torch_module.set_num_threads(cpus if below_the_ui or cpus == 1 else cpus - 1)
    return torch_module.get_num_threads()


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = True


@contextmanager
def collector_paused_then_frozen():
    """Run a block of heavy imports with no cyclic-GC pass, then move every object alive out of
    the collector's reach (``gc.freeze()``).

    Importing torch creates about 170,000 objects, and its first optimizer imports 800 more modules
    (torch._dynamo, sympy) and 120,000 objects. A full collection over them, triggered by a worker
    thread, holds the GIL for 70-200 ms, and the UI thread, which needs the GIL for every event,
    stalls as long: 150-210 ms when training started (ui-stall benchmark, issue #5). Frozen, these
    long-lived objects are never scanned again. Use it only where nothing short-lived is alive
    (the start-up probe): a frozen object that becomes garbage in a reference cycle is never freed.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            gc.freeze()
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def warm_up_torch(torch_module) -> None:
    """Do now, at start-up, the imports torch would otherwise do when the first run builds its
    optimizer (a throw-away one triggers them)."""
    torch_module.optim.AdamW([torch_module.nn.Parameter(torch_module.zeros(1))])


def make_probe_device(pref: str = "auto") -> Callable[[TaskState], Any]:
    """Import torch (off the UI thread, see :func:`collector_paused_then_frozen`), choose its thread
    count (:func:`threads_for_workers`), describe the device ``pref`` resolves to."""

    def job(state: TaskState):
        with collector_paused_then_frozen():
            import torch

            from ..engine.devices import describe_device, resolve_precision, select_device
            from ..sampling import service  # noqa: F401 - imported here, not when a run starts
            from ..training import trainer  # noqa: F401

            warm_up_torch(torch)

        threads_for_workers(torch, runs_below_the_ui())

        available = ["auto", "cpu"]
        if torch.cuda.is_available():
            available.append("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            available.append("mps")
        device = select_device(pref)
        precision = resolve_precision(device, "auto")[0]
        if device.type == "cpu":
            return cpu_device_text(torch.get_num_threads(), precision=precision), available, cpu_precision_note()
        return describe_device(device, precision), available, ""

    return job


def cpu_precision_note(native: bool | None = None) -> str:
    """One sentence for the status bar's tooltip: which precision Automatic trains in on this CPU, and why."""
    if native is None:
        from ..engine.devices import cpu_has_native_bf16

        native = cpu_has_native_bf16()
    if native:
        return ("Automatic precision trains in bf16 mixed precision here: this CPU computes bf16 natively "
                "(AVX-512 BF16 or AMX), measured 1.5-2x the fp32 rate.")
    return ("Automatic precision trains in fp32 here: this CPU has no native bf16 (AVX-512 BF16 or AMX), and "
            "emulated bf16 measured about 10x slower than fp32.")


def cpu_device_text(threads: int, cpus: int | None = None, environ=None, precision: str | None = None) -> str:
    """The status bar's CPU entry, saying why torch uses fewer threads than the machine has cores,
    and naming the precision when it is not fp32 (e.g. bf16 on a CPU that has it)."""
    environ = os.environ if environ is None else environ
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    extra = f", {precision}" if precision and precision not in ("fp32", "auto") else ""
    n = f"{threads} thread{'' if threads == 1 else 's'}"
    if "OMP_NUM_THREADS" in environ and threads < cpus:
        return f"CPU ({threads} of {cpus} cores, as OMP_NUM_THREADS says{extra})"
    if threads < cpus:
        return f"CPU ({threads} of {cpus} cores, one kept for the window{extra})"
    return f"CPU ({n}{extra})"
