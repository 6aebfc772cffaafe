"""The panels' main forms come from the schema: every field of the sections a panel shows is in exactly
one of its forms, and a config with every such field changed from its default round-trips through the
widgets; old settings keys are ignored cleanly; Open Run reads the run folder on a worker thread."""

from __future__ import annotations

import dataclasses
import threading

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings  # noqa: E402

from ddpm_studio.config import (DataConfig, DiffusionConfig, RunConfig, SamplingConfig, Setting,  # noqa: E402
                                TrainConfig, settings_of)
from ddpm_studio.gui.forms import SchemaForm  # noqa: E402


def _form_fields(panel) -> list[str]:
    """section.field of every row of every schema form inside ``panel`` (one entry per row)."""
    return [s.key for form in panel.findChildren(SchemaForm) for s in form.settings]


def _candidates(s: Setting) -> list:
    """Values of ``s`` other than its default that a spin box of its decimals shows exactly."""
    if s.kind == "bool":
        return [not s.default]
    if s.choices:
        return [c for c in s.choices if c != s.default]
    if s.kind == "tuple[int, ...]":  # e.g. sampling.timesteps, one per step: the section's checks pick the length
        return [(3,), (6, 3), (9, 6, 3)]
    lo, hi = s.knob.lo, s.knob.hi
    one = int if s.kind == "int" else float
    values = [one(lo)] if lo is not None else []
    values += [s.default + 1, s.default + 2] if s.kind == "int" else [s.default + 1.0]
    values += [one(hi)] if hi is not None and hi < 1e6 else []
    return [v for v in values if v != s.default and (lo is None or v >= lo) and (hi is None or v <= hi)]


def _all_changed(section_cls, names) -> object:
    """A section with every field in ``names`` changed from its default (the first change its checks accept)."""
    by_name = {s.name: s for s in settings_of(section_cls)}
    section = section_cls()
    for name in names:
        for value in _candidates(by_name[name]):
            trial = dataclasses.replace(section, **{name: value})
            try:
                trial.validate()
            except ValueError:
                continue
            section = trial
            break
        else:
            raise AssertionError(f"no valid value other than the default for {by_name[name].key}")
    return section


def _keys(section_cls, leave_out=()) -> list[str]:
    return sorted(s.key for s in settings_of(section_cls) if s.name not in leave_out)


# -- one place per field ------------------------------------------------------------------------------


def test_every_field_the_training_panel_shows_is_in_exactly_one_of_its_forms(window):
    rows = _form_fields(window.training_panel)
    assert len(rows) == len(set(rows))  # no field twice ("More settings" included)
    shown = sorted(k for k in rows if k.startswith(("diffusion.", "train.")))
    # betas: an imported model's; minutes: the command line's (no step limit = the Steps box at its maximum)
    assert shown == sorted(_keys(DiffusionConfig, ("betas",)) + _keys(TrainConfig, ("minutes",)))
    assert set(rows) == set(shown)


def test_the_sampling_and_dataset_panels_show_each_field_once(window):
    from ddpm_studio.gui.jobs import MODEL_SAMPLING_FIELDS

    rows = _form_fields(window.sampling_panel)
    assert len(rows) == len(set(rows))
    assert sorted(rows) == _keys(SamplingConfig, MODEL_SAMPLING_FIELDS)  # the rest: the model's own
    rows = _form_fields(window.dataset_panel)
    assert sorted(rows) == _keys(DataConfig, ("folder", "image_size"))  # image_size: a list of sizes


def test_labels_tooltips_and_ranges_of_the_main_forms_come_from_the_knobs(window):
    tp = window.training_panel
    knob = next(s for s in settings_of(TrainConfig) if s.name == "batch_size").knob
    assert tp.batch_spin.toolTip() == knob.help
    assert tp.optim_form.label("batch_size").text() == knob.label
    assert (tp.batch_spin.minimum(), tp.batch_spin.maximum()) == (knob.lo, knob.hi)
    sp = window.sampling_panel
    assert [sp.sampler_combo.itemData(i) for i in range(sp.sampler_combo.count())] == list(
        next(s for s in settings_of(SamplingConfig) if s.name == "sampler").choices)
    assert sp.sampler_combo.itemText(0).startswith("DDPM")  # the friendly words stay, the value is the field's
    seed = next(s for s in settings_of(SamplingConfig) if s.name == "seed").knob
    assert sp.images_form.label("seed").text() == seed.label and sp.seed_spin.toolTip() == seed.help
    assert sp.dice.parentWidget() is sp.seed_spin.parentWidget()  # Randomise sits in the seed's row


# -- round trips ----------------------------------------------------------------------------------


def test_set_config_then_build_config_round_trips_every_field_changed(window):
    from ddpm_studio.gui.panels.training_panel import ADVANCED_TRAIN_FIELDS, DIFFUSION_FIELDS, MAIN_TRAIN_FIELDS

    tp = window.training_panel
    cfg = RunConfig.from_preset("tiny")
    cfg.diffusion = _all_changed(DiffusionConfig, DIFFUSION_FIELDS)
    cfg.train = _all_changed(TrainConfig, MAIN_TRAIN_FIELDS + ADVANCED_TRAIN_FIELDS)
    for name in DIFFUSION_FIELDS:
        assert getattr(cfg.diffusion, name) != getattr(DiffusionConfig(), name), name
    tp.set_config(cfg)
    got = tp.build_config()
    assert got.diffusion == cfg.diffusion
    assert got.train == cfg.train
    cfg.train.steps = None  # no step limit shows as the box at its maximum, and reads back as None
    tp.set_config(cfg)
    assert tp.steps_spin.value() == tp.steps_spin.maximum() and tp.build_config().train.steps is None


def test_the_sampling_and_dataset_forms_round_trip(window):
    from ddpm_studio.gui.panels.dataset_panel import OPTION_FIELDS
    from ddpm_studio.gui.panels.sampling_panel import PANEL_FIELDS

    sp = window.sampling_panel
    cfg = _all_changed(SamplingConfig, PANEL_FIELDS)
    sp.set_sampling_config(cfg)
    assert sp.sampling_config() == cfg  # setting a sampler by config keeps the config's step count
    dp = window.dataset_panel
    data = dataclasses.replace(_all_changed(DataConfig, OPTION_FIELDS), image_size=48)
    dp.set_data_config(data)
    assert dp.data_config() == data


def test_presets_fill_the_forms_and_the_schedule_follows_the_user(window):
    tp = window.training_panel
    tp.apply_preset("ddpm-cifar10")
    assert tp.diffusion_form.values()["prediction"] == "epsilon" and tp.lr_spin.value() == pytest.approx(2e-4)
    assert not tp.diffusion_form.widgets["min_snr_gamma"].isEnabled()  # unused without min_snr weighting
    tp.apply_preset("tiny")
    assert tp.diffusion_form.values()["loss_weighting"] == "min_snr" and tp.batch_spin.value() == 32
    assert tp.diffusion_form.widgets["min_snr_gamma"].isEnabled()
    tp.weighting_combo.setCurrentIndex(tp.weighting_combo.findData("min_snr_plus1"))  # gamma caps it too
    assert tp.diffusion_form.widgets["min_snr_gamma"].isEnabled()
    assert tp.build_config().diffusion.loss_weighting == "min_snr_plus1"
    tp.apply_preset("tiny")
    tp.schedule_combo.setCurrentIndex(tp.schedule_combo.findData("cosine"))  # as a user's choice
    assert window.state.schedule[0] == "cosine"
    sp = window.sampling_panel
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("ddim"))
    assert sp.steps_spin.value() == 50 and sp.eta_spin.isEnabled()  # the sampler's own default


# -- settings -------------------------------------------------------------------------------------


def test_old_training_settings_are_ignored_and_removed_new_ones_restore(window, tmp_path):
    tp = window.training_panel
    path = str(tmp_path / "s.ini")
    old = QSettings(path, QSettings.Format.IniFormat)
    old.setValue("training/preset", "tiny")
    old.setValue("training/weighting", "none")
    old.setValue("training/train", "{not json")
    old.setValue("training/diffusion/timesteps", 123)
    old.setValue("training/fields/batch_size", 999_999_999)  # out of range: the preset's value stays
    old.sync()
    tp.restore_settings(QSettings(path, QSettings.Format.IniFormat))
    assert tp.timesteps_spin.value() == 123 and tp.batch_spin.value() == 32
    assert tp.weighting_combo.currentData() == "min_snr"  # the old key is not read
    tp.steps_spin.setValue(tp.steps_spin.maximum())
    s = QSettings(path, QSettings.Format.IniFormat)
    tp.save_settings(s)
    s.sync()
    assert not s.contains("training/train") and not s.contains("training/weighting")
    assert int(s.value("training/fields/batch_size")) == 32
    tp.apply_preset("small")
    tp.restore_settings(QSettings(path, QSettings.Format.IniFormat))
    assert tp.build_config().train.steps is None and tp.timesteps_spin.value() == 123


# -- Open Run off the UI thread -------------------------------------------------------------------


def _run_folder(tmp_path):
    import numpy as np
    from PIL import Image

    run = tmp_path / "run"
    cfg = RunConfig.from_preset("tiny", train=dict(steps=777, lr=3e-4, keep_checkpoints=5))
    cfg.save(run / "config.json")
    (run / "samples").mkdir()
    Image.fromarray(np.full((10, 12, 3), 200, np.uint8)).save(run / "samples" / "step_000040.png")
    return run


def test_open_run_reads_the_folder_on_a_worker_and_then_shows_it(qtbot, window, tmp_path, monkeypatch):
    from ddpm_studio.gui.panels import training_panel as module

    threads = []
    real = module.read_run
    monkeypatch.setattr(module, "read_run", lambda path: threads.append(threading.current_thread()) or real(path))
    tp = window.training_panel
    run = _run_folder(tmp_path)
    with qtbot.waitSignal(tp.run_opened, timeout=10_000):
        assert tp.open_run(str(run))
        assert tp.steps_spin.value() != 777  # nothing shown before the worker's signal
    assert threads and threads[0] is not threading.main_thread()
    assert tp.steps_spin.value() == 777 and tp.lr_spin.value() == pytest.approx(3e-4)
    assert tp.advanced.values()["keep_checkpoints"] == 5
    assert tp.resume_dir == str(run) and tp.start_button.text() == "Continue Run"
    assert "step 000040" in tp.preview.caption.text()
    qtbot.waitUntil(lambda: getattr(tp, "_history_task", None) is None, timeout=10_000)


def test_open_run_on_a_folder_that_is_not_a_run_says_so(qtbot, window, tmp_path):
    tp = window.training_panel
    opened = []
    tp.run_opened.connect(opened.append)
    assert tp.open_run(str(tmp_path))
    qtbot.waitUntil(lambda: tp._open_task is None, timeout=10_000)
    assert opened == [] and "Cannot open this run" in window.errors[-1][0] and "no config.json" in window.errors[-1][0]
    assert tp.resume_dir is None and tp.open_run_button.isEnabled()


def test_the_preset_follows_the_image_size_between_tiny_and_tiny_32(window, qtbot, tmp_path):
    from ddpm_studio.gui import testing

    dp, tp = window.dataset_panel, window.training_panel

    def size(px: int) -> None:  # as a user does: pick the size, then Apply (the images are decoded again)
        dp.size_combo.setCurrentIndex(dp.size_combo.findData(px))
        with qtbot.waitSignal(dp.loaded, timeout=30_000):
            dp.apply_button.click()

    dp.size_combo.setCurrentIndex(dp.size_combo.findData(16))
    with qtbot.waitSignal(dp.loaded, timeout=30_000):
        testing.drop_paths(window, [testing.write_image_folder(tmp_path / "imgs", count=4)])
    assert tp.preset_combo.currentData() == "tiny"
    tp.steps_spin.setValue(1234)  # typed by the user: a switch of network keeps it
    size(32)
    assert tp.preset_combo.currentData() == "tiny-32" and "2 × 2 pixel patches" in tp.preset_combo.toolTip()
    cfg = tp.build_config()
    assert (cfg.model.preset, cfg.model.patch_size, cfg.data.image_size, cfg.train.steps) == ("tiny-32", 2, 32, 1234)
    tp.preset_combo.setCurrentIndex(tp.preset_combo.findData("tiny"))  # the user's own choice at 32 px holds
    assert tp.build_config().model.patch_size == 1
    size(16)
    assert tp.preset_combo.currentData() == "tiny"
    size(64)
    assert tp.preset_combo.currentData() == "tiny-32"
    size(16)
    assert tp.preset_combo.currentData() == "tiny" and tp.build_config().model.patch_size == 1
    tp.preset_combo.setCurrentIndex(tp.preset_combo.findData("small"))  # other presets never move
    size(32)
    assert tp.preset_combo.currentData() == "small"
