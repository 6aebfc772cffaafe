"""The training loop (Ho et al. 2020, Algorithm 1), shared by the GUI, the CLI and torchrun.

``Trainer(cfg, run_dir).run(control, on_event)`` trains until ``cfg.train.steps`` (the run's total),
the time limit, a stop request or a non-finite loss, and returns a :class:`TrainFinished`. It
knows nothing of who listens: everything it has to say goes through ``on_event`` (see events.py),
at a bounded rate (metrics every ``log_every`` steps, previews every ``preview_every``).

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
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ddpm_studio.config import RunConfig
from ddpm_studio.data.report import skipped_records
from ddpm_studio.artifacts import checkpoints as ckpts
from ddpm_studio.artifacts import runs
from ddpm_studio.training.control import TrainControl  # noqa: F401  (re-exported: Trainer.run takes one)
from ddpm_studio.training.events import (CheckpointSaved, FinishReason, PreviewReady, StepMetrics, TrainFinished,
                                         TrainStarted)

NUM_BUCKETS = 10  # loss is reported per tenth of the timestep range
SMOOTHING = 0.98  # per-step decay of the smoothed loss shown next to the raw one
# A checkpoint is "healthy" when its mean loss since the previous checkpoint is at most
# HEALTHY_FACTOR times the lowest of the earlier healthy ones, or below HEALTHY_FLOOR (twice what a
# network that outputs zeros scores: targets have unit variance). The margin is wide because a
# window of a few small batches varies several-fold; a diverging run goes up by orders of
# magnitude. Pruning never removes the newest healthy checkpoint.
HEALTHY_FACTOR = 10.0
HEALTHY_FLOOR = 2.0

EventCallback = Callable[[object], None]


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (SplitMix64 finaliser over a running combination)."""
    z = 0x9E3779B97F4A7C15
    for v in values:
        z = (z ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        z = (z ^ (z >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 29
    return z & 0x7FFFFFFFFFFFFFFF


_STREAM_DIFFUSION, _STREAM_DROPOUT, _STREAM_PREVIEW, _STREAM_INIT = 1, 2, 3, 4


class _Dist:
    """The torchrun process group, or a single process."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        self.owns_group = False
        self.backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, use_cuda: bool) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            self.backend = "nccl" if use_cuda else "gloo"
            if use_cuda:
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend=self.backend)
            self.owns_group = True
        else:
            self.backend = dist.get_backend()

    def all_reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            self.owns_group = False


class _Stats:
    """Per-step losses and t-buckets accumulated on the device; read (one sync) when logging."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.losses: list[torch.Tensor] = []  # one 0-d float32 tensor per step
        self.grad_norms: list[torch.Tensor] = []
        self.bucket_sum = torch.zeros(NUM_BUCKETS, dtype=torch.float32, device=device)
        self.bucket_cnt = torch.zeros(NUM_BUCKETS, dtype=torch.float32, device=device)

    def add(self, loss_b: torch.Tensor, t: torch.Tensor, T: int, grad_norm: torch.Tensor) -> None:
        loss_b = loss_b.detach().float()
        self.losses.append(loss_b.mean())
        self.grad_norms.append(grad_norm.detach().float().reshape(()))
        b = (t * NUM_BUCKETS) // T  # (B,) bucket of each sample's timestep
        self.bucket_sum.index_add_(0, b, loss_b)
        self.bucket_cnt.index_add_(0, b, torch.ones_like(loss_b))

    def __len__(self) -> int:
        return len(self.losses)

    def drain(self, dist: _Dist) -> dict[str, Any]:
        """Read everything since the last drain (all ranks' losses averaged) and reset."""
        losses = torch.stack(self.losses)  # (k,)
        packed = torch.cat([losses, self.bucket_sum, self.bucket_cnt])
        dist.all_reduce_sum(packed)
        k = len(self.losses)
        losses_all = (packed[:k] / dist.world_size).tolist()
        bucket_sum = packed[k: k + NUM_BUCKETS].tolist()
        bucket_cnt = packed[k + NUM_BUCKETS:].tolist()
        grad_norm = float(self.grad_norms[-1])
        self.losses.clear()
        self.grad_norms.clear()
        self.bucket_sum.zero_()
        self.bucket_cnt.zero_()
        buckets = [s / c if c > 0 else None for s, c in zip(bucket_sum, bucket_cnt)]
        return {"losses": losses_all, "buckets": buckets, "grad_norm": grad_norm}


def _fmt_duration(sec: float) -> str:
    sec = int(round(sec))
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


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

    # -- public -------------------------------------------------------------------------------

    def snapshot(self):
        """A CPU copy of the current EMA model as a sampling.service.LoadedModel (thread-safe)."""
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
        dist = _Dist()
        try:
            return self._run(control, dist, on_event)
        finally:
            dist.close()

    # -- setup --------------------------------------------------------------------------------

    def _run(self, control: TrainControl, dist: _Dist, on_event: EventCallback | None) -> TrainFinished:
        from ddpm_studio.engine.devices import select_device

        cfg, tc = self.cfg, self.cfg.train
        main = dist.is_main

        def emit(event: object) -> None:
            if main and on_event is not None:
                on_event(event)

        device = select_device(tc.device)
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        if tc.batch_size % dist.world_size != 0:
            raise ValueError(
                f"train.batch_size ({tc.batch_size}) must be divisible by the number of processes "
                f"({dist.world_size}): the global batch is split evenly across them"
            )
        from ddpm_studio.engine.devices import resolve_precision

        # the config keeps what was asked
        self.precision, self._precision_note = resolve_precision(device, tc.precision)
        # The network must fit before anything is built or read (closed form, no allocation).
        from ddpm_studio import footprint

        memory, where = footprint.device_memory(device)
        footprint.check_fits(cfg.model, memory=memory, where=where, batch_size=tc.batch_size // dist.world_size,
                             training=True)
        dist.init(device.type == "cuda")

        # One writer per run folder: a second training (a resume, a second start) is refused,
        # naming the process that holds it. The lock dies with its process (even kill -9).
        lock = runs.RunLock(self.run_dir).acquire() if main else None
        try:
            return self._run_locked(control, dist, emit, device)
        finally:
            if lock is not None:
                lock.release(remove_folder_if_unused=True)

    def _run_locked(self, control: TrainControl, dist: _Dist, emit, device: torch.device) -> TrainFinished:
        cfg, tc = self.cfg, self.cfg.train
        main = dist.is_main

        # 1. The run folder: a fresh one, or the newest good checkpoint of an existing one.
        resumed, notes = None, [self._precision_note] if self._precision_note else []
        existing = ckpts.list_checkpoints(self.run_dir)
        if self.resume:
            if not existing:
                raise ckpts.CheckpointError(f"nothing to resume: {self.run_dir} has no checkpoints")
            resumed, resume_notes = ckpts.load_latest(self.run_dir, with_state=True)
            notes += resume_notes
            if tc.steps is not None and resumed.step >= tc.steps:
                msg = (f"The run is already at step {resumed.step:,}, and train.steps is {tc.steps:,} (the run's "
                       f"total). Ask for more steps to continue it.")
                return TrainFinished(resumed.step, FinishReason.ALREADY_COMPLETE, msg, str(resumed.path))
        elif existing:
            raise ValueError(
                f"{self.run_dir} already holds a run (checkpoints up to {existing[-1].name}); "
                "resume it or choose another folder"
            )

        # 2. The images (rank 0 first, so the others find the decoded set in the cache).
        images = self.images
        if images is None:
            from ddpm_studio.data import Cancelled, load_images

            try:
                if not main:
                    dist.barrier()
                images = load_images(cfg.data, should_stop=control.should_stop)
                if main:
                    dist.barrier()
            except Cancelled:
                return TrainFinished(resumed.step if resumed else 0, FinishReason.STOPPED, "Stopped while loading the "
                                                                                           "images.",
                                     str(resumed.path) if resumed else None)
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

        # 3. Model, EMA, optimizer, diffusion.
        from ddpm_studio.engine.diffusion import GaussianDiffusion
        from ddpm_studio.engine.ema import EMA
        from ddpm_studio.engine.unet import build_model, count_parameters

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(tc.seed, _STREAM_INIT))
            model = build_model(cfg.model)
        model.to(device)
        diffusion = GaussianDiffusion.from_config(cfg.diffusion)
        ema = EMA(model, tc.ema_decay, warmup=tc.ema_warmup)
        fused = device.type == "cuda"
        optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(0.9, 0.999),
                                      weight_decay=tc.weight_decay,
                                      **({"fused": True} if fused else {"foreach": True}))
        scaler = torch.amp.GradScaler("cuda", enabled=(self.precision == "fp16" and device.type == "cuda"))

        start_step, counters = 0, {"images_seen": 0, "train_seconds": 0.0, "loss_smooth": None}
        if resumed is not None:
            self._restore(resumed, model, ema, optimizer, scaler, device)
            start_step = resumed.step
            counters.update(resumed.train_state.get("counters", {}))
        with self._lock:
            self._ema, self._step = ema, start_step

        train_model: torch.nn.Module = model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

        from ddpm_studio.data import make_loader

        loader = make_loader(images, tc.batch_size, flip=cfg.data.flip, seed=tc.seed, rank=dist.rank,
                             world_size=dist.world_size)
        batches = iter(loader.batches(start_step))

        # 4. Write the run folder (rank 0 only).
        if main:
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
                                                        "precision": self.precision,
                                                        "world_size": dist.world_size})
            runs.write_run_info(self.run_dir, info)
            if resumed is not None:
                runs.trim_metrics(self.run_dir, start_step)
        dist.barrier()

        emit(TrainStarted(run_dir=str(self.run_dir), start_step=start_step, total_steps=tc.steps,
                          device=str(device), num_parameters=count_parameters(model), num_images=len(images),
                          resumed=resumed is not None, notes=list(notes), precision=self.precision,
                          skipped=list(images.skipped)))
        loop = _Loop(self, cfg, dist, device, model, train_model, ema, optimizer, scaler, diffusion, batches,
                     control, emit, start_step, counters,
                     last_checkpoint=str(resumed.path) if resumed is not None else None)
        try:
            return loop.run()
        except ckpts.CheckpointWriteError as e:
            return TrainFinished(loop.step, FinishReason.ERROR, f"Training stopped at step {loop.step:,}: {e}.",
                                 loop.last_checkpoint)
        except torch.OutOfMemoryError:
            step = loop.step
            return TrainFinished(step, FinishReason.ERROR,
                                 f"Ran out of {device.type.upper()} memory at step {step:,} (batch size "
                                 f"{tc.batch_size}, {cfg.data.image_size} px). Lower the batch size or the image size.",
                                 loop.last_checkpoint)

    def _restore(self, ckpt: ckpts.Checkpoint, model, ema, optimizer, scaler, device) -> None:
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


class _Loop:
    """The steps themselves, with the bookkeeping around them.

    Time: ``active`` is wall-clock time of this session minus pauses (the time limit and the
    checkpoint timer use it); images/s and the ETA use the time between two logs minus the time
    spent in previews, checkpoints and pauses.
    """

    def __init__(self, trainer: Trainer, cfg: RunConfig, dist: _Dist, device: torch.device, model, train_model,
                 ema, optimizer, scaler, diffusion, batches, control: TrainControl, emit, start_step: int,
                 counters: dict, last_checkpoint: str | None) -> None:
        self.trainer, self.cfg, self.tc, self.dist, self.device = trainer, cfg, cfg.train, dist, device
        self.model, self.train_model, self.ema, self.optimizer, self.scaler = model, train_model, ema, optimizer, scaler
        self.diffusion, self.batches, self.control, self.emit = diffusion, batches, control, emit
        self.step = self.start_step = start_step
        self.images_seen = int(counters.get("images_seen") or 0)
        self.train_seconds_before = float(counters.get("train_seconds") or 0.0)
        self.loss_smooth = counters.get("loss_smooth")
        self.last_checkpoint = last_checkpoint
        self.last_checkpoint_step = start_step
        # mean loss since the last checkpoint, and the lowest mean of a healthy checkpoint so far
        self.window_sum, self.window_n = 0.0, 0
        self.best_loss = counters.get("best_checkpoint_loss")
        self.stats = _Stats(device)
        self.generator = torch.Generator(device=device)
        self.T = diffusion.T
        self.lr = 0.0
        self.params = [p for p in model.parameters() if p.requires_grad]
        # CPU tensors for gloo, device tensors for NCCL
        self.flag_device = device if dist.backend == "nccl" else torch.device("cpu")

    # -- time -----------------------------------------------------------------------------------

    def active(self) -> float:
        return time.perf_counter() - self.t_start - self.paused_sec

    def _overhead(self, since: float) -> None:
        self.overhead_sec += time.perf_counter() - since

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> TrainFinished:
        tc, dist, control = self.tc, self.dist, self.control
        main = dist.is_main
        self.t_start = time.perf_counter()
        self.paused_sec = 0.0
        self.overhead_sec = 0.0  # previews, checkpoints, pauses since the last log
        self.t_last_log = self.t_start
        self.steps_since_log = 0
        last_ckpt_time = 0.0  # active() at the last checkpoint
        limit_sec = tc.minutes * 60.0 if tc.minutes else None
        flags = torch.zeros(3, device=self.flag_device)
        reason = FinishReason.COMPLETED
        total = math.inf if tc.steps is None else tc.steps  # None: the clock or a stop ends the run

        while True:
            # -- between steps: pause, stop, time limit, checkpoint timer ----------------------
            if control.paused:
                t0 = time.perf_counter()
                control.wait_while_paused()
                self.paused_sec += time.perf_counter() - t0
                self._overhead(t0)
            want_stop = control.should_stop()
            over_time = limit_sec is not None and self.active() >= limit_sec
            ckpt_due = tc.checkpoint_minutes > 0 and self.active() - last_ckpt_time >= tc.checkpoint_minutes * 60.0
            if dist.enabled:  # every rank acts on the same decision (rank 0's clock, anyone's stop)
                flags[0], flags[1], flags[2] = float(want_stop), float(over_time), float(ckpt_due and main)
                dist.all_reduce_max(flags)
                want_stop, over_time, ckpt_due = (bool(v) for v in flags.tolist())
            if want_stop or over_time:
                reason = FinishReason.STOPPED if want_stop else FinishReason.TIME_LIMIT
                break
            if self.step >= total:
                break
            if ckpt_due and self.step > self.last_checkpoint_step:
                if not self._checkpoint():
                    return self._finish_nan()
                last_ckpt_time = self.active()

            # -- one step ------------------------------------------------------------------------
            self._train_step()
            self.step += 1
            self.steps_since_log += 1

            if self.step % tc.log_every == 0 or self.step == total:
                if self._log() is not None:
                    return self._finish_nan()
            if main and tc.preview_every and self.step % tc.preview_every == 0 and self.step < total:
                self._preview()
            if tc.checkpoint_every and self.step % tc.checkpoint_every == 0 and self.step < total:
                if not self._checkpoint():
                    return self._finish_nan()
                last_ckpt_time = self.active()

        # -- the end -------------------------------------------------------------------------------
        if self.step > self.last_checkpoint_step:
            if not self._checkpoint():
                return self._finish_nan()
        if main and reason in ("completed", "time_limit") and tc.preview_every and self.step > self.start_step:
            self._preview()
        took = _fmt_duration(self.active())
        ck = Path(self.last_checkpoint).name if self.last_checkpoint else "none"
        message = {
            "completed": f"Finished: the run is at step {self.step:,} ({took} in this session). Saved {ck}.",
            "stopped": f"Stopped at step {self.step:,}{'' if tc.steps is None else f' of {tc.steps:,}'}. "
                       f"Saved {ck}; resume to continue.",
            "time_limit": f"Time limit reached at step {self.step:,}. Saved {ck}; resume to continue.",
        }[reason]
        return TrainFinished(self.step, reason, message, self.last_checkpoint)

    # -- one step ---------------------------------------------------------------------------

    def _train_step(self) -> None:
        from ddpm_studio.engine.devices import autocast

        tc, k = self.tc, self.step  # k: 0-based index of this step
        x0 = next(self.batches).to(self.device, non_blocking=True)  # (B_rank, C, H, W) in [-1, 1]
        B = x0.shape[0]
        # Algorithm 1, lines 3-4: t ~ Uniform({1..T}) (0-based here), eps ~ N(0, I), drawn from a
        # generator seeded with (seed, step, rank) so that resuming reproduces them exactly.
        self.generator.manual_seed(_mix(tc.seed, k, self.dist.rank, _STREAM_DIFFUSION))
        t = torch.randint(0, self.T, (B,), generator=self.generator, device=self.device)
        noise = torch.randn(x0.shape, generator=self.generator, device=self.device, dtype=x0.dtype)

        # linear warm-up to the peak learning rate, then constant (as in the paper)
        self.lr = tc.lr * min(1.0, (k + 1) / tc.warmup_steps) if tc.warmup_steps > 0 else tc.lr
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

        with self._dropout_rng(k) if self.cfg.model.dropout > 0 else contextlib.nullcontext():
            self.train_model.train()
            with autocast(self.device, self.trainer.precision):
                loss_b, t = self.diffusion.training_losses(self.train_model, x0, t=t, noise=noise)  # (B,), (B,)
            loss = loss_b.float().mean()  # Algorithm 1, line 5: gradient step on the mean loss
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, tc.grad_clip if tc.grad_clip > 0 else float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with self.trainer._lock:
            self.ema.update(self.model, k + 1)
            self.trainer._step = k + 1
        self.stats.add(loss_b, t, self.T, grad_norm)
        self.images_seen += tc.batch_size

    def _dropout_rng(self, k: int):
        """Dropout draws from the global RNG: seed it per step inside a fork, leaving others' RNG alone."""
        cuda = self.device.type == "cuda"

        @contextlib.contextmanager
        def ctx():
            with torch.random.fork_rng(devices=[self.device.index or 0] if cuda else []):
                seed = _mix(self.tc.seed, k, self.dist.rank, _STREAM_DROPOUT)
                torch.manual_seed(seed)  # seeds CPU and the current CUDA device
                yield

        return ctx()

    # -- reporting ----------------------------------------------------------------------------

    def _log(self) -> int | None:
        """Emit StepMetrics for the steps since the last log; returns the first bad step or None.

        Collective under torchrun: every rank calls it at the same steps.
        """
        tc = self.tc
        if not len(self.stats):
            return None
        first = self.step - len(self.stats) + 1  # step number (1-based) of the oldest pending loss
        d = self.stats.drain(self.dist)  # syncs with the device
        for i, v in enumerate(d["losses"]):
            if not math.isfinite(v):
                self.bad_step = first + i
                return self.bad_step
        for v in d["losses"]:
            self.loss_smooth = v if self.loss_smooth is None else SMOOTHING * self.loss_smooth + (1 - SMOOTHING) * v
        self.window_sum += sum(d["losses"])
        self.window_n += len(d["losses"])
        now = time.perf_counter()
        interval = now - self.t_last_log - self.overhead_sec
        steps = self.steps_since_log
        self.t_last_log, self.overhead_sec, self.steps_since_log = now, 0.0, 0
        ips = tc.batch_size * steps / interval if interval > 0 and steps else 0.0
        left = None if tc.steps is None else tc.steps - self.step
        eta = left * interval / steps if left is not None and interval > 0 and steps else None
        if tc.minutes and eta is not None:
            eta = min(eta, max(0.0, tc.minutes * 60.0 - self.active()))
        m = StepMetrics(step=self.step, total_steps=tc.steps, loss=sum(d["losses"]) / len(d["losses"]),
                        loss_smooth=float(self.loss_smooth), grad_norm=d["grad_norm"], lr=self.lr,
                        images_per_sec=ips, elapsed_sec=self.active(), eta_sec=eta, bucket_loss=d["buckets"])
        if self.dist.is_main:
            rec = {"step": m.step, "loss": m.loss, "loss_smooth": m.loss_smooth, "grad_norm": m.grad_norm,
                   "lr": m.lr, "images_per_sec": round(m.images_per_sec, 2), "elapsed_sec": round(m.elapsed_sec, 3),
                   "bucket_loss": m.bucket_loss, "time": round(time.time(), 3)}
            runs.append_metrics(self.trainer.run_dir, rec)
        self.emit(m)
        return None

    def _checkpoint(self) -> bool:
        """Log pending losses, check the weights are finite (all ranks agree), then save (rank 0).

        Returns False, saving nothing, when a loss or a weight is not finite: the last good
        checkpoint on disk is never replaced by a broken one.
        """
        t0 = time.perf_counter()
        bad = self._log()
        finite = bad is None and bool(torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()) \
            and bool(torch.stack([torch.isfinite(p).all() for p in self.ema.module.parameters()]).all())
        if not finite and bad is None:
            self.bad_step = self.step
        flag = torch.tensor([0.0 if finite else 1.0], device=self.flag_device)
        self.dist.all_reduce_max(flag)
        if flag.item() != 0.0:
            if finite:
                self.bad_step = self.step  # another rank saw it
            return False
        loss = self.window_sum / self.window_n if self.window_n else None
        healthy = loss is None or self.best_loss is None or loss <= max(HEALTHY_FACTOR * self.best_loss, HEALTHY_FLOOR)
        if healthy and loss is not None:
            self.best_loss = loss if self.best_loss is None else min(self.best_loss, loss)
        self.window_sum, self.window_n = 0.0, 0
        if self.dist.is_main:
            self._save(loss, healthy)
        self.last_checkpoint_step = self.step
        self._overhead(t0)
        return True

    def _finish_nan(self) -> TrainFinished:
        bad_step = getattr(self, "bad_step", self.step)
        last = Path(self.last_checkpoint).name if self.last_checkpoint else None
        healthy = ckpts.newest_healthy(self.trainer.run_dir) if self.dist.is_main else None
        kept_path = self.last_checkpoint
        if healthy is not None and healthy.name != last:
            later = [p.name for p in ckpts.list_checkpoints(self.trainer.run_dir)
                     if (ckpts.step_of(p) or 0) > (ckpts.step_of(healthy) or 0)]
            kept = (f"The last checkpoint saved while the loss was healthy, {healthy.name}, is kept; the later ones "
                    f"({', '.join(later)}) were saved while it was rising (delete them to resume from {healthy.name}).")
            kept_path = str(healthy)
        elif last:
            kept = f"The last good checkpoint ({last}) is kept."
        else:
            kept = "No checkpoint had been saved yet."
        msg = (f"Training stopped: the loss or the weights became NaN or infinite at step {bad_step:,}. {kept} "
               "Try a lower learning rate (train.lr), more warm-up steps, or fp32 precision.")
        return TrainFinished(max(self.start_step, bad_step - 1), FinishReason.NAN, msg, kept_path)

    def _preview(self) -> None:
        """Sample the EMA model from a FIXED seed, so previews are comparable across steps.

        ``train.preview_sampler`` (default DPM-Solver++ 2M) with ``train.preview_sampling_steps``
        steps (default 20), trailing spacing, x_0 clipped.
        """
        from ddpm_studio.config import SamplingConfig
        from ddpm_studio.sampling.export import save_grid
        from ddpm_studio.sampling.service import to_uint8

        tc, m = self.tc, self.cfg.model
        t0 = time.perf_counter()
        generator = torch.Generator(device="cpu").manual_seed(_mix(tc.seed, _STREAM_PREVIEW))
        last = None
        shape = (tc.preview_count, m.in_channels, m.image_size, m.image_size)
        sampling = SamplingConfig(sampler=tc.preview_sampler, steps=min(tc.preview_sampling_steps, self.T), eta=0.0,
                                  clip_denoised=True, spacing="trailing")
        for last in self.diffusion.sample_progressive(self.ema.module, shape, sampling, generator=generator,
                                                      device=self.device, should_stop=self.control.should_stop):
            pass
        self._overhead(t0)
        if last is None or last.index != last.total - 1:
            return  # stopped in the middle: no preview
        images = to_uint8(last.x_t)
        try:
            save_grid(images, runs.preview_path(self.trainer.run_dir, self.step))
        except OSError:
            pass  # a preview that cannot be written is not worth stopping the training for
        self.emit(PreviewReady(step=self.step, images=images))

    def _save(self, loss: float | None = None, healthy: bool = True) -> None:
        state = {
            "format_version": ckpts.FORMAT_VERSION,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []},
            "counters": {"images_seen": self.images_seen,
                         "train_seconds": self.train_seconds_before + self.active(),
                         "loss_smooth": self.loss_smooth, "best_checkpoint_loss": self.best_loss},
        }
        # checks the free space first, pruning first if that makes the room; keeps the newest healthy one
        path = ckpts.save_checkpoint(self.trainer.run_dir, self.step, self.cfg, self.model.state_dict(),
                                     self.ema.module.state_dict(), state, loss=loss, healthy=healthy,
                                     keep=self.tc.keep_checkpoints)
        self.last_checkpoint = str(path)
        self.emit(CheckpointSaved(step=self.step, path=str(path)))
