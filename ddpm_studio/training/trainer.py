"""The training service (Ho et al. 2020, Algorithm 1), shared by the GUI, the CLI and torchrun.

``Trainer(cfg, run_dir).run(control, on_event)`` trains until ``cfg.train.steps`` (the run's total;
None = no limit), the time limit, a stop request or a non-finite loss, and returns a
:class:`TrainFinished`. It knows nothing of who listens: everything it has to say goes through
``on_event`` (see events.py), at a bounded rate (metrics every ``log_every`` steps, previews every
``preview_every``).

This module sets a session up, one small function per stage (device and memory, the run folder,
the images, the model and its optimizer, the run's records), then hands over to
:class:`~ddpm_studio.training.loop.Loop`, which runs the steps.

Determinism: the weights come from ``seed``; the batch of step k depends only on (seed, k) (the
data loader's contract); the timesteps, noise and dropout of step k come from generators seeded
with (seed, k, rank). So N steps straight and N/2 + resume + N/2 give the same weights on CPU.

Distributed: under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel
(NCCL on CUDA, gloo otherwise); each rank trains on its slice of the global batch, only rank 0
writes the run folder and reports events, and the stop / non-finite flags are all-reduced so that
every rank stops at the same step.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from ddpm_studio.artifacts import checkpoints as ckpts
from ddpm_studio.artifacts import runs
from ddpm_studio.config import RunConfig
from ddpm_studio.data.report import skipped_records
from ddpm_studio.training.control import TrainControl
from ddpm_studio.training.dist import STREAM_INIT, Dist, mix
from ddpm_studio.training.events import FinishReason, TrainFinished, TrainStarted
from ddpm_studio.training.loop import Loop, LoopState, MetricsLog, Parts, Previews

EventCallback = Callable[[object], None]
__all__ = ["Trainer", "TrainControl", "EventCallback"]  # TrainControl: what Trainer.run takes


class _Stopped(Exception):
    """Setup ended early with a result (a run already at its total, a stop while loading)."""

    def __init__(self, result: TrainFinished) -> None:
        super().__init__(result.message)
        self.result = result


def make_adamw(params, device: torch.device, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW(0.9, 0.999) with the fused kernel on CUDA and on CPUs (torch >= 2.4: one pass over the
    parameters instead of a dozen foreach ops; 3-4 % more images/s for the tiny preset on a CPU, see
    BENCHMARKS.md), the foreach one elsewhere or where this torch has no fused CPU kernel."""
    params = list(params)
    if device.type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError):  # an older torch: no fused kernel for this device
            pass
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, foreach=True)


class Trainer:
    """Trains one run; see the module docstring. Construct cheaply, then call ``run`` (any thread)."""

    def __init__(self, cfg: RunConfig, run_dir: str | os.PathLike, *, images=None, resume: bool = False) -> None:
        self.cfg = copy.deepcopy(cfg).sync()
        self.cfg.validate()
        self.run_dir = Path(run_dir)
        self.images = images
        self.resume = resume
        self._lock = threading.Lock()
        self._ema = None
        self._step = 0
        self._started = False
        self.precision = "fp32"  # resolved from train.precision when the run starts
        self._precision_note: str | None = None
        self.compiled = False  # train.compile resolved for this device (torch.compile of the training network)
        self._compile_note: str | None = None

    # -- public -------------------------------------------------------------------------------

    def snapshot(self):
        """A CPU copy of the current EMA model as an artifacts.loaded.LoadedModel (thread-safe)."""
        from ddpm_studio.artifacts.loaded import build_loaded

        with self._lock:
            if self._ema is None:
                raise RuntimeError("the model is not built yet; wait for the training to start")
            weights = {k: v.detach().to("cpu", copy=True) for k, v in self._ema.module.state_dict().items()}
            step, cfg = self._step, copy.deepcopy(self.cfg)
        return build_loaded(cfg, weights, step=step, source=str(self.run_dir), device=torch.device("cpu"))

    def run(self, control: TrainControl | None = None, on_event: EventCallback | None = None) -> TrainFinished:
        """Train; returns why it ended. Raises ValueError (CheckpointError, DatasetError) for refused input."""
        if self._started:
            raise RuntimeError("a Trainer runs once; make a new one to continue (resume=True)")
        self._started = True
        control = control or TrainControl()
        dist = Dist()

        def emit(event: object) -> None:
            if dist.is_main and on_event is not None:
                on_event(event)

        finished = False
        try:
            device = self._device(dist)
            dist.init(device.type == "cuda")
            # One writer per run folder: a second training (a resume, a second start) is refused,
            # naming the process that holds it. The lock dies with its process (even kill -9).
            lock = runs.RunLock(self.run_dir).acquire() if dist.is_main else None
            try:
                result = self._session(control, dist, emit, device)
            except _Stopped as e:
                result = e.result
            finally:
                if lock is not None:
                    lock.release(remove_folder_if_unused=True)
            finished = True
            return result
        finally:
            dist.close(wait_for_peers=finished)

    # -- setup, one stage per function ----------------------------------------------------------

    def _device(self, dist: Dist) -> torch.device:
        """The device, the precision it computes in, and a check that the network fits (nothing built yet)."""
        from ddpm_studio import footprint
        from ddpm_studio.engine.devices import resolve_compile, resolve_precision, select_device

        tc = self.cfg.train
        device = select_device(tc.device)
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        if tc.batch_size % dist.world_size != 0:
            raise ValueError(
                f"train.batch_size ({tc.batch_size}) must be divisible by the number of processes "
                f"({dist.world_size}): the global batch is split evenly across them"
            )
        # the config keeps what was asked; the session computes in what this device does well
        self.precision, self._precision_note = resolve_precision(device, tc.precision)
        self.compiled, self._compile_note = resolve_compile(device, tc.compile)
        memory, where = footprint.device_memory(device)
        footprint.check_fits(self.cfg.model, memory=memory, where=where, batch_size=tc.batch_size // dist.world_size,
                             training=True)
        return device

    def _session(self, control: TrainControl, dist: Dist, emit, device: torch.device) -> TrainFinished:
        from ddpm_studio.engine.unet import count_parameters

        cfg, tc = self.cfg, self.cfg.train
        notes = [n for n in (self._precision_note, self._compile_note) if n]
        resumed = self._open_run(notes)
        images = self._images(control, dist, resumed)
        parts, start_step, counters = self._build(device, dist, images, resumed)
        if dist.is_main:
            self._write_records(resumed, images, device, dist, start_step, notes)
        dist.barrier()
        emit(TrainStarted(run_dir=str(self.run_dir), start_step=start_step, total_steps=tc.steps,
                          device=str(device), num_parameters=count_parameters(parts.model),
                          num_images=len(images), resumed=resumed is not None, notes=list(notes),
                          precision=self.precision, skipped=list(images.skipped)))
        state = LoopState.starting(start_step, counters, str(resumed.path) if resumed is not None else None)
        loop = Loop(self, cfg, dist, parts, control, emit, state, [MetricsLog(), Previews()])
        try:
            return loop.run()
        except ckpts.CheckpointWriteError as e:
            return TrainFinished(state.step, FinishReason.ERROR, f"Training stopped at step {state.step:,}: {e}.",
                                 state.last_checkpoint)
        except torch.OutOfMemoryError:
            return TrainFinished(state.step, FinishReason.ERROR,
                                 f"Ran out of {device.type.upper()} memory at step {state.step:,} (batch size "
                                 f"{tc.batch_size}, {cfg.data.image_size} px). Lower the batch size or the image size.",
                                 state.last_checkpoint)

    def _open_run(self, notes: list[str]) -> ckpts.Checkpoint | None:
        """A fresh run folder (None), or the newest good checkpoint of the run being resumed."""
        existing = ckpts.list_checkpoints(self.run_dir)
        if not self.resume:
            if existing:
                raise ValueError(f"{self.run_dir} already holds a run (checkpoints up to {existing[-1].name}); "
                                 "resume it or choose another folder")
            return None
        if not existing:
            raise ckpts.CheckpointError(f"nothing to resume: {self.run_dir} has no checkpoints")
        resumed, resume_notes = ckpts.load_latest(self.run_dir, with_state=True)
        notes += resume_notes
        steps = self.cfg.train.steps
        if steps is not None and resumed.step >= steps:
            msg = (f"The run is already at step {resumed.step:,}, and train.steps is {steps:,} (the run's "
                   f"total). Ask for more steps to continue it.")
            raise _Stopped(TrainFinished(resumed.step, FinishReason.ALREADY_COMPLETE, msg, str(resumed.path)))
        return resumed

    def _images(self, control: TrainControl, dist: Dist, resumed: ckpts.Checkpoint | None):
        """The image set (rank 0 decodes first, so the others find it in the cache), checked against the config."""
        cfg, images = self.cfg, self.images
        if images is None:
            from ddpm_studio.data import load_images
            from ddpm_studio.errors import Cancelled

            try:
                if not dist.is_main:
                    dist.barrier()
                images = load_images(cfg.data, should_stop=control.should_stop)
                if dist.is_main:
                    dist.barrier()
            except Cancelled:
                raise _Stopped(TrainFinished(resumed.step if resumed else 0, FinishReason.STOPPED,
                                             "Stopped while loading the images.",
                                             str(resumed.path) if resumed else None)) from None
        if images.image_size != cfg.data.image_size:
            raise ValueError(f"the images are {images.image_size} px but data.image_size is {cfg.data.image_size}")
        if cfg.data.channels == "auto":
            cfg.model.in_channels = int(images.channels)
        elif int(cfg.data.channels) != images.channels:
            raise ValueError(f"data.channels is {cfg.data.channels} but the images have {images.channels} channel(s)")
        cfg.validate()
        if len(images) == 0:
            raise ValueError("the image set is empty")
        if resumed is not None:
            ckpts.check_compatible(resumed, cfg)
        return images

    def _build(self, device: torch.device, dist: Dist, images, resumed: ckpts.Checkpoint | None):
        """(Parts, start step, counters): the model, EMA, optimizer and diffusion, restored when resuming."""
        from ddpm_studio.data import make_loader
        from ddpm_studio.engine.diffusion import GaussianDiffusion
        from ddpm_studio.engine.ema import EMA
        from ddpm_studio.engine.unet import build_model

        cfg, tc = self.cfg, self.cfg.train
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix(tc.seed, STREAM_INIT))
            model = build_model(cfg.model)
        model.to(device)
        ema = EMA(model, tc.ema_decay, warmup=tc.ema_warmup)
        optimizer = make_adamw(model.parameters(), device, lr=tc.lr, weight_decay=tc.weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=(self.precision == "fp16" and device.type == "cuda"))
        start_step, counters = 0, {"images_seen": 0, "train_seconds": 0.0, "loss_smooth": None}
        if resumed is not None:
            _restore(resumed, model, ema, optimizer, scaler, device)
            start_step = resumed.step
            counters.update(resumed.train_state.get("counters", {}))
        with self._lock:
            self._ema, self._step = ema, start_step
        train_model: torch.nn.Module = model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if self.compiled:  # lazy: the first step compiles (and falls back to eager if that fails, see Loop)
            train_model = torch.compile(train_model)
        loader = make_loader(images, tc.batch_size, flip=cfg.data.flip, seed=tc.seed, rank=dist.rank,
                             world_size=dist.world_size)
        parts = Parts(model, train_model, ema, optimizer, scaler, GaussianDiffusion.from_config(cfg.diffusion),
                      iter(loader.batches(start_step)), device)
        return parts, start_step, counters

    def _write_records(self, resumed, images, device: torch.device, dist: Dist, start_step: int,
                       notes: list[str]) -> None:
        """config.json and run.json (rank 0): a new run's records, or one more session in a resumed run's."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpts.remove_stale_temp_files(self.run_dir)
        runs.write_config(self.run_dir, cfg)
        info = runs.read_run_info(self.run_dir) if resumed is not None else {}
        dataset = runs.dataset_record(cfg, source=images.source, fingerprint=images.fingerprint,
                                      num_images=len(images), skipped=skipped_records(images.skipped))
        if not info:
            info = runs.new_run_info(cfg, dataset=dataset, device=str(device), world_size=dist.world_size,
                                     precision=self.precision)
        else:
            old_fp = (info.get("dataset") or {}).get("fingerprint")
            if old_fp and old_fp != images.fingerprint:
                notes.append("the images differ from the ones this run started with "
                             f"({(info.get('dataset') or {}).get('source')}); training continues on the new ones")
            info["dataset"] = dataset
            info["versions"] = runs.package_versions()
            info.setdefault("sessions", []).append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                    "start_step": start_step, "device": str(device),
                                                    "precision": self.precision, "world_size": dist.world_size})
        runs.write_run_info(self.run_dir, info)
        if resumed is not None:
            runs.trim_metrics(self.run_dir, start_step)


def _restore(ckpt: ckpts.Checkpoint, model, ema, optimizer, scaler, device) -> None:
    """Weights, EMA, optimizer, loss scaler and random state of a checkpoint, into a freshly built session."""
    st = ckpt.train_state or {}
    ckpts.load_weights_into(model, ckpt.model_state, "model")
    ckpts.load_weights_into(ema.module, ckpt.ema_state, "EMA")
    try:
        optimizer.load_state_dict(st["optimizer"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise ckpts.CheckpointError(f"{ckpt.path.name}: the optimizer state does not fit this model "
                                    f"({e})") from None
    if st.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(st["scaler"])
    rng = st.get("rng") or {}
    if isinstance(rng.get("torch"), torch.Tensor):
        torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda"):
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state(rng["cuda"][0], device)
