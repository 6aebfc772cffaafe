"""The trainer: events at a bounded rate, the run folder, NaN handling, pause/stop, snapshots."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_studio.config import RunConfig
from ddpm_studio.artifacts import checkpoints as ck
from ddpm_studio.artifacts import runs
from ddpm_studio.training.events import (CheckpointSaved, PreviewReady, StepMetrics, TrainFinished,
                                         TrainStarted)
from ddpm_studio.training.trainer import TrainControl, Trainer
from training_support import one_thread, tiny_config, tiny_images  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_events_and_run_folder(tmp_path):
    cfg = tiny_config(steps=6, log_every=2, preview_every=3, preview_count=4, preview_sampling_steps=4,
                      checkpoint_every=2, keep_checkpoints=2)
    events = []
    done = Trainer(cfg, tmp_path, images=tiny_images()).run(on_event=events.append)
    assert isinstance(done, TrainFinished) and (done.reason, done.step) == ("completed", 6)
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "TrainStarted"
    metrics = [e for e in events if isinstance(e, StepMetrics)]
    assert [m.step for m in metrics] == [2, 4, 6]  # every log_every steps, not every step
    for m in metrics:
        assert np.isfinite(m.loss) and np.isfinite(m.loss_smooth) and m.grad_norm > 0
        assert len(m.bucket_loss) == 10 and any(b is not None for b in m.bucket_loss)
        assert m.images_per_sec > 0 and m.total_steps == 6
    assert metrics[0].lr == pytest.approx(1e-3 * 2 / 3)  # linear warm-up over 3 steps
    assert metrics[1].lr == pytest.approx(1e-3)
    assert metrics[-1].lr == pytest.approx(1e-3 * (1 / 6) / 0.5)  # the preset's cool-down over the last half
    previews = [e for e in events if isinstance(e, PreviewReady)]
    assert [p.step for p in previews] == [3, 6]  # every preview_every steps and at the end
    assert previews[0].images.shape == (4, 8, 8, 3) and previews[0].images.dtype == np.uint8
    saved = [e.step for e in events if isinstance(e, CheckpointSaved)]
    assert saved == [2, 4, 6]

    # run folder
    assert RunConfig.load(tmp_path / "config.json").to_dict() == ck.read_metadata(done.checkpoint)[1].to_dict()
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["dataset"]["fingerprint"] == "test-24-8-3-0" and info["seed"] == 0 and "torch" in info["versions"]
    assert [r["step"] for r in runs.read_metrics(tmp_path)] == [2, 4, 6]
    assert [ck.step_of(p) for p in ck.list_checkpoints(tmp_path)] == [4, 6]  # keep_checkpoints=2
    grids = sorted((tmp_path / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step_0000003.png", "step_0000006.png"]
    with Image.open(grids[0]) as im:
        assert im.size == (2 + 2 * 10, 2 + 2 * 10)  # 2x2 grid of 8 px tiles, 2 px padding


def test_channels_auto_come_from_the_images(tmp_path):
    cfg = tiny_config(steps=1)
    assert cfg.data.channels == "auto" and cfg.model.in_channels == 3
    Trainer(cfg, tmp_path, images=tiny_images(channels=1)).run()
    saved = RunConfig.load(tmp_path / "config.json")
    assert saved.model.in_channels == 1
    with pytest.raises(ValueError, match="data.channels is 3 but the images have 1"):
        cfg3 = tiny_config(steps=1)
        cfg3.data.channels = "3"
        Trainer(cfg3, tmp_path / "b", images=tiny_images(channels=1)).run()


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from ddpm_studio.engine.diffusion import GaussianDiffusion

    original = GaussianDiffusion.training_losses
    calls = []

    def losses_with_nan(self, model, x0, **kwargs):
        loss, t = original(self, model, x0, **kwargs)
        calls.append(1)
        if len(calls) == 7:  # step 7 produces a NaN loss
            loss = loss * float("nan")
        return loss, t

    monkeypatch.setattr(GaussianDiffusion, "training_losses", losses_with_nan)
    cfg = tiny_config(steps=20, checkpoint_every=4, log_every=5)
    done = Trainer(cfg, tmp_path, images=tiny_images()).run()
    assert done.reason == "nan"
    assert "NaN or infinite at step 7" in done.message and "step_0000004" in done.message
    assert done.checkpoint.endswith("step_0000004.safetensors")
    assert [ck.step_of(p) for p in ck.list_checkpoints(tmp_path)] == [4]  # nothing written after the NaN
    good = ck.load_checkpoint(done.checkpoint)
    assert all(torch.isfinite(v).all() for v in good.model_state.values())
    assert all(torch.isfinite(v).all() for v in good.ema_state.values())
    assert all(r["step"] < 7 for r in runs.read_metrics(tmp_path))


def test_stop_takes_effect_within_one_step(tmp_path):
    control = TrainControl()
    seen = []

    def on_event(e):
        if isinstance(e, StepMetrics):
            seen.append(e.step)
            if e.step == 3:
                control.stop()

    done = Trainer(tiny_config(steps=50), tmp_path, images=tiny_images()).run(control, on_event)
    assert (done.reason, done.step) == ("stopped", 3)
    assert seen == [1, 2, 3]
    assert done.checkpoint.endswith("step_0000003.safetensors")  # the stop saves where it is


def test_pause_blocks_between_steps_and_stop_works_while_paused(tmp_path):
    control = TrainControl()
    paused_at = threading.Event()
    steps = []

    def on_event(e):
        if isinstance(e, StepMetrics):
            steps.append(e.step)
            if e.step == 2:
                control.pause()
                paused_at.set()

    trainer = Trainer(tiny_config(steps=10_000), tmp_path, images=tiny_images())
    result = []
    thread = threading.Thread(target=lambda: result.append(trainer.run(control, on_event)))
    thread.start()
    assert paused_at.wait(60)
    time.sleep(0.3)
    assert control.paused and steps == [1, 2] and trainer._step == 2  # no step while paused
    snap = trainer.snapshot()  # sampling the model being trained, from another thread
    assert snap.step == 2 and next(snap.model.parameters()).device.type == "cpu"
    control.resume()
    deadline = time.time() + 30
    while len(steps) < 4 and time.time() < deadline:
        time.sleep(0.01)
    assert steps[-1] > 2  # resumed
    control.pause()
    time.sleep(0.1)
    control.stop()  # wakes the paused trainer
    thread.join(30)
    assert not thread.is_alive()
    assert result[0].reason == "stopped"
    assert result[0].step < 10_000


def test_time_limit_ends_with_a_checkpoint(tmp_path):
    done = Trainer(tiny_config(steps=1_000_000, minutes=0.01), tmp_path, images=tiny_images()).run()
    assert done.reason == "time_limit" and done.step > 0
    assert ck.step_of(ck.latest_checkpoint(tmp_path)) == done.step


def test_a_session_the_clock_ends_cools_its_learning_rate_down_by_the_clock(tmp_path):
    events = []
    cfg = tiny_config(steps=None, minutes=0.05, warmup_steps=0)  # 3 s; the preset cools down over the last half
    done = Trainer(cfg, tmp_path, images=tiny_images()).run(on_event=events.append)
    rates = [e.lr for e in events if isinstance(e, StepMetrics)]
    assert done.reason == "time_limit" and len(rates) > 10
    assert rates[0] == pytest.approx(1e-3)  # the first half of the time at the peak
    assert 0 <= rates[-1] < 0.5e-3  # the last step within the last quarter of the time
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_global_batch_must_divide_by_the_number_of_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match=r"train.batch_size \(4\) must be divisible by the number of processes \(3\)"):
        Trainer(tiny_config(), tmp_path, images=tiny_images()).run()
    assert not (tmp_path / "config.json").exists()


def test_started_event_reports_the_run(tmp_path):
    events = []
    Trainer(tiny_config(steps=1), tmp_path, images=tiny_images(n=10)).run(on_event=events.append)
    started = events[0]
    assert isinstance(started, TrainStarted)
    assert (started.start_step, started.total_steps, started.num_images, started.resumed) == (0, 1, 10, False)
    assert started.num_parameters > 1000 and started.device == "cpu"


def test_checkpoints_by_training_time(tmp_path):
    # checkpoint_every=0: only the clock (0.002 min = 0.12 s of training) and the end save
    events = []
    cfg = tiny_config(steps=40, checkpoint_minutes=0.002, keep_checkpoints=100)
    done = Trainer(cfg, tmp_path, images=tiny_images()).run(on_event=events.append)
    saved = [e.step for e in events if isinstance(e, CheckpointSaved)]
    assert done.reason == "completed" and saved[-1] == 40
    assert len(saved) >= 2 and all(0 < s < 40 for s in saved[:-1])  # at least one before the end


def test_previews_use_dpm_solver_with_20_steps_from_a_fixed_seed(tmp_path):
    """The last preview equals a DPM-Solver++ 2M, 20-step, trailing chain of the final EMA weights
    from the preview seed, and the same run trained again gives the same previews."""
    from ddpm_studio.config import SamplingConfig, TrainConfig
    from ddpm_studio.artifacts.loading import load_model
    from ddpm_studio.sampling.service import to_uint8
    from ddpm_studio.training.dist import STREAM_PREVIEW as _STREAM_PREVIEW
    from ddpm_studio.training.dist import mix as _mix

    assert (TrainConfig().preview_sampler, TrainConfig().preview_sampling_steps) == ("dpmpp-2m", 20)
    cfg = tiny_config(steps=4, preview_every=2, preview_count=3)
    cfg.diffusion.timesteps = 40  # more than 20, so the preview's step count is its own, not T
    runs_previews = []
    for name in ("a", "b"):
        events = []
        Trainer(cfg, tmp_path / name, images=tiny_images()).run(on_event=events.append)
        runs_previews.append([e for e in events if isinstance(e, PreviewReady)])
    a, b = runs_previews
    assert [p.step for p in a] == [2, 4]
    assert all(np.array_equal(p.images, q.images) for p, q in zip(a, b))

    loaded = load_model(tmp_path / "a", device="cpu")
    calls = []

    def model(x, t):
        calls.append(int(t[0]))
        return loaded.model(x, t)

    sampling = SamplingConfig(sampler="dpmpp-2m", steps=20, spacing="trailing", clip_denoised=True)
    g = torch.Generator().manual_seed(_mix(cfg.train.seed, _STREAM_PREVIEW))
    x0 = loaded.diffusion.sample(model, (3, 3, 8, 8), sampling, generator=g)
    assert len(calls) == 20 and calls[0] == 39
    assert np.abs(to_uint8(x0).astype(int) - a[-1].images.astype(int)).max() <= 1


def test_the_trainer_s_adamw_is_fused_on_a_cpu_and_steps_like_the_foreach_one():
    """make_adamw picks the fused kernel on a CPU (where this torch has one), and one step of it moves
    the weights as torch's foreach AdamW does, to float rounding."""
    from ddpm_studio.training.trainer import make_adamw

    torch.manual_seed(0)
    a = torch.nn.Linear(8, 4)
    b = torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    start = a.weight.detach().clone()
    fused = make_adamw(a.parameters(), torch.device("cpu"), lr=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW(b.parameters(), lr=1e-2, betas=(0.9, 0.999), weight_decay=0.1, foreach=True)
    assert fused.defaults["fused"] is True
    x = torch.randn(16, 8)
    for _ in range(3):
        for net, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    assert (a.weight - start).abs().max() > 1e-3  # the steps moved the weights
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a.bias, b.bias, rtol=1e-6, atol=1e-7)
