"""Sampling panel: live reverse chain, scrubbing, export, cancel — on a micro model trained for two steps."""

from __future__ import annotations


import numpy as np
import pytest

pytest.importorskip("PySide6")

from PIL import Image  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402

from ddpm_studio.config import DataConfig, RunConfig  # noqa: E402
from ddpm_studio.gui import testing  # noqa: E402
from ddpm_studio.gui.workers import running_tasks  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run of the micro network (T = 1000) with one checkpoint, made by the training service."""
    import torch

    from ddpm_studio.data import load_images
    from ddpm_studio.training.trainer import Trainer

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("gui_sampling")
    folder = testing.write_image_folder(base / "imgs", count=8, size=16)
    images = load_images(DataConfig(folder=str(folder), image_size=16), use_cache=False)
    ov = testing.micro_overrides(steps=2, timesteps=1000)
    cfg = RunConfig.from_preset("tiny", data=dict(folder=str(folder), image_size=16), **ov)
    out = base / "run"
    result = Trainer(cfg, out, images=images).run()
    assert result.reason == "completed"
    return out


@pytest.fixture
def window(window):
    window.tabs.setCurrentWidget(window.sampling_panel)
    return window


def generate(qtbot, sp, timeout=60_000):
    with qtbot.waitSignal(sp.generation_finished, timeout=timeout) as blocker:
        qtbot.mouseClick(sp.generate_button, Qt.MouseButton.LeftButton)
    return blocker.args[0]


def test_ddim_every_frame_scrub_and_keys(qtbot, window, run_dir):
    sp = window.sampling_panel
    assert sp.open_model(str(run_dir))
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("ddim"))
    sp.steps_spin.setValue(10)
    sp.num_spin.setValue(4)
    result = generate(qtbot, sp)
    assert result is not None and result.images.shape == (4, 16, 16, 3)
    assert sp.frames_received == 10 and len(sp.frames) == 10  # every step, none dropped
    ts = [f.t for f in sp.frames]
    assert ts == sorted(ts, reverse=True) and len(set(ts)) == 10 and ts[0] == 999  # trailing: from pure noise
    assert sp.slider.maximum() == 9 and sp.slider.value() == 9  # followed the chain live
    assert np.array_equal(sp.canvas.current()[0], sp.frames[-1].xt)
    # the final frame's x_t is the sample grid
    assert np.array_equal(sp.frames[-1].xt, result.grid)

    shown = []
    for i in (0, 4, 7):  # scrub to three timesteps
        sp.slider.setValue(i)
        xt, x0 = sp.canvas.current()
        shown.append(xt.copy())
        assert np.array_equal(xt, sp.frames[i].xt) and np.array_equal(x0, sp.frames[i].x0)
        assert sp.schedule_plot.marked_t == sp.frames[i].t
        assert f"t = {sp.frames[i].t}" in sp.viewer.step_label.text()
    assert not np.array_equal(shown[0], shown[1]) and not np.array_equal(shown[1], shown[2])

    sp.viewer.setFocus()
    qtbot.keyClick(sp.viewer, Qt.Key.Key_Left)
    assert sp.slider.value() == 6
    qtbot.keyClick(sp.viewer, Qt.Key.Key_Right)
    qtbot.keyClick(sp.viewer, Qt.Key.Key_Right)
    assert sp.slider.value() == 8
    # Play runs to the end of the chain and stops
    sp.slider.setValue(0)
    qtbot.mouseClick(sp.play_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not sp.play_button.isChecked(), timeout=10_000)
    assert sp.slider.value() == 9


def test_export_png_and_gif(qtbot, window, run_dir, tmp_path):
    sp = window.sampling_panel
    sp.open_model(str(run_dir))
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("ddim"))
    sp.steps_spin.setValue(10)
    sp.num_spin.setValue(4)
    result = generate(qtbot, sp)
    grid_h, grid_w, _ = result.grid.shape  # 2 x 2 tiles of 16 px with 2 px padding = 38 px
    assert (grid_h, grid_w) == (38, 38)
    sp.scale_spin.setValue(3)

    # current frame via the button, with the save dialog answered by the "user"
    sp.slider.setValue(5)
    frame_path = tmp_path / "frame.png"
    sp.ask_save_path = lambda title, filt, default: str(frame_path)
    with qtbot.waitSignal(sp.export_finished, timeout=30_000):
        qtbot.mouseClick(sp.export_frame_button, Qt.MouseButton.LeftButton)
    with Image.open(frame_path) as im:
        assert im.size == ((2 * grid_w + 4) * 3, grid_h * 3)  # x_t | gap | x0, upscaled 3x

    grid_path = tmp_path / "samples.png"
    with qtbot.waitSignal(sp.export_finished, timeout=30_000):
        assert sp.export_samples(str(grid_path), per_image=False)
    with Image.open(grid_path) as im:
        assert im.size == (grid_w * 3, grid_h * 3)
        assert np.array_equal(np.asarray(im.convert("RGB"))[::3, ::3], result.grid)

    each = tmp_path / "each"
    with qtbot.waitSignal(sp.export_finished, timeout=30_000) as blocker:
        assert sp.export_samples(str(each), per_image=True)
    files = sorted(each.glob("*.png"))
    assert len(files) == 4 and len(blocker.args[0]) == 4
    with Image.open(files[0]) as im:
        assert im.size == (48, 48)

    gif = tmp_path / "chain.gif"
    sp.gif_stride_spin.setValue(3)  # frames 0, 3, 6, 9
    sp.gif_fps_spin.setValue(10)
    sp.gif_hold_spin.setValue(1.0)
    sp.ask_save_path = lambda title, filt, default: str(gif)
    with qtbot.waitSignal(sp.export_finished, timeout=30_000):
        qtbot.mouseClick(sp.export_gif_button, Qt.MouseButton.LeftButton)
    with Image.open(gif) as im:
        assert im.size == (grid_w * 3, grid_h * 3)
        assert im.n_frames == 4
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
    assert durations[0] == 100 and durations[-1] >= 1000  # 10 fps, the last frame held
    assert window.errors == []


def test_cancel_after_first_frame(qtbot, window, run_dir):
    sp = window.sampling_panel
    sp.open_model(str(run_dir))
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("ddpm"))  # all 1000 steps
    sp.num_spin.setValue(2)
    cancelled_at = []

    def on_items(items):  # the first batch may be the model-ready note alone: cancel once a frame is in
        if not cancelled_at and sp.frames:
            cancelled_at.append(len(sp.frames))
            qtbot.mouseClick(sp.cancel_button, Qt.MouseButton.LeftButton)

    with qtbot.waitSignal(sp.generation_finished, timeout=60_000) as blocker:
        qtbot.mouseClick(sp.generate_button, Qt.MouseButton.LeftButton)
        sp.task.items.connect(on_items)
    assert blocker.args[0] is None and sp.result is None
    qtbot.waitUntil(lambda: not sp.is_running(), timeout=10_000)
    # it stopped early (the last frame is not the chain's end), and the frames recorded by the cancel remain
    assert len(sp.frames) >= cancelled_at[0] and sp.frames[-1].index < sp.frames[-1].total - 1
    assert "Cancelled" in sp.progress.label.text()
    assert sp.generate_button.isEnabled()
    # the model's read (load and digest of its weights, for remembered tunings) may still be finishing
    qtbot.waitUntil(lambda: running_tasks() == [], timeout=10_000)
    assert window.errors == []


def test_sampler_list_explains_each_sampler_and_sets_its_step_count(qtbot, window, run_dir):
    from ddpm_studio.config import SAMPLER_INFO, SAMPLERS

    sp = window.sampling_panel
    combo = sp.sampler_combo
    assert [combo.itemData(i) for i in range(combo.count())] == list(SAMPLERS)
    assert combo.currentData() == "dpmpp-2m" and sp.steps_spin.value() == 20  # the default: fast
    for i, name in enumerate(SAMPLERS):
        assert combo.itemData(i, Qt.ItemDataRole.ToolTipRole) == SAMPLER_INFO[name]["hint"]
    combo.setCurrentIndex(combo.findData("ddim"))
    assert sp.steps_spin.value() == 50 and sp.eta_spin.isEnabled() and sp.spacing_combo.isEnabled()
    assert sp.sampler_hint.text() == SAMPLER_INFO["ddim"]["hint"]
    combo.setCurrentIndex(combo.findData("ddpm"))
    assert not sp.steps_spin.isEnabled() and not sp.spacing_combo.isEnabled() and sp.variance_combo.isEnabled()
    combo.setCurrentIndex(combo.findData("dpmpp-2m-sde"))
    assert sp.steps_spin.value() == 20 and not sp.eta_spin.isEnabled() and "noise" in sp.sampler_hint.text()

    # the spacing chooser and the step count reach the chain
    assert sp.open_model(str(run_dir))
    sp.spacing_combo.setCurrentIndex(sp.spacing_combo.findData("leading"))
    sp.steps_spin.setValue(6)
    sp.num_spin.setValue(2)
    assert sp.sampling_config().spacing == "leading"
    result = generate(qtbot, sp)
    # DPM-Solver++'s leading spacing: i * (1000 // 7) for i = 6 .. 1
    assert result is not None and [f.t for f in sp.frames] == [852, 710, 568, 426, 284, 142]

    # the default spacing, auto, is the sampler's own: log-SNR for DPM-Solver++ (the run's linear schedule)
    sp.spacing_combo.setCurrentIndex(sp.spacing_combo.findData("auto"))
    assert sp.spacing_combo.currentText() == "Auto (the sampler's own)"
    assert sp.spacing_combo.itemData(sp.spacing_combo.currentIndex(), Qt.ItemDataRole.ToolTipRole).startswith(
        "Each sampler's best: log-SNR for DPM-Solver++")
    result = generate(qtbot, sp)
    assert result is not None and [f.t for f in sp.frames] == [999, 824, 603, 302, 73, 11]  # trailing: 999, 832, ...


def test_tune_fills_the_timesteps_generate_walks_them_and_a_new_step_count_clears_them(qtbot, window, run_dir,
                                                                                        tmp_path):
    sp = window.sampling_panel
    assert sp.open_model(str(run_dir))
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("ddpm"))
    assert not sp.tune_button.isEnabled() and not sp.timesteps_edit.isEnabled()  # DDPM draws fresh noise
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("unipc"))
    sp.steps_spin.setValue(3)
    sp.num_spin.setValue(2)
    sp.tune_images = 8
    assert sp.tune_button.isEnabled()
    qtbot.mouseClick(sp.tune_button, Qt.MouseButton.LeftButton)
    assert not sp.generate_button.isEnabled()  # one job at a time
    qtbot.waitUntil(lambda: sp.tune_task is None and sp.timesteps_edit.text() != "", timeout=60_000)
    assert sp.generate_button.isEnabled()
    tuned = [int(t) for t in sp.timesteps_edit.text().split(",")]
    assert len(tuned) == 3 and tuned[0] == 999 and "closer to a 50-step chain" in sp.tune_note.text()
    assert sp.sampling_config().timesteps == tuple(tuned)
    window.grab().save(str(tmp_path / "tuned.png"))
    generate(qtbot, sp)
    assert [f.t for f in sp.frames] == tuned  # Generate walked the tuned timesteps
    sp.steps_spin.setValue(4)
    assert sp.timesteps_edit.text() == "" and "tuned for 3 steps" in sp.tune_note.text()
    assert sp.sampling_config().timesteps is None


def _exported(run, folder):
    """``run`` written as a diffusers folder (the same weights, no run around them)."""
    from ddpm_studio.cli import main

    assert main(["export", "--run", str(run), "--format", "diffusers", "--out", str(folder)]) == 0
    return folder


def _ready_to_tune(sp, path) -> None:
    """``path`` opened, UniPC at 3 steps chosen, Tune on 8 chains."""
    assert sp.open_model(str(path))
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("unipc"))
    sp.steps_spin.setValue(3)
    sp.tune_images = 8


def test_tune_on_a_model_without_a_run_checks_its_last_step_against_the_images_open_in_the_dataset_panel(
        qtbot, window, run_dir, tmp_path):
    sp = window.sampling_panel
    _ready_to_tune(sp, _exported(run_dir, tmp_path / "diffusers"))

    def tune() -> str:
        qtbot.mouseClick(sp.tune_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: sp.tune_task is None and sp.timesteps_edit.text() != "", timeout=60_000)
        return sp.tune_note.text()

    assert window.state.images is None
    note = tune()
    assert "Last step not checked: not a run folder" in note and "open them in the Dataset panel" in note
    assert window.dataset_panel.load_paths([str(run_dir.parent / "imgs")])
    qtbot.waitUntil(lambda: window.state.images is not None, timeout=30_000)
    assert tune().endswith("Last step checked against the images open in the Dataset panel.")
    window.grab().save(str(tmp_path / "tuned_diffusers.png"))


def test_a_tune_is_remembered_and_put_back_when_the_model_sampler_and_steps_come_back(qtbot, window, run_dir,
                                                                                       tmp_path):
    sp = window.sampling_panel

    def open_and_read(path) -> None:
        with qtbot.waitSignal(sp.model_read, timeout=30_000):
            assert sp.open_model(str(path))

    open_and_read(run_dir)
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("unipc"))
    sp.steps_spin.setValue(3)
    assert sp.timesteps_edit.text() == ""  # nothing tuned yet
    assert sp.tune_note.text().startswith("Not tuned for this model yet: Tune fits these steps")
    sp.tune_images = 8
    qtbot.mouseClick(sp.tune_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: sp.tune_task is None and sp.timesteps_edit.text() != "", timeout=60_000)
    tuned = sp.timesteps_edit.text()
    sp.steps_spin.setValue(4)
    assert sp.timesteps_edit.text() == ""  # tuned for 3 steps
    sp.steps_spin.setValue(3)
    assert sp.timesteps_edit.text() == tuned and sp.tune_note.text().startswith("Restored from this model's Tune of")
    assert sp.tune_note.toolTip().startswith("Tuned")  # the tuning's own note
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("dpmpp-2m"))
    assert sp.timesteps_edit.text() == ""  # another sampler
    assert "another sampler" in sp.tune_note.text()  # the hint does not hide why the field was cleared
    open_and_read(_exported(run_dir, tmp_path / "diffusers"))  # the same weights: the tuning is found again
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("unipc"))
    sp.steps_spin.setValue(3)
    assert sp.timesteps_edit.text() == tuned and "Restored" in sp.tune_note.text()
    window.grab().save(str(tmp_path / "restored.png"))
    generate(qtbot, sp)
    assert ",".join(str(f.t) for f in sp.frames) == tuned.replace(" ", "")


def test_a_tune_that_finishes_after_another_model_was_opened_is_not_applied(qtbot, window, run_dir, tmp_path):
    folder = _exported(run_dir, tmp_path / "other")
    sp = window.sampling_panel
    _ready_to_tune(sp, run_dir)
    assert sp.tune_steps()
    assert sp.open_model(str(folder))  # while the Tune runs
    qtbot.waitUntil(lambda: sp.tune_task is None, timeout=60_000)
    assert "model no longer chosen; not applied" in sp.progress.label.text()
    # the export has the run's weights: the field stays empty, or holds what the store gave back when it read the
    # folder after the Tune had written it; never a list applied from the finished job
    assert sp.timesteps_edit.text() == "" or sp.tune_note.text().startswith("Restored from this model's Tune")


def test_a_forced_progress_message_is_not_dropped_by_the_rate_limit():
    import threading

    from ddpm_studio.gui.workers import TaskState

    sent = []

    class Signal:
        def emit(self, *args):
            sent.append(args)

    worker = type("FakeWorker", (), {"progress": Signal()})()
    state = TaskState(worker, threading.Event(), max_rate=30)
    state.progress(1, 0, "chain 1 tried")
    state.progress(2, 0, "chain 2 tried")  # within 0.1 s of the last message: dropped
    state.progress(0, 0, "Checking the last step…", force=True)  # the start of a long silent stretch: kept
    assert [m for *_, m in sent] == ["chain 1 tried", "Checking the last step…"]
