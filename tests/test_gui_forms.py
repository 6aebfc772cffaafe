"""Forms generated from the config schema: widgets, labels and tooltips from knob(), two-way binding,
settings persistence; the Training panel's "More settings" reach the run config."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLabel, QSpinBox  # noqa: E402

from ddpm_studio.config import TrainConfig, settings_of  # noqa: E402
from ddpm_studio.gui.forms import SchemaForm  # noqa: E402

FIELDS = ("weight_decay", "ema_warmup", "keep_checkpoints", "preview_sampler")


def _form(qtbot) -> SchemaForm:
    form = SchemaForm([s for s in settings_of(TrainConfig) if s.name in FIELDS])
    qtbot.addWidget(form)
    return form


def test_widgets_labels_and_tooltips_come_from_the_schema(qtbot):
    form = _form(qtbot)
    w = form.widgets
    assert isinstance(w["weight_decay"], QDoubleSpinBox) and isinstance(w["ema_warmup"], QCheckBox)
    assert isinstance(w["keep_checkpoints"], QSpinBox) and isinstance(w["preview_sampler"], QComboBox)
    assert (w["keep_checkpoints"].minimum(), w["keep_checkpoints"].maximum()) == (1, 1000)
    combo = w["preview_sampler"]
    assert [combo.itemData(i) for i in range(combo.count())] == ["ddpm", "ddim", "dpmpp-2m", "dpmpp-3m", "dpmpp-2m-sde",
                                                                   "unipc"]
    knob = next(s for s in settings_of(TrainConfig) if s.name == "keep_checkpoints").knob
    assert w["keep_checkpoints"].toolTip() == knob.help
    labels = [lbl.text() for lbl in form.findChildren(QLabel)]
    assert knob.label in labels
    assert form.values() == {"weight_decay": 0.0, "ema_warmup": True, "keep_checkpoints": 3,
                             "preview_sampler": "dpmpp-2m"}  # the declared defaults


def test_values_round_trip_both_ways(qtbot):
    form = _form(qtbot)
    changes = []
    form.changed.connect(lambda: changes.append(1))
    form.set_values(TrainConfig(weight_decay=0.05, ema_warmup=False, keep_checkpoints=7, preview_sampler="ddim"))
    assert changes == []  # showing a config is not an edit
    assert form.values() == {"weight_decay": 0.05, "ema_warmup": False, "keep_checkpoints": 7,
                             "preview_sampler": "ddim"}
    form.widgets["keep_checkpoints"].setValue(9)
    assert changes and form.values()["keep_checkpoints"] == 9


def test_settings_persist_under_the_field_names_and_bad_values_are_ignored(qtbot, tmp_path):
    s = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    form = _form(qtbot)
    form.set_values({"weight_decay": 0.25, "ema_warmup": False, "keep_checkpoints": 5, "preview_sampler": "ddim"})
    form.save(s, "training")
    s.sync()
    other = _form(qtbot)
    other.restore(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat), "training")
    assert other.values() == form.values()
    s.setValue("training/keep_checkpoints", 5000)  # out of range
    s.setValue("training/preview_sampler", "euler")  # not a choice
    s.sync()
    third = _form(qtbot)
    third.restore(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat), "training")
    assert third.values()["keep_checkpoints"] == 3 and third.values()["preview_sampler"] == "dpmpp-2m"
    assert third.values()["weight_decay"] == 0.25


def test_training_panel_more_settings_reach_the_run_config(qtbot):
    from ddpm_studio.gui.main_window import MainWindow

    w = MainWindow(load_on_start=False, probe_device=False)
    qtbot.addWidget(w)
    tp = w.training_panel
    tp.advanced.widgets["weight_decay"].setValue(0.01)
    tp.advanced.widgets["keep_checkpoints"].setValue(6)
    cfg = tp.build_config()
    assert cfg.train.weight_decay == 0.01 and cfg.train.keep_checkpoints == 6
    cfg.train.preview_count = 4
    tp.set_config(cfg)
    assert tp.advanced.values()["preview_count"] == 4


def test_closing_says_what_it_waits_for():
    from ddpm_studio.gui.main_window import waiting_message

    assert waiting_message(["training", "sampling", "training"]) == (
        "Closing: waiting for training to save its checkpoint and sampling to stop…")
    assert waiting_message(["lab"]) == "Closing: waiting for lab to stop…"


def test_sections_persist_by_the_schema_field_by_field(tmp_path):
    from ddpm_studio.config import SamplingConfig
    from ddpm_studio.gui.settings import restore_section, save_section

    s = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    save_section(s, "sampling", SamplingConfig(sampler="ddim", steps=50, clip_denoised=False, eta=0.5))
    s.setValue("sampling/spacing", "even")  # no longer a choice: left out, the rest is kept
    s.sync()
    got = restore_section(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat), "sampling",
                          SamplingConfig())
    assert (got.sampler, got.steps, got.clip_denoised, got.eta) == ("ddim", 50, False, 0.5)
    assert got.spacing == "auto" and got.dynamic_threshold is None


def test_settings_from_before_auto_spacing_take_the_new_default(tmp_path, monkeypatch):
    """A spacing saved as trailing by a version whose default it was gives way to auto, once; a trailing
    saved after that is the user's choice and stays."""
    from ddpm_studio import paths
    from ddpm_studio.config import SamplingConfig
    from ddpm_studio.gui.settings import SETTINGS_VERSION, open_settings, restore_section, settings_path

    monkeypatch.setattr(paths, "config_dir", lambda: tmp_path)
    old = QSettings(str(settings_path()), QSettings.Format.IniFormat)  # as the version before wrote it
    old.setValue("sampling/spacing", "trailing")
    old.setValue("sampling/steps", 12)
    old.sync()
    s = open_settings()
    got = restore_section(s, "sampling", SamplingConfig())
    assert (got.spacing, got.steps) == ("auto", 12) and int(s.value("settings_version")) == SETTINGS_VERSION
    s.setValue("sampling/spacing", "trailing")  # now chosen by the user
    s.sync()
    assert restore_section(open_settings(), "sampling", SamplingConfig()).spacing == "trailing"


def test_the_sampling_panel_keeps_its_settings_by_field_name(qtbot):
    from ddpm_studio.gui.main_window import MainWindow
    from ddpm_studio.gui.settings import open_settings

    w = MainWindow(load_on_start=False, probe_device=False)
    qtbot.addWidget(w)
    sp = w.sampling_panel
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("ddim"))
    sp.steps_spin.setValue(33)
    s = open_settings()
    sp.save_settings(s)
    s.sync()
    assert s.value("sampling/sampler") == "ddim" and int(s.value("sampling/steps")) == 33
    sp.steps_spin.setValue(5)
    sp.restore_settings(s)
    assert sp.steps_spin.value() == 33 and sp.sampler_combo.currentData() == "ddim"


def test_every_train_field_without_its_own_widget_is_in_more_settings():
    from ddpm_studio.gui.panels.training_panel import ADVANCED_TRAIN_FIELDS, MAIN_TRAIN_FIELDS

    names = [s.name for s in settings_of(TrainConfig)]
    assert set(ADVANCED_TRAIN_FIELDS) | set(MAIN_TRAIN_FIELDS) | {"minutes"} == set(names)
    assert set(ADVANCED_TRAIN_FIELDS) == {"weight_decay", "ema_warmup", "compile", "log_every", "preview_count",
                                          "preview_sampler", "preview_sampling_steps", "checkpoint_minutes",
                                          "keep_checkpoints", "eval_every", "eval_num"}


def test_float_fields_read_as_written_take_scientific_input_and_step_sensibly(qtbot):
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    from ddpm_studio.gui.forms import make_widget, number_text

    assert [number_text(v) for v in (1e-3, 2e-4, 0.995, 5.0, 1.0, 0.0, 1e-8)] == [
        "0.001", "0.0002", "0.995", "5", "1", "0", "1e-8"]
    by_name = {s.name: s for s in settings_of(TrainConfig)}
    lr = make_widget(by_name["lr"])
    qtbot.addWidget(lr)
    lr.setValue(1e-3)
    assert lr.text() == "0.001"  # not 0.00100000
    lr.stepBy(1)
    assert lr.value() == pytest.approx(2e-3)  # a learning rate steps 1, 2, 5 x 10^k
    lr.stepBy(-3)
    assert lr.value() == pytest.approx(2e-4)
    lr.lineEdit().selectAll()
    QTest.keyClicks(lr, "3e-5")
    QTest.keyClick(lr, Qt.Key.Key_Return)
    assert lr.value() == pytest.approx(3e-5) and lr.text() == "3e-5"
    ema = make_widget(by_name["ema_decay"])
    qtbot.addWidget(ema)
    ema.setValue(0.995)
    ema.stepBy(1)
    assert ema.value() == pytest.approx(0.996)  # a decay near 1 steps by its distance to 1, not 0.01
