"""What a newcomer hit in the window in the first hour (issue 14), driven through the real widgets.

Screenshots of every panel at the minimum window size and at 1600 x 1000 go to the test's tmp
folder (and to $DDPM_STUDIO_SHOTS when it is set, to look at them).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QApplication, QDialog, QScrollArea  # noqa: E402

from ddpm_studio import __version__  # noqa: E402
from ddpm_studio.config import DataConfig, RunConfig  # noqa: E402
from ddpm_studio.gui import settings as settings_mod  # noqa: E402
from ddpm_studio.gui import testing  # noqa: E402
from ddpm_studio.gui.main_window import MIN_SIZE, MainWindow  # noqa: E402
from ddpm_studio.gui.widgets import plotting  # noqa: E402
from ddpm_studio.gui.widgets.open_model_dialog import OpenModelDialog  # noqa: E402
from ddpm_studio.gui.workers import running_tasks  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A micro-network run (T = 1000, 16 px) with one checkpoint at step 2."""
    import torch

    from ddpm_studio.data import load_images
    from ddpm_studio.training.trainer import Trainer

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("firsthour")
    folder = testing.write_image_folder(base / "imgs", count=8, size=16)
    images = load_images(DataConfig(folder=str(folder), image_size=16), use_cache=False)
    cfg = RunConfig.from_preset("tiny", data=dict(folder=str(folder), image_size=16),
                                **testing.micro_overrides(steps=2, timesteps=1000))
    out = base / "runs" / "run"
    assert Trainer(cfg, out, images=images).run().reason == "completed"
    return out


def load_folder(qtbot, w, folder: Path, size: int = 16) -> None:
    dp = w.dataset_panel
    dp.size_combo.setCurrentIndex(dp.size_combo.findData(size))
    with qtbot.waitSignal(dp.loaded, timeout=30_000):
        assert dp.load_paths([str(folder)])


def open_and_read(qtbot, sp, path) -> None:
    with qtbot.waitSignal(sp.model_read, timeout=30_000):
        assert sp.open_model(str(path))


def save_shots(w, tmp_path: Path, suffix: str) -> list[Path]:
    folders = [tmp_path] + ([Path(os.environ["DDPM_STUDIO_SHOTS"])] if os.environ.get("DDPM_STUDIO_SHOTS") else [])
    written = []
    for i, name in enumerate(("dataset", "training", "sampling", "forward")):
        w.tabs.setCurrentIndex(i)
        for _ in range(5):
            QApplication.processEvents()
        image = w.grab()
        for f in folders:
            f.mkdir(parents=True, exist_ok=True)
            p = f / f"{name}_{suffix}.png"
            assert image.save(str(p))
            written.append(p)
    return written


# -- 3: the minimum size ------------------------------------------------------------------------------
def test_every_panel_is_usable_at_the_minimum_size(qtbot, window, tmp_path, run_dir):
    load_folder(qtbot, window, run_dir.parent.parent / "imgs")
    sp = window.sampling_panel
    open_and_read(qtbot, sp, run_dir)
    window.resize(600, 400)  # asks for less than the minimum
    assert (window.width(), window.height()) == MIN_SIZE
    shots = save_shots(window, tmp_path, f"{MIN_SIZE[0]}x{MIN_SIZE[1]}")
    assert all(p.stat().st_size > 10_000 for p in shots)
    for i in range(window.tabs.count()):
        window.tabs.setCurrentIndex(i)
        QApplication.processEvents()
        # no settings column is clipped under its scroll bar
        for area in window.tabs.widget(i).findChildren(QScrollArea):
            inner = area.widget()
            if inner is not None and area.isVisible() and "Thumbnail" not in type(area).__name__:
                assert inner.width() <= area.viewport().width(), (i, inner.width(), area.viewport().width())
    tp = window.training_panel
    window.tabs.setCurrentWidget(tp)
    QApplication.processEvents()
    longest = "step 123,456 / 800,000 · 1,234 images/s · lr 1.00e-03 · 16 min 35 s left"
    assert tp.stats.width() >= tp.stats.fontMetrics().horizontalAdvance(longest)  # no "ETA 13:" cut
    for plot in (tp.schedule_plot, sp.schedule_plot, window.forward_panel.schedule_plot):
        window.tabs.setCurrentWidget(next(window.tabs.widget(j) for j in range(4)
                                          if window.tabs.widget(j).isAncestorOf(plot)))
        QApplication.processEvents()
        assert plot.width() >= 200 and plot.view.height() >= 200, (plot.width(), plot.view.height())
    window.resize(1600, 1000)
    assert (window.width(), window.height()) == (1600, 1000)
    save_shots(window, tmp_path, "1600x1000")


# -- 4: the progress bar before training ----------------------------------------------------------
def test_progress_bar_shows_the_run_total_before_training(qtbot, window):
    tp = window.training_panel
    assert tp.progress.text() == "0 / 4000 steps"  # the tiny preset's Steps, not "0 / 1"
    tp.steps_spin.setValue(6000)
    assert tp.progress.text() == "0 / 6000 steps"


# -- 2 and 10: the chain view after Generate --------------------------------------------------------
def test_arrows_scrub_after_generate_and_label_agrees_with_the_marker(qtbot, window, run_dir):
    sp = window.sampling_panel
    window.tabs.setCurrentWidget(sp)
    window.activateWindow()
    open_and_read(qtbot, sp, run_dir)
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("ddim"))
    sp.steps_spin.setValue(20)
    sp.num_spin.setValue(2)
    pairs = []

    def check(_items):
        m = re.search(r"t = (\d+)", sp.viewer.step_label.text())
        pairs.append((sp.schedule_plot.marked_t, int(m.group(1)) if m else None,
                      re.search(r"t = ", sp.progress.label.text()) is not None))

    with qtbot.waitSignal(sp.generation_finished, timeout=60_000) as blocker:
        qtbot.mouseClick(sp.generate_button, Qt.MouseButton.LeftButton)
        sp.task.items.connect(check)  # after the panel's own slot
    assert blocker.args[0] is not None and len(sp.frames) == 20
    assert pairs and all(marker == label for marker, label, _ in pairs), pairs
    assert not any(t_in_progress for _, _, t_in_progress in pairs)  # one t on screen, not two
    last_t = sp.frames[-1].t  # trailing spacing ends above 0 (T // steps - 1)
    assert sp.schedule_plot.marked_t == last_t and f"t = {last_t}" in sp.viewer.step_label.text()

    # the focus is on the chain, not on the Export "Upscale" box
    focus = QApplication.focusWidget()
    assert focus is sp.viewer, focus
    qtbot.keyClick(focus, Qt.Key.Key_Left)
    qtbot.keyClick(focus, Qt.Key.Key_Left)
    assert sp.slider.value() == 17 and sp.scale_spin.value() == 4
    assert sp.schedule_plot.marked_t == sp.frames[17].t and f"t = {sp.frames[17].t}" in sp.viewer.step_label.text()
    qtbot.keyClick(focus, Qt.Key.Key_Home)
    assert sp.slider.value() == 0
    qtbot.keyClick(focus, Qt.Key.Key_End)
    assert sp.slider.value() == 19

    # a cancelled chain too
    sp.steps_spin.setValue(200)
    with qtbot.waitSignal(sp.generation_finished, timeout=60_000):
        qtbot.mouseClick(sp.generate_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: len(sp.frames) >= 2, timeout=30_000)
        sp.scale_spin.setFocus()
        sp.cancel()
    assert QApplication.focusWidget() is sp.viewer
    before = sp.slider.value()
    qtbot.keyClick(sp.viewer, Qt.Key.Key_Left)
    assert sp.slider.value() == before - 1


# -- 5: one dialog for files and folders, remembering where it was -----------------------------------
def test_one_dialog_opens_a_run_folder_or_a_checkpoint(qtbot, run_dir, tmp_path):
    d = OpenModelDialog(None, str(run_dir.parent))
    qtbot.addWidget(d)
    d.selectFile(str(run_dir))
    d.accept()
    assert d.result() == QDialog.DialogCode.Accepted and d.chosen == str(run_dir)

    ckpt = sorted((run_dir / "checkpoints").glob("*.safetensors"))[0]
    d = OpenModelDialog(None, str(ckpt.parent))
    qtbot.addWidget(d)
    d.selectFile(str(ckpt))
    d.accept()
    assert d.result() == QDialog.DialogCode.Accepted and d.chosen == str(ckpt)

    plain = tmp_path / "plain"
    (plain / "inner").mkdir(parents=True)
    d = OpenModelDialog(None, str(plain))
    qtbot.addWidget(d)
    d.selectFile(str(plain / "inner"))
    d.accept()  # a folder that is no model is entered, not chosen
    assert d.result() != QDialog.DialogCode.Accepted and d.chosen is None


def test_dialogs_start_in_the_runs_folder_and_remember_the_last_one(qtbot, window, run_dir, tmp_path, monkeypatch):
    from ddpm_studio import paths
    from ddpm_studio.gui.widgets import open_model_dialog

    starts = []
    monkeypatch.setattr(open_model_dialog, "ask_model_path", lambda parent, start: starts.append(start) or None)
    sp = window.sampling_panel
    paths.default_runs_dir().mkdir(parents=True, exist_ok=True)
    assert sp.open_model() is False
    assert starts[-1] == str(paths.default_runs_dir())
    open_and_read(qtbot, sp, run_dir)
    sp.open_model()
    assert starts[-1] == str(run_dir.parent)  # where that run is listed
    # the training panel's Open Run starts there too
    tp = window.training_panel
    asked = []
    monkeypatch.setattr("PySide6.QtWidgets.QFileDialog.getExistingDirectory",
                        lambda parent, title, start: asked.append(start) or "")
    tp.open_run()
    assert asked == [str(run_dir.parent)]

    # so does Open Folder on the Dataset tab
    pics = tmp_path / "pictures" / "cats"
    pics.mkdir(parents=True)
    asked.clear()
    monkeypatch.setattr("PySide6.QtWidgets.QFileDialog.getExistingDirectory",
                        lambda parent, title, start: asked.append(start) or str(pics))
    assert window.dataset_panel._ask_folder() == str(pics)
    window.dataset_panel._ask_folder()
    assert asked[-1] == str(pics.parent)

    # exports remember their folder
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("ddim"))
    sp.steps_spin.setValue(2)
    sp.num_spin.setValue(1)
    with qtbot.waitSignal(sp.generation_finished, timeout=60_000):
        sp.generate()
    out = tmp_path / "exports"
    out.mkdir()
    with qtbot.waitSignal(sp.export_finished, timeout=30_000):
        assert sp.export_frame(str(out / "frame.png"))
    assert settings_mod.last_dir("exports", "/") == str(out)


# -- 6: after a restart ---------------------------------------------------------------------------------
def test_after_a_restart_the_sampling_panel_offers_only_what_works(qtbot, run_dir):
    w = MainWindow(load_on_start=False, probe_device=False)
    qtbot.addWidget(w)
    sp = w.sampling_panel
    assert not sp.src_trained.isEnabled() and sp.src_disk.isChecked()  # nothing is training
    assert not sp.generate_button.isEnabled() and "Open a run" in sp.generate_button.toolTip()
    assert sp.schedule_plot.placeholder.empty
    open_and_read(qtbot, sp, run_dir)  # step, size and schedule before any Generate
    assert "step 2" in sp.model_label.text() and "16 px" in sp.model_label.text()
    assert sp.schedule_plot.timesteps == 1000 and not sp.schedule_plot.placeholder.empty
    assert sp.generate_button.isEnabled()
    w.close()

    w2 = MainWindow(load_on_start=False, probe_device=False)
    qtbot.addWidget(w2)
    sp2 = w2.sampling_panel
    assert sp2.model_path == str(run_dir) and sp2.src_disk.isChecked() and sp2.generate_button.isEnabled()
    with qtbot.waitSignal(sp2.model_read, timeout=30_000):
        w2.state.set_device("CPU")  # the start-up probe has imported torch: now it is read
    assert "step 2" in sp2.model_label.text()
    w2.close()
    assert running_tasks() == []


# -- 7, 8, 11, 12: training ---------------------------------------------------------------------------
def test_training_locks_its_settings_and_shows_a_pause_plainly(qtbot, window, tmp_path):
    load_folder(qtbot, window, testing.write_image_folder(tmp_path / "imgs", count=8), size=16)
    tp, dp = window.training_panel, window.dataset_panel
    assert "16 × 16 px" in tp.images_label.text() and "8 images" in tp.images_label.text()
    tp.overrides = testing.micro_overrides(steps=100_000)
    window.tabs.setCurrentWidget(tp)
    assert tp.lock_note.isHidden()
    qtbot.mouseClick(tp.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tp.metrics_received >= 2, timeout=30_000)
    stats = tp.stats.text()
    assert "images/s" in stats and "left" in stats and "ETA" not in stats and not re.search(r"\d:\d\d", stats)

    # 11: nothing that cannot change a running trainer is editable, and the panel says so
    for wdg in (tp.steps_spin, tp.batch_spin, tp.lr_spin, tp.preset_combo, tp.device_combo,
                dp.size_combo, dp.flip_check, dp.drop_zone, dp.builtin_button):
        assert not wdg.isEnabled(), wdg
    assert not tp.lock_note.isHidden() and "Steps" in tp.lock_note.text()
    assert not dp.training_note.isHidden()
    assert dp.load_paths([]) is False and "stop it" in window.errors[-1][0]

    # 7: Pause shows where the eye is, without a speed or time left
    qtbot.mouseClick(tp.pause_button, Qt.MouseButton.LeftButton)
    n = -1
    while n != tp.metrics_received:  # the step in flight may still report
        n = tp.metrics_received
        qtbot.wait(400)
    assert tp.progress.text().startswith("Paused")
    assert "Paused at step" in tp.stats.text() and "images/s" not in tp.stats.text() and "left" not in tp.stats.text()
    qtbot.mouseClick(tp.pause_button, Qt.MouseButton.LeftButton)
    assert not tp.progress.text().startswith("Paused")
    qtbot.waitUntil(lambda: tp.metrics_received >= n + 2, timeout=30_000)
    assert "images/s" in tp.stats.text()

    with qtbot.waitSignal(tp.training_finished, timeout=60_000):
        qtbot.mouseClick(tp.stop_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not tp.is_running(), timeout=10_000)
    # after the stop: Steps can extend the run, the model stays as it was
    assert tp.steps_spin.isEnabled() and tp.lr_spin.isEnabled() and not tp.preset_combo.isEnabled()
    assert "extend" in tp.lock_note.text() and not tp.lock_note.isHidden()
    assert dp.size_combo.isEnabled() and dp.training_note.isHidden()
    step = tp.progress.value()
    tp.steps_spin.setValue(200_000)
    assert tp.progress.text() == f"{step} / 200000 steps"


def test_the_preset_hint_names_the_size_this_run_uses(qtbot, window, tmp_path):
    tp = window.training_panel
    load_folder(qtbot, window, testing.write_image_folder(tmp_path / "imgs", count=4, size=32), size=32)
    # from 32 px up the preset is tiny-32, which is tuned for that size: no hint, the images' size beside it
    assert tp.preset_combo.currentData() == "tiny-32" and "32 × 32 px" in tp.images_label.text()
    assert "This run uses" not in tp.preset_desc.text()
    load_folder(qtbot, window, tmp_path / "imgs", size=24)
    assert tp.preset_combo.currentData() == "tiny" and "This run uses 24 px" in tp.preset_desc.text()
    load_folder(qtbot, window, tmp_path / "imgs", size=16)
    assert "This run uses" not in tp.preset_desc.text()


def test_cpu_threads_and_precision_are_explained(qtbot, window):
    from ddpm_studio.engine.devices import cpu_has_native_bf16
    from ddpm_studio.gui.jobs import cpu_device_text, cpu_precision_note

    assert cpu_device_text(1, 2, {}) == "CPU (1 of 2 cores, one kept for the window)"
    assert "OMP_NUM_THREADS" in cpu_device_text(1, 4, {"OMP_NUM_THREADS": "1"})
    assert cpu_device_text(4, 4, {}) == "CPU (4 threads)"
    assert "trains in bf16" in cpu_precision_note(True) and "trains in fp32" in cpu_precision_note(False)
    assert "no native bf16" in cpu_precision_note(False) and "10x slower" in cpu_precision_note(False)
    import torch

    threads = torch.get_num_threads()  # the probe sets torch's thread count for the app's workers
    try:
        window._probe_device()  # the test window skips it at start
        qtbot.waitUntil(lambda: window.device_label.text().startswith("Device: CPU"), timeout=60_000)
    finally:
        torch.set_num_threads(threads)
    assert window.device_label.toolTip().endswith(cpu_precision_note(cpu_has_native_bf16()))  # this machine's


# -- 9: empty plots ------------------------------------------------------------------------------------
def test_empty_plots_say_so_and_log_axes_get_readable_ticks(qtbot, window):
    tp = window.training_panel
    assert tp.loss_plot.placeholder.empty and tp.bucket_plot.placeholder.empty
    tp.loss_plot.add_points([1, 2, 3], [0.12, 0.1, 0.09], [0.12, 0.11, 0.1])
    tp.bucket_plot.set_buckets([0.1] * 10, 1000)
    assert not tp.loss_plot.placeholder.empty and not tp.bucket_plot.placeholder.empty
    tp.loss_plot.set_log_scale(True)
    tp.loss_plot.redraw()
    ticks = tp.loss_plot.plot.getAxis("left")._tickLevels
    assert ticks and len(ticks[0]) >= 2  # an early loss spans less than a decade: still labelled
    values = [10 ** v for v, _ in ticks[0]]
    assert all(0.05 < v < 0.2 for v in values)
    tp.loss_plot.clear()
    assert tp.loss_plot.placeholder.empty
    major = plotting.decade_ticks(-4.4, 4.2, most=3)
    assert 2 <= len(major) <= 3 and all(label.startswith(("1", "10")) for _, label in major)
    assert [label for _, label in plotting.decade_ticks(0, 2, most=5)] == ["1", "10", "10²"]
    assert np.allclose([10 ** v for v, _ in plotting.sub_decade_ticks(np.log10(0.05), np.log10(0.2))],
                       [0.05, 0.1, 0.15, 0.2])


# -- 13: the version ---------------------------------------------------------------------------------------
def test_about_box_shows_the_version(window):
    assert f"DDPM Studio {__version__}" in window.about_text()
