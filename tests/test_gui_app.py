"""App-level behaviour: --smoke, settings restored, menus, schedule preview, forward explorer, built-in set."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")

from PySide6.QtGui import QKeySequence  # noqa: E402

from ddpm_studio import paths  # noqa: E402
from ddpm_studio.gui import app as gui_app  # noqa: E402
from ddpm_studio.gui import settings as settings_mod  # noqa: E402
from ddpm_studio.gui.main_window import MainWindow  # noqa: E402
from ddpm_studio.gui.workers import running_tasks  # noqa: E402


def close(w):
    w.confirm = lambda q: True
    w.close()
    assert running_tasks() == []


def test_smoke_flag_opens_and_exits_zero(qtbot, capsys):
    assert gui_app.main(["--smoke"]) == 0
    assert "window opened" in capsys.readouterr().out
    assert running_tasks() == []


def test_icon_loads_when_present_and_title(qtbot):
    icon = gui_app.app_icon()
    has_files = (paths.resources_dir() / "icons").is_dir() and any((paths.resources_dir() / "icons").glob("*.png"))
    assert icon.isNull() is (not has_files)
    w = MainWindow(load_on_start=False, probe_device=False)
    qtbot.addWidget(w)
    assert w.windowTitle() == "DDPM Studio"
    shortcuts = {a.text(): a.shortcut() for a in (w.open_folder_action, w.open_run_action, w.generate_action,
                                                  w.export_gif_action, w.quit_action)}
    assert shortcuts["&Generate"] == QKeySequence("Ctrl+G")
    assert shortcuts["Open &Run…"] == QKeySequence("Ctrl+Shift+O")
    assert shortcuts["&Quit"] == QKeySequence("Ctrl+Q") and shortcuts["Open &Folder…"] == QKeySequence("Ctrl+O")
    assert shortcuts["Export Chain as &GIF…"] == QKeySequence("Ctrl+Shift+E")
    close(w)


def test_settings_and_geometry_restored(qtbot):
    w = MainWindow(load_on_start=False, probe_device=False)
    qtbot.addWidget(w)
    w.show()
    w.resize(1024, 710)  # the minimum width: the offscreen screen is narrower than any larger one
    w.training_panel.steps_spin.setValue(1234)
    w.training_panel.schedule_combo.setCurrentText("cosine")
    w.sampling_panel.steps_spin.setValue(37)
    w.dataset_panel.size_combo.setCurrentIndex(w.dataset_panel.size_combo.findData(16))
    w.tabs.setCurrentIndex(2)
    close(w)
    assert settings_mod.settings_path().is_file()
    assert str(paths.config_dir()) in str(settings_mod.settings_path())  # isolated by the tests' config dir

    w2 = MainWindow(load_on_start=False, probe_device=False)
    qtbot.addWidget(w2)
    w2.show()
    assert (w2.width(), w2.height()) == (1024, 710)
    assert w2.training_panel.steps_spin.value() == 1234
    assert w2.training_panel.schedule_combo.currentText() == "cosine"
    assert w2.sampling_panel.steps_spin.value() == 37
    assert w2.dataset_panel.data_config().image_size == 16
    assert w2.tabs.currentIndex() == 2
    close(w2)


def test_schedule_plot_follows_settings_before_training(qtbot):
    w = MainWindow(load_on_start=False, probe_device=False)
    qtbot.addWidget(w)
    tp = w.training_panel
    tp.schedule_combo.setCurrentText("linear")
    tp.timesteps_spin.setValue(1000)
    beta = tp.schedule_plot.curves[0].getData()[1].copy()
    assert len(beta) == 1000 and beta[0] == pytest.approx(1e-4) and beta[-1] == pytest.approx(0.02)
    tp.schedule_combo.setCurrentText("cosine")
    abar = tp.schedule_plot.curves[1].getData()[1]
    assert not np.allclose(tp.schedule_plot.curves[0].getData()[1], beta)
    assert abar[-1] < 1e-3 and abar[0] > 0.99
    tp.timesteps_spin.setValue(200)
    assert len(tp.schedule_plot.curves[1].getData()[1]) == 200
    # the forward explorer follows the same schedule
    assert w.forward_panel.t_slider.maximum() == 199
    assert w.forward_panel.schedule_plot.timesteps == 200
    close(w)


def test_forward_explorer_noises_the_picked_image(qtbot, tmp_path):
    from ddpm_studio.gui import testing

    w = MainWindow(load_on_start=False, probe_device=False)
    qtbot.addWidget(w)
    w.show()
    dp = w.dataset_panel
    dp.size_combo.setCurrentIndex(dp.size_combo.findData(16))
    with qtbot.waitSignal(dp.loaded, timeout=30_000):
        testing.drop_paths(w, [testing.write_image_folder(tmp_path / "imgs", count=4)])  # onto the window
    fp = w.forward_panel
    w.tabs.setCurrentWidget(fp)
    fp.select_image(2)
    assert np.array_equal(fp.x0_view.view.image_array(), w.state.images.images[2])
    fp.t_slider.setValue(0)
    near = fp.current_xt().astype(int)
    assert np.abs(near - w.state.images.images[2].astype(int)).mean() < 6  # t=0: almost no noise
    fp.t_slider.setValue(999)
    far = fp.current_xt()
    assert np.abs(far.astype(int) - near).mean() > 30  # t=T-1: mostly noise
    assert fp.schedule_plot.marked_t == 999
    close(w)


def test_builtin_dataset_loads_on_first_launch(qtbot):
    w = MainWindow(probe_device=False)  # as a fresh install starts
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.dataset_panel.loaded, timeout=60_000):
        pass
    assert w.state.images.source == "built-in"
    assert w.dataset_panel.grid.count() == len(w.state.images.images) > 100
    close(w)


def test_choosing_a_preset_sets_its_diffusion_and_training_fields(qtbot):
    from ddpm_studio.config import PRESETS, DiffusionConfig, TrainConfig

    w = MainWindow(load_on_start=False, probe_device=False)
    qtbot.addWidget(w)
    tp = w.training_panel
    for name in ("ddpm-cifar10", "tiny", "small"):
        tp.preset_combo.setCurrentIndex(tp.preset_combo.findData(name))
        preset = PRESETS[name]
        cfg = tp.build_config()
        assert cfg.model.preset == name
        assert cfg.model.base_channels == preset["model"]["base_channels"]
        assert cfg.train.lr == pytest.approx(preset["train"]["lr"])
        assert cfg.train.batch_size == preset["train"]["batch_size"]
        assert cfg.train.preview_every == preset["train"].get("preview_every", TrainConfig().preview_every)
        for key in ("schedule", "prediction", "loss_weighting", "timesteps"):
            expected = preset.get("diffusion", {}).get(key, getattr(DiffusionConfig(), key))
            assert getattr(cfg.diffusion, key) == expected, (name, key)
    close(w)


def test_a_fresh_install_trains_with_the_tiny_preset_as_it_is(qtbot):
    """No saved settings: the Training panel describes exactly RunConfig.from_preset('tiny')."""
    from ddpm_studio.config import RunConfig

    w = MainWindow(load_on_start=False, probe_device=False)
    qtbot.addWidget(w)
    cfg = w.training_panel.build_config()
    want = RunConfig.from_preset("tiny")
    assert cfg.model.preset == "tiny"
    assert cfg.diffusion == want.diffusion
    assert cfg.diffusion.prediction == "v" and cfg.diffusion.loss_weighting == "min_snr"
    for key in ("lr", "batch_size", "warmup_steps", "ema_decay", "steps", "preview_every", "precision"):
        assert getattr(cfg.train, key) == getattr(want.train, key), key
    close(w)


def test_random_flip_is_off_until_asked_for_and_says_when_it_hurts(qtbot):
    """Flipping mirrors text, digits and logos: off by default, and the checkbox says so; a config
    that asks for it keeps it."""
    import dataclasses

    from ddpm_studio.config import DataConfig, RunConfig

    assert DataConfig().flip is False and RunConfig.from_preset("tiny").data.flip is False
    w = MainWindow(load_on_start=False, probe_device=False)
    qtbot.addWidget(w)
    panel = w.dataset_panel
    assert not panel.flip_check.isChecked()
    assert w.training_panel.build_config().data.flip is False
    tip = panel.flip_check.toolTip()
    assert "text" in tip and "symmetric" in tip
    panel.set_data_config(dataclasses.replace(DataConfig(), flip=True))
    assert panel.flip_check.isChecked()
    cfg = RunConfig.from_preset("tiny", data={"flip": True})
    assert RunConfig.from_json(cfg.to_json()).data.flip is True
    close(w)


def test_a_run_the_clock_ends_shows_no_step_total(qtbot):
    """A CLI run trained with --minutes only has train.steps = None: no step total is shown."""
    from ddpm_studio.training.events import StepMetrics

    w = MainWindow(load_on_start=False, probe_device=False)
    qtbot.addWidget(w)
    tp = w.training_panel
    m = dict(loss=0.1, loss_smooth=0.1, grad_norm=1.0, lr=1e-3, images_per_sec=100.0, elapsed_sec=1.0, eta_sec=None)
    tp._on_items([StepMetrics(step=1085, total_steps=None, **m)])
    assert "no step limit" in tp.progress.text() and "1085" in tp.progress.text()
    assert "no step limit" in tp.stats.text() and "10,000,000" not in tp.stats.text()
    tp._on_items([StepMetrics(step=50, total_steps=200, **m)])
    assert tp.progress.text() == "50 / 200 steps"
    assert "step 50 / 200" in tp.stats.text()
    close(w)
