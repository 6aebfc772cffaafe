"""The steps of a training session (Ho et al. 2020, Algorithm 1), with the bookkeeping around them.

:class:`Loop` runs the steps; everything it knows between two steps is one :class:`LoopState`.
Metrics and previews are listeners (:class:`LoopListener`) of what the loop does — a log of the
losses (``on_metrics``), a finished step (``after_step``), the end (``at_end``) — so the loop
itself only trains, checks the stop / time / checkpoint conditions and saves checkpoints.

Time: ``LoopState.active()`` is wall-clock time of this session minus pauses (the time limit and the
checkpoint timer use it); images/s and the ETA use the time between two logs minus the time spent
in previews, checkpoints and pauses.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ddpm_studio.artifacts import checkpoints as ckpts
from ddpm_studio.artifacts import runs
from ddpm_studio.config import RunConfig, TrainConfig
from ddpm_studio.logs import logger as log
from ddpm_studio.training.control import TrainControl
from ddpm_studio.training.dist import STREAM_DIFFUSION, STREAM_DROPOUT, STREAM_PREVIEW, Dist, mix
from ddpm_studio.training.events import CheckpointSaved, FinishReason, PreviewReady, StepMetrics, TrainFinished

NUM_BUCKETS = 10  # loss is reported per tenth of the timestep range
SMOOTHING = 0.98  # per-step decay of the smoothed loss shown next to the raw one
# A checkpoint is "healthy" when its mean loss since the previous checkpoint is at most
# HEALTHY_FACTOR times the lowest of the earlier healthy ones, or below HEALTHY_FLOOR (twice what a
# network that outputs zeros scores: targets have unit variance). The margin is wide because a
# window of a few small batches varies several-fold; a diverging run goes up by orders of
# magnitude. Pruning never removes the newest healthy checkpoint.
HEALTHY_FACTOR = 10.0
HEALTHY_FLOOR = 2.0

Emit = Callable[[object], None]


class Stats:
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

    def drain(self, dist: Dist) -> dict[str, Any]:
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


@dataclass
class Parts:
    """What a session trains with: built (and restored) by the Trainer, used by the Loop."""

    model: torch.nn.Module
    train_model: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    ema: Any  # engine.ema.EMA
    optimizer: torch.optim.Optimizer
    scaler: Any  # torch.amp.GradScaler
    diffusion: Any  # engine.diffusion.GaussianDiffusion
    batches: Any  # iterator of (B_rank, C, H, W) tensors in [-1, 1]
    device: torch.device


@dataclass
class LoopState:
    """Everything the loop knows between two steps."""

    step: int  # steps completed in the run
    start_step: int  # where this session began
    images_seen: int = 0
    train_seconds_before: float = 0.0  # training time of the earlier sessions
    loss_smooth: float | None = None
    best_loss: float | None = None  # lowest mean loss of a healthy checkpoint so far
    last_checkpoint: str | None = None
    last_checkpoint_step: int = 0
    last_checkpoint_time: float = 0.0  # active() at the last checkpoint
    window_sum: float = 0.0  # losses since the last checkpoint
    window_n: int = 0
    lr: float = 0.0
    time_done: float = 0.0  # the fraction of this session's time limit (train.minutes) used, the same on every rank
    bad_step: int | None = None  # the first step whose loss or weights were not finite
    t_start: float = field(default_factory=time.perf_counter)
    paused_sec: float = 0.0
    overhead_sec: float = 0.0  # previews, checkpoints, pauses since the last log
    t_last_log: float = 0.0
    steps_since_log: int = 0

    @classmethod
    def starting(cls, start_step: int, counters: dict, last_checkpoint: str | None) -> "LoopState":
        """The state at the first step of a session (``counters`` as a checkpoint saved them)."""
        return cls(step=start_step, start_step=start_step, images_seen=int(counters.get("images_seen") or 0),
                   train_seconds_before=float(counters.get("train_seconds") or 0.0),
                   loss_smooth=counters.get("loss_smooth"), best_loss=counters.get("best_checkpoint_loss"),
                   last_checkpoint=last_checkpoint, last_checkpoint_step=start_step)

    def begin(self) -> None:
        self.t_start = self.t_last_log = time.perf_counter()

    def active(self) -> float:
        return time.perf_counter() - self.t_start - self.paused_sec

    def add_overhead(self, since: float) -> None:
        self.overhead_sec += time.perf_counter() - since


def learning_rate(tc: TrainConfig, k: int, time_done: float = 0.0) -> float:
    """The learning rate of step ``k`` (0-based): a linear warm-up to ``tc.lr``, then constant (as in the paper),
    then, with ``tc.lr_cooldown = f > 0``, a linear fall towards 0 over the last fraction f of the run.

    The run's end is ``tc.steps`` (the run's total, so a resumed run continues the same schedule) or, for a
    session with a time limit, ``time_done`` (the fraction of ``tc.minutes`` used), whichever comes first. A
    run that a Stop ends has no known end and keeps the constant rate. By steps, the fall ends one step short
    of 0, so every step learns something.
    """
    lr = tc.lr * min(1.0, (k + 1) / tc.warmup_steps) if tc.warmup_steps > 0 else tc.lr
    if tc.lr_cooldown <= 0:
        return lr
    left = 1.0 - time_done  # the fraction of the run still to come (time_done is 0 without a time limit)
    if tc.steps is not None:
        left = min(left, (tc.steps - k) / tc.steps)
    return lr * max(0.0, min(1.0, left / tc.lr_cooldown))


class LoopListener:
    """Told what the loop does; override what you need. Runs on every rank (check ``loop.dist.is_main``)."""

    def on_metrics(self, loop: "Loop", metrics: StepMetrics) -> None:
        """The losses since the last log, averaged over ranks."""

    def after_step(self, loop: "Loop") -> None:
        """A step finished and was logged if due; before the step's checkpoint."""

    def at_end(self, loop: "Loop", reason: FinishReason) -> None:
        """The session ended for ``reason`` and its last checkpoint is saved."""


class Loop:
    """Trains from ``state.step`` until the total, the clock, a stop or a non-finite loss."""

    def __init__(self, trainer: Any, cfg: RunConfig, dist: Dist, parts: Parts, control: TrainControl, emit: Emit,
                 state: LoopState, listeners: list[LoopListener]) -> None:
        self.trainer, self.cfg, self.tc, self.dist, self.parts = trainer, cfg, cfg.train, dist, parts
        self.control, self.emit, self.state, self.listeners = control, emit, state, listeners
        self.device = parts.device
        self.T = parts.diffusion.T
        self.stats = Stats(self.device)
        self.generator = torch.Generator(device=self.device)
        self.params = [p for p in parts.model.parameters() if p.requires_grad]
        # CPU tensors for gloo, device tensors for NCCL
        self.flag_device = self.device if dist.backend == "nccl" else torch.device("cpu")
        self.total = math.inf if self.tc.steps is None else self.tc.steps  # None: the clock or a stop ends it
        self.compile_pending = bool(getattr(trainer, "compiled", False))

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> TrainFinished:
        self.state.begin()
        while True:
            reason = self._between_steps()
            if reason is FinishReason.NAN:
                return self._finish_nan()
            if reason is not None:
                break
            self._train_step()
            self.state.step += 1
            self.state.steps_since_log += 1
            if not self._after_step():
                return self._finish_nan()
        if self.state.step > self.state.last_checkpoint_step and not self._checkpoint():
            return self._finish_nan()
        for listener in self.listeners:
            listener.at_end(self, reason)
        return self._finished(reason)

    def _between_steps(self) -> FinishReason | None:
        """Pause, stop, time limit and the checkpoint timer; the reason to end, or None to go on."""
        tc, st, control = self.tc, self.state, self.control
        if control.paused:
            t0 = time.perf_counter()
            control.wait_while_paused()
            st.paused_sec += time.perf_counter() - t0
            st.add_overhead(t0)
        want_stop = control.should_stop()
        timed = tc.minutes is not None and tc.minutes > 0
        st.time_done = st.active() / (tc.minutes * 60.0) if timed else 0.0
        over_time = st.time_done >= 1.0
        ckpt_due = tc.checkpoint_minutes > 0 and st.active() - st.last_checkpoint_time >= tc.checkpoint_minutes * 60.0
        if self.dist.enabled:  # every rank acts on the same decision (rank 0's clock, anyone's stop)
            flags = torch.tensor([float(want_stop), float(over_time), float(ckpt_due and self.dist.is_main),
                                  st.time_done], device=self.flag_device, dtype=torch.float64)
            self.dist.all_reduce_max(flags)  # time_done: the furthest clock's, so every rank sets the same lr
            want_stop, over_time, ckpt_due = (bool(v) for v in flags[:3].tolist())
            st.time_done = float(flags[3])
        if want_stop or over_time:
            return FinishReason.STOPPED if want_stop else FinishReason.TIME_LIMIT
        if st.step >= self.total:
            return FinishReason.COMPLETED
        if ckpt_due and st.step > st.last_checkpoint_step and not self._checkpoint():
            return FinishReason.NAN
        return None

    def _after_step(self) -> bool:
        """Log, tell the listeners, checkpoint when due; False when a loss or a weight is not finite."""
        tc, step = self.tc, self.state.step
        if (step % tc.log_every == 0 or step == self.total) and self._log() is not None:
            return False
        for listener in self.listeners:
            listener.after_step(self)
        if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < self.total:
            return self._checkpoint()
        return True

    def _finished(self, reason: FinishReason) -> TrainFinished:
        st, tc = self.state, self.tc
        took = _fmt_duration(st.active())
        ck = Path(st.last_checkpoint).name if st.last_checkpoint else "none"
        of = "" if tc.steps is None else f" of {tc.steps:,}"
        message = {
            FinishReason.COMPLETED: f"Finished: the run is at step {st.step:,} ({took} in this session). Saved {ck}.",
            FinishReason.STOPPED: f"Stopped at step {st.step:,}{of}. Saved {ck}; resume to continue.",
            FinishReason.TIME_LIMIT: f"Time limit reached at step {st.step:,}. Saved {ck}; resume to continue.",
        }[reason]
        return TrainFinished(st.step, reason, message, st.last_checkpoint)

    # -- one step ---------------------------------------------------------------------------

    def _train_step(self) -> None:
        from ddpm_studio.engine.devices import autocast

        tc, p, k = self.tc, self.parts, self.state.step  # k: 0-based index of this step
        x0 = next(p.batches).to(self.device, non_blocking=True)  # (B_rank, C, H, W) in [-1, 1]
        B = x0.shape[0]
        # Algorithm 1, lines 3-4: t ~ Uniform({1..T}) (0-based here), eps ~ N(0, I), drawn from a
        # generator seeded with (seed, step, rank) so that resuming reproduces them exactly.
        self.generator.manual_seed(mix(tc.seed, k, self.dist.rank, STREAM_DIFFUSION))
        t = torch.randint(0, self.T, (B,), generator=self.generator, device=self.device)
        noise = torch.randn(x0.shape, generator=self.generator, device=self.device, dtype=x0.dtype)

        self.state.lr = learning_rate(tc, k, self.state.time_done)
        for group in p.optimizer.param_groups:
            group["lr"] = self.state.lr

        def forward_backward():
            with self._dropout_rng(k) if self.cfg.model.dropout > 0 else contextlib.nullcontext():
                p.train_model.train()
                with autocast(self.device, self.trainer.precision):
                    loss_b, t_b = p.diffusion.training_losses(p.train_model, x0, t=t, noise=noise)  # (B,), (B,)
                loss = loss_b.float().mean()  # Algorithm 1, line 5: gradient step on the mean loss
                p.optimizer.zero_grad(set_to_none=True)
                p.scaler.scale(loss).backward()
            return loss_b, t_b

        if self.compile_pending:  # the first step of a compiled network compiles it (forward and backward)
            try:
                loss_b, t = forward_backward()
            except Exception as e:  # any compiler failure: train on, uncompiled, and say so in the log
                log.warning("torch.compile failed (%s: %s); training continues uncompiled",
                            type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")
                p.train_model = getattr(p.train_model, "_orig_mod", p.train_model)
                self.trainer.compiled = False
                loss_b, t = forward_backward()
            self.compile_pending = False
        else:
            loss_b, t = forward_backward()
        p.scaler.unscale_(p.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, tc.grad_clip if tc.grad_clip > 0 else float("inf"))
        p.scaler.step(p.optimizer)
        p.scaler.update()
        with self.trainer._lock:
            p.ema.update(p.model, k + 1)
            self.trainer._step = k + 1
        self.stats.add(loss_b, t, self.T, grad_norm)
        self.state.images_seen += tc.batch_size

    def _dropout_rng(self, k: int):
        """Dropout draws from the global RNG: seed it per step inside a fork, leaving others' RNG alone."""
        cuda = self.device.type == "cuda"

        @contextlib.contextmanager
        def ctx():
            with torch.random.fork_rng(devices=[self.device.index or 0] if cuda else []):
                seed = mix(self.tc.seed, k, self.dist.rank, STREAM_DROPOUT)
                torch.manual_seed(seed)  # seeds CPU and the current CUDA device
                yield

        return ctx()

    # -- logging and checkpoints --------------------------------------------------------------

    def _log(self) -> int | None:
        """Tell the listeners the losses since the last log; returns the first bad step or None.

        Collective under torchrun: every rank calls it at the same steps.
        """
        tc, st = self.tc, self.state
        if not len(self.stats):
            return None
        first = st.step - len(self.stats) + 1  # step number (1-based) of the oldest pending loss
        d = self.stats.drain(self.dist)  # syncs with the device
        for i, v in enumerate(d["losses"]):
            if not math.isfinite(v):
                st.bad_step = first + i
                return st.bad_step
        for v in d["losses"]:
            st.loss_smooth = v if st.loss_smooth is None else SMOOTHING * st.loss_smooth + (1 - SMOOTHING) * v
        st.window_sum += sum(d["losses"])
        st.window_n += len(d["losses"])
        now = time.perf_counter()
        interval, steps = now - st.t_last_log - st.overhead_sec, st.steps_since_log
        st.t_last_log, st.overhead_sec, st.steps_since_log = now, 0.0, 0
        ips = tc.batch_size * steps / interval if interval > 0 and steps else 0.0
        left = None if tc.steps is None else tc.steps - st.step
        eta = left * interval / steps if left is not None and interval > 0 and steps else None
        if tc.minutes and eta is not None:
            eta = min(eta, max(0.0, tc.minutes * 60.0 - st.active()))
        m = StepMetrics(step=st.step, total_steps=tc.steps, loss=sum(d["losses"]) / len(d["losses"]),
                        loss_smooth=float(st.loss_smooth), grad_norm=d["grad_norm"], lr=st.lr,
                        images_per_sec=ips, elapsed_sec=st.active(), eta_sec=eta, bucket_loss=d["buckets"])
        for listener in self.listeners:
            listener.on_metrics(self, m)
        return None

    def _all_finite(self) -> bool:
        """Log pending losses, then check every weight; all ranks agree on the answer."""
        bad = self._log()
        p = self.parts
        finite = (bad is None and bool(torch.stack([torch.isfinite(w).all() for w in p.model.parameters()]).all())
                  and bool(torch.stack([torch.isfinite(w).all() for w in p.ema.module.parameters()]).all()))
        if not finite and bad is None:
            self.state.bad_step = self.state.step
        flag = torch.tensor([0.0 if finite else 1.0], device=self.flag_device)
        self.dist.all_reduce_max(flag)
        if flag.item() != 0.0 and finite:
            self.state.bad_step = self.state.step  # another rank saw it
        return flag.item() == 0.0

    def _checkpoint(self) -> bool:
        """Save a checkpoint (rank 0) if every loss and weight is finite.

        Returns False, saving nothing, when one is not: the last good checkpoint on disk is never
        replaced by a broken one.
        """
        st, t0 = self.state, time.perf_counter()
        if not self._all_finite():
            return False
        loss = st.window_sum / st.window_n if st.window_n else None
        healthy = loss is None or st.best_loss is None or loss <= max(HEALTHY_FACTOR * st.best_loss, HEALTHY_FLOOR)
        if healthy and loss is not None:
            st.best_loss = loss if st.best_loss is None else min(st.best_loss, loss)
        st.window_sum, st.window_n = 0.0, 0
        if self.dist.is_main:
            self._save(loss, healthy)
        st.last_checkpoint_step = st.step
        st.add_overhead(t0)
        st.last_checkpoint_time = st.active()
        return True

    def _save(self, loss: float | None = None, healthy: bool = True) -> None:
        p, st = self.parts, self.state
        state = {
            "format_version": ckpts.FORMAT_VERSION,
            "step": st.step,
            "optimizer": p.optimizer.state_dict(),
            "scaler": p.scaler.state_dict() if p.scaler.is_enabled() else None,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []},
            "counters": {"images_seen": st.images_seen,
                         "train_seconds": st.train_seconds_before + st.active(),
                         "loss_smooth": st.loss_smooth, "best_checkpoint_loss": st.best_loss},
        }
        # checks the free space first, pruning first if that makes the room; keeps the newest healthy one
        path = ckpts.save_checkpoint(self.trainer.run_dir, st.step, self.cfg, p.model.state_dict(),
                                     p.ema.module.state_dict(), state, loss=loss, healthy=healthy,
                                     keep=self.tc.keep_checkpoints)
        st.last_checkpoint = str(path)
        self.emit(CheckpointSaved(step=st.step, path=str(path)))

    def _finish_nan(self) -> TrainFinished:
        st, run_dir = self.state, self.trainer.run_dir
        bad_step = st.bad_step if st.bad_step is not None else st.step
        last = Path(st.last_checkpoint).name if st.last_checkpoint else None
        healthy = ckpts.newest_healthy(run_dir) if self.dist.is_main else None
        kept_path = st.last_checkpoint
        if healthy is not None and healthy.name != last:
            later = [p.name for p in ckpts.list_checkpoints(run_dir)
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
        return TrainFinished(max(st.start_step, bad_step - 1), FinishReason.NAN, msg, kept_path)


class MetricsLog(LoopListener):
    """Each log: a line in metrics.jsonl (rank 0) and a StepMetrics event."""

    def on_metrics(self, loop: Loop, m: StepMetrics) -> None:
        if loop.dist.is_main:
            rec = {"step": m.step, "loss": m.loss, "loss_smooth": m.loss_smooth, "grad_norm": m.grad_norm,
                   "lr": m.lr, "images_per_sec": round(m.images_per_sec, 2), "elapsed_sec": round(m.elapsed_sec, 3),
                   "bucket_loss": m.bucket_loss, "time": round(time.time(), 3)}
            runs.append_metrics(loop.trainer.run_dir, rec)
        loop.emit(m)


class Previews(LoopListener):
    """A preview grid from the EMA model every ``train.preview_every`` steps and at the end (rank 0).

    Sampled from a FIXED seed, so previews are comparable across steps: ``train.preview_sampler``
    (default DPM-Solver++ 2M) with ``train.preview_sampling_steps`` steps (default 20), the
    sampler's own spacing (``auto``), x_0 clipped.
    """

    def after_step(self, loop: Loop) -> None:
        every, step = loop.tc.preview_every, loop.state.step
        if loop.dist.is_main and every and step % every == 0 and step < loop.total:
            self.preview(loop)

    def at_end(self, loop: Loop, reason: FinishReason) -> None:
        # No closing preview when the clock ended the run: it costs seconds past the time asked for.
        completed = reason == FinishReason.COMPLETED
        if loop.dist.is_main and completed and loop.tc.preview_every and loop.state.step > loop.state.start_step:
            self.preview(loop)

    def preview(self, loop: Loop) -> None:
        from ddpm_studio.config import SamplingConfig
        from ddpm_studio.sampling.export import save_grid
        from ddpm_studio.sampling.service import to_uint8

        tc, m = loop.tc, loop.cfg.model
        t0 = time.perf_counter()
        generator = torch.Generator(device="cpu").manual_seed(mix(tc.seed, STREAM_PREVIEW))
        shape = (tc.preview_count, m.in_channels, m.image_size, m.image_size)
        sampling = SamplingConfig(sampler=tc.preview_sampler, steps=min(tc.preview_sampling_steps, loop.T), eta=0.0,
                                  clip_denoised=True, spacing="auto")
        last = None
        for last in loop.parts.diffusion.sample_progressive(loop.parts.ema.module, shape, sampling,
                                                            generator=generator, device=loop.device,
                                                            should_stop=loop.control.should_stop):
            pass
        loop.state.add_overhead(t0)
        if last is None or last.index != last.total - 1:
            return  # stopped in the middle: no preview
        images = to_uint8(last.x_t)
        try:
            save_grid(images, runs.preview_path(loop.trainer.run_dir, loop.state.step))
        except OSError:
            pass  # a preview that cannot be written is not worth stopping the training for
        loop.emit(PreviewReady(step=loop.state.step, images=images))


def _fmt_duration(sec: float) -> str:
    from ddpm_studio.durations import format_duration

    return format_duration(sec)
