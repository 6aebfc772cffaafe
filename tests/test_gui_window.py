"""The real window driven as a user would: drops, training controls, closing, bad input.

Tiny images (16 px), a micro network and a handful of steps keep this quick on two cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import Qt  # noqa: E402

from ddpm_studio.gui import testing  # noqa: E402
from ddpm_studio.gui.main_window import MainWindow  # noqa: E402
from ddpm_studio.gui.workers import running_tasks  # noqa: E402





def load_folder(qtbot, w: MainWindow, folder: Path, size: int = 16) -> None:
    dp = w.dataset_panel
    dp.size_combo.setCurrentIndex(dp.size_combo.findData(size))
    with qtbot.waitSignal(dp.loaded, timeout=30_000):
        assert testing.drop_paths(dp.drop_zone, [folder])


def test_drop_folder_shows_thumbnails(qtbot, window, tmp_path):
    folder = testing.write_image_folder(tmp_path / "imgs", count=12, size=20)
    load_folder(qtbot, window, folder)
    dp = window.dataset_panel
    assert dp.grid.count() == 12
    assert "12 images" in dp.summary.text() and "16 × 16" in dp.summary.text() and "RGB" in dp.summary.text()
    assert window.state.images.images.shape == (12, 16, 16, 3)
    # the icons are built on demand from the decoded pixels
    icon = dp.grid.model().data(dp.grid.model().index(0), Qt.ItemDataRole.DecorationRole)
    assert not icon.isNull()
    assert window.errors == []


def test_drop_bad_files_reports_not_crashes(qtbot, window, tmp_path):
    good = testing.write_image_folder(tmp_path / "good", count=5)
    load_folder(qtbot, window, good)
    bad = testing.write_bad_folder(tmp_path / "bad")
    dp = window.dataset_panel
    with qtbot.waitSignal(dp.load_failed, timeout=30_000) as blocker:
        assert testing.drop_paths(dp.drop_zone, [bad])
    message = blocker.args[0]
    assert "bad" in message  # names the folder
    assert window.errors and window.errors[-1][0] == message
    assert window.error_box is not None and window.error_box.text() == message
    assert dp.grid.count() == 5  # the previous images are kept
    # a mixed folder loads the good files and lists the bad ones with reasons
    testing.write_image_folder(bad, count=3)
    with qtbot.waitSignal(dp.loaded, timeout=30_000):
        testing.drop_paths(dp.drop_zone, [bad])
    assert dp.grid.count() == 3
    assert dp.skipped.topLevelItemCount() == 3
    reasons = {dp.skipped.topLevelItem(i).text(0).split("/")[-1]: dp.skipped.topLevelItem(i).text(1)
               for i in range(3)}
    assert set(reasons) == {"empty.png", "notes.jpg", "cut.png"} and all(reasons.values())


def test_invalid_input_shows_message_and_starts_no_thread(qtbot, window, tmp_path):
    tp = window.training_panel
    assert tp.start() is False  # no images yet
    assert "no images" in window.errors[-1][0]
    assert running_tasks() == [] and tp.task is None
    assert window.dataset_panel.load_paths([str(tmp_path / "missing")]) is False
    assert "does not exist" in window.errors[-1][0] and running_tasks() == []
    load_folder(qtbot, window, testing.write_image_folder(tmp_path / "imgs", count=4))
    tp.overrides = testing.micro_overrides()
    tp.overrides["train"]["batch_size"] = 0
    qtbot.mouseClick(tp.start_button, Qt.MouseButton.LeftButton)
    assert "train.batch_size" in window.errors[-1][0]
    assert tp.task is None and running_tasks() == []
    sp = window.sampling_panel
    assert not sp.generate_button.isEnabled()  # nothing to sample from yet
    window.generate_action.trigger()  # Ctrl+G still answers, in words
    assert "Cannot generate" in window.errors[-1][0] and sp.task is None and running_tasks() == []


def wait_until(qtbot, cond, timeout=30_000):
    qtbot.waitUntil(cond, timeout=timeout)


def test_train_pause_resume_stop_then_sample_the_live_model(qtbot, window, tmp_path):
    load_folder(qtbot, window, testing.write_image_folder(tmp_path / "imgs", count=8))
    tp = window.training_panel
    window.tabs.setCurrentWidget(tp)
    tp.apply_preset("tiny")
    tp.overrides = testing.micro_overrides(steps=100_000)
    qtbot.mouseClick(tp.start_button, Qt.MouseButton.LeftButton)
    assert tp.is_running() and not tp.start_button.isEnabled()
    wait_until(qtbot, lambda: tp.loss_plot.num_points >= 3)
    tp.loss_plot.redraw()
    assert tp.loss_plot.displayed_points() >= 3  # points on the plot
    assert "step" in tp.stats.text() and "images/s" in tp.stats.text()

    qtbot.mouseClick(tp.pause_button, Qt.MouseButton.LeftButton)
    assert tp.pause_button.text() == "Resume" and tp.control.paused
    # the step in flight when Pause was clicked may still report; after that, nothing trains
    settled = False
    for _ in range(20):
        n_paused = tp.metrics_received
        qtbot.wait(400)
        if tp.metrics_received == n_paused:
            settled = True
            break
    assert settled, "training kept reporting steps while paused"
    qtbot.wait(600)
    assert tp.metrics_received == n_paused
    assert "paused" in window.activity_label.text().lower()

    qtbot.mouseClick(tp.pause_button, Qt.MouseButton.LeftButton)
    assert tp.pause_button.text() == "Pause"
    wait_until(qtbot, lambda: tp.metrics_received >= n_paused + 2)

    with qtbot.waitSignal(tp.training_finished, timeout=60_000) as blocker:
        qtbot.mouseClick(tp.stop_button, Qt.MouseButton.LeftButton)
    result = blocker.args[0]
    assert result.reason == "stopped" and Path(result.checkpoint).is_file()
    wait_until(qtbot, lambda: not tp.is_running())
    assert tp.start_button.isEnabled() and not tp.stop_button.isEnabled()

    # sample from the model that was being trained (its EMA snapshot)
    sp = window.sampling_panel
    sp.src_trained.setChecked(True)
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("ddim"))
    sp.steps_spin.setValue(3)
    sp.num_spin.setValue(2)
    with qtbot.waitSignal(sp.generation_finished, timeout=60_000) as blocker:
        qtbot.mouseClick(sp.generate_button, Qt.MouseButton.LeftButton)
    assert blocker.args[0] is not None and blocker.args[0].images.shape == (2, 16, 16, 3)
    assert len(sp.frames) == 3


def test_close_during_training_asks_stops_and_keeps_checkpoint(qtbot, tmp_path):
    w = MainWindow(load_on_start=False, probe_device=False)
    qtbot.addWidget(w)
    w.show()
    load_folder(qtbot, w, testing.write_image_folder(tmp_path / "imgs", count=8))
    tp = w.training_panel
    tp.overrides = testing.micro_overrides(steps=100_000)
    assert tp.start()
    wait_until(qtbot, lambda: tp.metrics_received >= 2)
    run_dir = Path(tp.run_dir)
    asked = []
    w.confirm = lambda q: asked.append(q) or False  # the user says Cancel: the window stays
    w.close()
    assert asked and w.isVisible() and tp.is_running()
    w.confirm = lambda q: asked.append(q) or True
    w.close()
    assert len(asked) == 2 and "training" in asked[-1]
    assert not w.isVisible()
    assert running_tasks() == []
    assert "waiting for training to save its checkpoint" in w.closing_message  # said what closing waited for
    assert list((run_dir / "checkpoints").glob("step_*.safetensors"))  # the last checkpoint is kept
