"""Resume: N steps straight == N/2 + resume + N/2, bit for bit on CPU."""

from __future__ import annotations

import pytest
import torch

from ddpm_studio.artifacts import checkpoints as ck
from ddpm_studio.artifacts import runs
from ddpm_studio.training.events import TrainStarted
from ddpm_studio.training.trainer import Trainer
from training_support import one_thread, tiny_config, tiny_images  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _final(run_dir):
    return ck.load_checkpoint(ck.latest_checkpoint(run_dir))


def _constant_rate(steps: int, **options):
    """tiny_config without the preset's cool-down. Extending a finished run moves the end its cool-down aims at,
    so only at a constant rate are N steps + M more the same schedule as N + M straight."""
    return tiny_config(steps=steps, lr_cooldown=0.0, **options)


def test_resume_gives_identical_weights_and_extends_a_finished_run(tmp_path):
    images = tiny_images()
    # dropout > 0 so the dropout RNG is part of what must be reproduced
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert Trainer(_constant_rate(6, dropout=0.1), straight, images=images).run().step == 6

    first = Trainer(_constant_rate(3, dropout=0.1), split, images=images).run()
    assert (first.reason, first.step) == ("completed", 3)
    again = Trainer(_constant_rate(3, dropout=0.1), split, images=images, resume=True).run()
    assert again.reason == "already_complete" and "already at step 3" in again.message
    events = []
    extended = Trainer(_constant_rate(6, dropout=0.1), split, images=images, resume=True).run(on_event=events.append)
    assert (extended.reason, extended.step) == ("completed", 6)
    started = [e for e in events if isinstance(e, TrainStarted)][0]
    assert started.resumed and started.start_step == 3

    a, b = _final(straight), _final(split)
    assert a.step == b.step == 6
    for name in a.model_state:
        assert torch.equal(a.model_state[name], b.model_state[name]), name
    for name in a.ema_state:
        assert torch.equal(a.ema_state[name], b.ema_state[name]), name
    sa, sb = a.train_state["optimizer"]["state"], b.train_state["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"])
    # metrics.jsonl: one line per step in both, with the same losses
    la = [r["loss"] for r in runs.read_metrics(straight)]
    lb = [r["loss"] for r in runs.read_metrics(split)]
    assert len(la) == 6 and la == lb


def test_a_run_resumed_inside_its_cool_down_ends_where_a_straight_run_does(tmp_path):
    images = tiny_images()
    straight, split = tmp_path / "straight", tmp_path / "split"
    Trainer(tiny_config(steps=6, lr_cooldown=0.5), straight, images=images).run()
    Trainer(tiny_config(steps=6, lr_cooldown=0.5, checkpoint_every=3), split, images=images).run()
    for path in ck.checkpoint_paths(split, 6):  # as if the run had crashed after step 3's checkpoint
        path.unlink()
    resumed = Trainer(tiny_config(steps=6, lr_cooldown=0.5), split, images=images, resume=True).run()
    assert resumed.step == 6
    rates = [r["lr"] for r in runs.read_metrics(split)]
    assert rates[2] == pytest.approx(1e-3) and rates[3:] == pytest.approx([1e-3 * n / 3 for n in (3, 2, 1)])
    a, b = _final(straight), _final(split)
    for name in a.model_state:
        assert torch.equal(a.model_state[name], b.model_state[name]), name
    assert rates == [r["lr"] for r in runs.read_metrics(straight)]


def test_resume_falls_back_to_the_previous_good_checkpoint(tmp_path):
    images = tiny_images()
    cfg = tiny_config(steps=4, checkpoint_every=2, keep_checkpoints=5)
    assert Trainer(cfg, tmp_path, images=images).run().step == 4
    newest = ck.checkpoint_paths(tmp_path, 4)[0]
    newest.write_bytes(newest.read_bytes()[:-100])  # a half-written file, as after a crash
    # metrics past the checkpoint we fall back to are trimmed, then re-logged
    assert [r["step"] for r in runs.read_metrics(tmp_path)] == [1, 2, 3, 4]
    events = []
    done = Trainer(tiny_config(steps=5, checkpoint_every=2, keep_checkpoints=5), tmp_path, images=images,
                   resume=True).run(on_event=events.append)
    assert done.reason == "completed" and done.step == 5
    started = [e for e in events if isinstance(e, TrainStarted)][0]
    assert started.start_step == 2
    assert any("step_0000004" in n for n in started.notes)
    assert [r["step"] for r in runs.read_metrics(tmp_path)] == [1, 2, 3, 4, 5]


def test_resume_without_checkpoints_and_fresh_run_over_existing_are_refused(tmp_path):
    import pytest

    images = tiny_images()
    with pytest.raises(ck.CheckpointError, match="nothing to resume"):
        Trainer(tiny_config(), tmp_path / "empty", images=images, resume=True).run()
    assert Trainer(tiny_config(steps=1), tmp_path / "run", images=images).run().step == 1
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(tiny_config(steps=2), tmp_path / "run", images=images).run()


def test_a_bf16_cpu_run_trains_checkpoints_and_resumes_exactly(tmp_path, monkeypatch):
    """bf16 autocast on a CPU (forced on, so the test runs on any CPU): the weights, the EMA and the
    optimizer state stay fp32, and N straight steps equal N/2 + resume + N/2 bit for bit."""
    monkeypatch.setenv("DDPM_STUDIO_CPU_BF16", "1")
    images = tiny_images()
    straight, split = tmp_path / "straight", tmp_path / "split"
    events = []
    Trainer(_constant_rate(4, precision="bf16"), straight, images=images).run(on_event=events.append)
    started = [e for e in events if isinstance(e, TrainStarted)][0]
    assert started.precision == "bf16" and started.notes == []
    assert runs.read_run_info(straight)["sessions"][0]["precision"] == "bf16"
    Trainer(_constant_rate(2, precision="bf16"), split, images=images).run()
    Trainer(_constant_rate(4, precision="bf16"), split, images=images, resume=True).run()
    a, b = _final(straight), _final(split)
    assert all(v.dtype == torch.float32 for v in a.model_state.values())
    assert all(v.dtype == torch.float32 for v in a.ema_state.values())
    for name in a.model_state:
        assert torch.equal(a.model_state[name], b.model_state[name]), name
    for name in a.ema_state:
        assert torch.equal(a.ema_state[name], b.ema_state[name]), name
    sa = a.train_state["optimizer"]["state"]
    assert all(s["exp_avg_sq"].dtype == torch.float32 for s in sa.values())
    # and bf16 really changed the arithmetic: an fp32 run of the same config ends elsewhere
    Trainer(_constant_rate(4, precision="fp32"), tmp_path / "fp32", images=images).run()
    c = _final(tmp_path / "fp32")
    assert any(not torch.equal(a.model_state[n], c.model_state[n]) for n in a.model_state)
    assert [r["loss"] for r in runs.read_metrics(straight)] == [r["loss"] for r in runs.read_metrics(split)]


def test_bf16_on_a_cpu_without_it_says_so_and_trains_in_fp32(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_STUDIO_CPU_BF16", "0")
    events = []
    done = Trainer(tiny_config(steps=2, precision="bf16"), tmp_path, images=tiny_images()).run(on_event=events.append)
    assert done.reason == "completed"
    started = [e for e in events if isinstance(e, TrainStarted)][0]
    assert started.precision == "fp32"
    assert any("no native bf16" in n and "uses fp32" in n for n in started.notes)
    # auto quietly picks fp32 there
    events.clear()
    Trainer(tiny_config(steps=1), tmp_path / "auto", images=tiny_images()).run(on_event=events.append)
    started = [e for e in events if isinstance(e, TrainStarted)][0]
    assert started.precision == "fp32" and started.notes == []
