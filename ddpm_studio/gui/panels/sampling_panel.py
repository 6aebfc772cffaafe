"""Sampling panel: generate with DDPM, DDIM or DPM-Solver++, watch the reverse chain live, scrub it, export it.

The chain runs on a worker thread (:func:`..jobs.make_sample`), which turns the recorded steps into
``uint8`` grids and sends them in batches (at most ~30 a second, plus the last). Every step is
recorded while the chain fits the memory budget, every k-th beyond it. Exports run on worker
threads too. Which model Generate uses is ``sampling.session.SamplingSession``'s decision (Qt-free).

The Sampler and Images rows are forms generated from the config schema (``gui.forms``); the exports
(their settings and jobs) are ``sampling_exports.ExportActions``, Tune ``sampling_tuning.TuningActions``, the
viewer ``widgets.chain_viewer``.

Length (over 500 lines, on purpose): one panel's view, whose model source, live chain, scrubbing and playback
share its state; what could stand apart (exports, tuning, the viewer widget) already does.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QButtonGroup, QHBoxLayout, QPushButton, QRadioButton, QSplitter, QStyle,
                               QVBoxLayout, QWidget)

from ... import paths
from ...config import SAMPLER_INFO, SPACING_HINTS, SPACING_LABELS, SamplingConfig, sampler_default_steps
from ...sampling.session import SamplingSession, schedule_of
from .. import jobs
from .. import settings as settings_mod
from ..state import StudioState
from ..widgets.chain_viewer import ChainViewer
from ..widgets.schedule_plot import SchedulePlot
from ..forms import SchemaForm, fields, name_items
from ..workers import Task
from .common import ProgressRow, note, schema_section, section, settings_column
from .sampling_exports import ExportActions
from .sampling_tuning import RememberedTunings, TuningActions


# The SamplingConfig fields of this panel's two forms, by name, in their order (widget, label, range and
# tooltip from config.py; kept in the settings file under sampling/<field>). The other fields come from
# the model sampled (jobs.MODEL_SAMPLING_FIELDS).
SAMPLER_FIELDS = ("sampler", "variance", "steps", "timesteps", "spacing", "eta", "clip_denoised")
IMAGES_FIELDS = ("num_images", "seed")
PANEL_FIELDS = SAMPLER_FIELDS + IMAGES_FIELDS


class SamplingPanel(ExportActions, TuningActions, QWidget):
    generation_finished = Signal(object)  # SampleResult | None
    export_finished = Signal(list)  # paths written
    model_read = Signal(str)  # an opened model's step, size and schedule are shown

    def __init__(self, state: StudioState, parent=None, budget_bytes: int = jobs.DEFAULT_CHAIN_BUDGET):
        super().__init__(parent)
        self.state = state
        self.budget_bytes = budget_bytes
        self.task: Task | None = None
        self.frames: list[jobs.ChainFrame] = []
        self.result: jobs.SampleResult | None = None
        self.session = SamplingSession()  # which model Generate uses; this panel shows it
        self._model_config = None
        self.frames_received = 0
        self.follow_live = True
        self._marker_time = 0.0
        self.ask_save_path = self._ask_save_path  # replaceable (tests): (title, filter, default) -> path
        self.ask_folder = self._ask_folder
        self.info_task: Task | None = None  # reads an opened model (step, size, schedule) before any Generate
        self._build()
        state.trainer_changed.connect(lambda _: self._update_model_label())
        self._update_model_label()
        self._sampler_changed()
        self._update_buttons()

    # -- layout -----------------------------------------------------------------------------------
    @property
    def model_path(self) -> str | None:
        return self.session.model_path

    def _build(self) -> None:
        boxes = [self._build_model(), self._build_sampler(), self._build_images(), self._build_buttons(),
                 self._build_export()]
        scroll = settings_column(boxes)
        scroll.setMinimumWidth(max(330, scroll.minimumWidth()))
        scroll.setMaximumWidth(400)
        lay = QHBoxLayout(self)
        lay.addWidget(scroll)
        lay.addLayout(self._build_viewer(), 1)

    def _build_model(self) -> QWidget:
        mbox, mform = section("Model")
        self.src_trained = QRadioButton("The model being trained")
        self.src_trained.setToolTip("Sample from a copy of the current EMA weights of the training run.")
        self.src_disk = QRadioButton("A run or checkpoint from disk")
        self.src_disk.setToolTip("Sample from a run folder, a checkpoint file or a model folder.")
        self.src_group = QButtonGroup(self)
        self.src_group.addButton(self.src_trained)
        self.src_group.addButton(self.src_disk)
        self.src_disk.setChecked(True)  # nothing trains in a window that has just opened
        self.open_button = QPushButton("Open Run or Checkpoint…")
        self.open_button.setToolTip("Pick a run folder, a .safetensors checkpoint or a diffusers model folder "
                                    "in one dialog (starts in the runs folder).")
        self.open_button.clicked.connect(lambda: self.open_model())
        self.model_label = note(selectable=True)
        mform.addRow(self.src_trained)
        mform.addRow(self.src_disk)
        mform.addRow(self.open_button)
        mform.addRow(self.model_label)
        self.src_group.buttonToggled.connect(lambda *_: (self.clear_tuned("they were tuned for another model"),
                                                         self._update_model_label()))
        return mbox

    def _build_sampler(self) -> QWidget:
        box, self.sampler_form = schema_section("Sampler", fields(SamplingConfig, SAMPLER_FIELDS),
                                                beside={"timesteps": self._make_tune_button()})
        w = self.sampler_form.widgets
        self.sampler_combo, self.steps_spin, self.spacing_combo = w["sampler"], w["steps"], w["spacing"]
        self.eta_spin, self.variance_combo, self.clip_check = w["eta"], w["variance"], w["clip_denoised"]
        name_items(self.sampler_combo, {k: v["label"] for k, v in SAMPLER_INFO.items()},
                   {k: v["hint"] for k, v in SAMPLER_INFO.items()})
        name_items(self.variance_combo, {"fixed_small": "σ² = β̃_t (posterior)", "fixed_large": "σ² = β_t"})
        name_items(self.spacing_combo, SPACING_LABELS, SPACING_HINTS)
        self.sampler_hint = note()
        self.sampler_form.form.insertRow(1, self.sampler_hint)  # under the sampler it explains
        self.sampler_combo.currentIndexChanged.connect(self._sampler_changed)
        self._build_tuning()
        return box

    def _build_images(self) -> QWidget:
        self.dice = QPushButton("Randomise")
        self.dice.setToolTip("Pick a new random seed.")
        self.dice.clicked.connect(self.randomise_seed)
        box, self.images_form = schema_section("Images", fields(SamplingConfig, IMAGES_FIELDS),
                                               beside={"seed": self.dice})
        self.forms: tuple[SchemaForm, ...] = (self.sampler_form, self.images_form)  # the panel's settings
        self.num_spin, self.seed_spin = self.images_form.widgets["num_images"], self.images_form.widgets["seed"]
        return box

    def _build_buttons(self) -> QHBoxLayout:
        self.generate_button = QPushButton("Generate")
        self.generate_button.setDefault(True)
        self.generate_button.setToolTip("Run the reverse chain from pure noise (Ctrl+G).")
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the chain after the current step.")
        self.cancel_button.clicked.connect(self.cancel)
        brow = QHBoxLayout()
        brow.addWidget(self.generate_button, 2)
        brow.addWidget(self.cancel_button, 1)
        return brow

    def _build_viewer(self) -> QVBoxLayout:
        """Progress, the chain viewer and the model's noise schedule."""
        self.progress = ProgressRow()
        self.progress.cancel_clicked.connect(self.cancel)
        self.progress.cancel_button.hide()
        self.viewer = ChainViewer()
        self.canvas = self.viewer.canvas
        self.slider = self.viewer.slider
        self.play_button = self.viewer.play_button
        self.slider.valueChanged.connect(self.show_frame)
        self.viewer.step_requested.connect(self.step)
        self.viewer.play_requested.connect(self.play_button.toggle)
        self.viewer.home_end_requested.connect(lambda end: self.slider.setValue(self.slider.maximum() if end else 0))
        self.play_button.toggled.connect(self.set_playing)
        self.play_timer = QTimer(self)
        self.play_timer.timeout.connect(self._play_tick)
        self._marker_timer = QTimer(self)
        self._marker_timer.setSingleShot(True)
        self._marker_timer.setInterval(250)
        self._marker_timer.timeout.connect(self._catch_up_marker)
        self.schedule_plot = SchedulePlot(title="Noise schedule of this model", compact=True,
                                          empty_text="The schedule appears when a model is opened.")
        vs = QSplitter(Qt.Orientation.Vertical)
        vs.addWidget(self.viewer)
        vs.addWidget(self.schedule_plot)
        vs.setSizes([500, 290])
        vs.setChildrenCollapsible(False)
        right = QVBoxLayout()
        right.addWidget(self.progress)
        right.addWidget(vs, 1)
        return right

    # -- options ----------------------------------------------------------------------------------
    def _sampler_changed(self, *_) -> None:
        """A sampler was chosen: explain it, enable the settings it reads, and take its default step count."""
        name = self._show_sampler()
        self.clear_tuned("they were tuned for another sampler")
        if "steps" in SAMPLER_INFO[name]["settings"]:
            self.steps_spin.setValue(sampler_default_steps(name, self._model_T()))
        self.restore_tuned()

    def _show_sampler(self) -> str:
        """Show the sampler's one-line explanation and enable only the settings it reads."""
        name = self.sampler_combo.currentData()
        info = SAMPLER_INFO[name]
        self.sampler_hint.setText(info["hint"])
        self.sampler_combo.setToolTip(info["hint"])
        for field in ("steps", "spacing", "eta", "variance"):
            self.sampler_form.widgets[field].setEnabled(field in info["settings"])
        self._show_tuning(name)
        return name

    def _model_T(self) -> int:
        """T of the model last sampled from (its config), else the default 1000."""
        cfg = getattr(self, "_model_config", None)
        return cfg.diffusion.timesteps if cfg is not None else 1000

    def sampling_config(self) -> SamplingConfig:
        values = {name: v for form in self.forms for name, v in form.values().items()}
        cfg = SamplingConfig(**values)
        cfg.validate()
        return cfg

    def set_sampling_config(self, cfg: SamplingConfig) -> None:
        for form in self.forms:
            form.set_values(cfg)
        self._show_sampler()  # keeps the config's step count (setting the forms emits no change)

    def randomise_seed(self) -> None:
        self.seed_spin.setValue(random.randrange(0, self.seed_spin.maximum()))

    # -- model ------------------------------------------------------------------------------------
    def _ask_model_path(self) -> str | None:
        from ..widgets.open_model_dialog import ask_model_path

        runs = paths.default_runs_dir()
        return ask_model_path(self, settings_mod.last_dir("runs", runs if runs.is_dir() else os.path.expanduser("~")))

    def open_model(self, path: str | None = None, *, quiet: bool = False) -> bool:
        """Use a run folder, checkpoint or model folder for the next Generate; read its step and size now."""
        path = path or self._ask_model_path()  # replaceable in tests
        if not path:
            return False
        try:
            self.session.open(path)
        except ValueError as e:
            if not quiet:
                self.state.report_error(f"Cannot open the model: {e}", "")
            return False
        p = Path(path).absolute()
        # the next dialog starts where this run is listed: beside a run folder, above a run's checkpoints/
        settings_mod.remember_dir("runs", p.parents[2] if p.parent.name == "checkpoints" and len(p.parents) > 2
                                  else p.parent)
        self.src_disk.setChecked(True)
        self.clear_tuned("they were tuned for another model")
        self._update_model_label()
        self._read_model(self.model_path)
        return True

    def _read_model(self, path: str) -> None:
        """Load the model on a worker thread (what Generate would do first), so its step, size and
        schedule show at once and the first Generate starts without loading it again."""
        if self.info_task is not None:
            self.info_task.cancel()

        def job(state):
            from ...artifacts.loading import load_model
            from ...sampling.tuning_store import recall_for

            loaded = load_model(path)
            return loaded, recall_for(loaded)

        task = Task(job, name="model")
        task.succeeded.connect(lambda read, p=path: self._on_model_read(p, *read))
        task.failed.connect(lambda m, d, p=path: self._on_model_unreadable(p, m))
        task.finished.connect(lambda t=task: setattr(self, "info_task", None) if self.info_task is t else None)
        self.info_task = task
        task.start()

    def _on_model_read(self, path: str, loaded, tunings: list) -> None:
        if path != self.model_path:
            return  # another model was opened meanwhile
        self.remembered = RememberedTunings(path, tunings)
        if not self.is_running():  # else a chain already loads it
            self._on_model_ready(jobs.ModelReady(loaded.config, int(loaded.step), str(loaded.source), loaded))
        self.restore_tuned()
        self.model_read.emit(path)

    def _on_model_unreadable(self, path: str, message: str) -> None:
        if path == self.model_path and self.session.loaded is None:
            self.model_label.setText(f"{path}\ncannot be used: {message}")

    def _update_model_label(self) -> None:
        self.model_label.setText(self.session.describe(self.src_disk.isChecked(), self.state.trainer is not None))
        trained = self.state.trainer is not None
        self.src_trained.setEnabled(trained)
        self.src_trained.setToolTip("Sample from a copy of the current EMA weights of the training run."
                                    if trained else "Nothing has trained in this window yet: start training first.")
        self._update_buttons()

    def _model_getter(self):
        return self.session.model_getter(self.src_disk.isChecked(), self.state.trainer)

    # -- generation -------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.task is not None and self.task.is_running()

    def generate(self) -> bool:
        """Start a reverse chain. False, with a message and no thread, if the input is bad."""
        if self.is_running() or self.tune_running():
            return False
        try:
            cfg = self.sampling_config()
            get_model = self._model_getter()
        except ValueError as e:
            self.state.report_error(f"Cannot generate: {e}", "")
            return False
        self.set_playing(False)
        self.frames = []
        self.result = None
        self.frames_received = 0
        self.follow_live = True
        self.slider.setRange(0, 0)
        self.slider.setEnabled(False)
        task = Task(jobs.make_sample(get_model, cfg, self.budget_bytes), name="sampling")
        task.items.connect(self._on_items)
        task.succeeded.connect(self._on_result)
        task.failed.connect(self._on_failed)
        task.cancelled.connect(self._on_cancelled)
        task.finished.connect(lambda t=task: self._on_task_finished(t))
        self.task = task
        steps = "all" if cfg.sampler == "ddpm" else cfg.steps
        label = SAMPLER_INFO[cfg.sampler]["label"].split(" (")[0]
        self.progress.start(f"Generating {cfg.num_images} image(s) with {label} ({steps} steps)…")
        self.state.begin("sampling", "Generating")
        task.start()
        self._update_buttons()
        self.viewer.setFocus()  # the arrows scrub the chain (the disabled Generate button would pass focus on)
        return True

    def cancel(self) -> None:
        for task in (self.task, self.tune_task):
            if task is not None:
                task.cancel()

    def shutdown(self) -> None:
        self.cancel()
        if self.export_task is not None:
            self.export_task.cancel()
        self.set_playing(False)

    def _on_items(self, items: list) -> None:
        new = [it for it in items if isinstance(it, jobs.ChainFrame)]
        for it in items:
            if isinstance(it, jobs.ModelReady):
                self._on_model_ready(it)
        if not new:
            return
        self.frames.extend(new)
        self.frames_received += len(new)
        last = new[-1]
        self.progress.report(last.index + 1, last.total, f"step {last.index + 1} / {last.total}")
        at_end = self.slider.value() >= self.slider.maximum()
        self.slider.blockSignals(True)
        self.slider.setRange(0, len(self.frames) - 1)
        self.slider.blockSignals(False)
        self.slider.setEnabled(True)
        if self.follow_live and at_end:
            if self.slider.value() != len(self.frames) - 1:
                self.slider.setValue(len(self.frames) - 1)  # shows the frame (valueChanged)
            else:
                self.show_frame(len(self.frames) - 1)
        else:
            self._update_step_label(self.slider.value())

    def _on_model_ready(self, m: jobs.ModelReady) -> None:
        self._model_config = m.config
        schedule, label = schedule_of(m.config)
        self.schedule_plot.set_schedule(schedule.betas, schedule.alphas_cumprod, schedule.snr, label=label)
        if self.src_disk.isChecked() and getattr(m, "loaded", None) is not None:
            first_time = self.session.model_loaded(m.loaded)
            self._update_model_label()
            if first_time and m.config.sampling.spacing not in ("auto", "trailing"):
                # a model that says how it is to be sampled (an imported scheduler's timestep_spacing; not the
                # default of today, auto, or of runs before it, trailing): shown in the chooser for the next
                # Generate, where the user can change it
                self.spacing_combo.setCurrentIndex(max(0, self.spacing_combo.findData(m.config.sampling.spacing)))

    def _on_result(self, result: jobs.SampleResult) -> None:
        self.result = result
        stride = f", every {result.stride}th step recorded" if result.stride > 1 else ""
        self.progress.finish(f"Done: {len(result.images)} image(s), {result.total} steps{stride}.")
        self._outcome = (result,)

    def _on_failed(self, message: str, details: str) -> None:
        self.progress.finish("Generation failed.")
        self.state.report_error(message, details)
        self._outcome = (None,)

    def _on_cancelled(self) -> None:
        self.progress.finish(f"Cancelled after {len(self.frames)} recorded step(s); scrub to see them.")
        self._outcome = (None,)

    def _on_task_finished(self, task: Task) -> None:
        if self.task is task:
            self.task = None
            self.state.end("sampling")
            self._update_buttons()
        outcome, self._outcome = getattr(self, "_outcome", None), None
        if self.frames:
            self.schedule_plot.set_marker(self.current_frame().t)
            self._update_step_label(self.slider.value())
            focus = self.focusWidget()
            if focus is None or focus is self.generate_button or not focus.isEnabled() or \
                    focus is self.scale_spin or not self.isAncestorOf(focus):
                self.viewer.setFocus()  # ←/→ and Home/End scrub the chain that just ended
        if outcome is not None:
            self.generation_finished.emit(outcome[0])  # after Generate is enabled again

    def source_ready(self) -> bool:
        """Whether the chosen source can generate: a trainer exists, or a model is opened."""
        return self.state.trainer is not None if self.src_trained.isChecked() else bool(self.model_path)

    def _update_buttons(self) -> None:
        running = self.is_running() or self.tune_running()
        ready = self.source_ready()
        self.generate_button.setEnabled(not running and ready)
        self._show_tuning(self.sampler_combo.currentData())
        self.generate_button.setToolTip("Run the reverse chain from pure noise (Ctrl+G)." if ready else
                                        "Open a run or checkpoint first (or start training and choose "
                                        "the model being trained).")
        self.cancel_button.setEnabled(running)
        exporting = self.export_task is not None and self.export_task.is_running()
        for b in (self.export_frame_button, self.export_gif_button):
            b.setEnabled(bool(self.frames) and not exporting)
        self.export_samples_button.setEnabled(self.result is not None and not exporting)

    # -- scrubbing --------------------------------------------------------------------------------
    def show_frame(self, i: int) -> None:
        if not self.frames:
            return
        i = max(0, min(int(i), len(self.frames) - 1))
        f = self.frames[i]
        self.canvas.show_frame(f.xt, f.x0)
        # Repainting the schedule plot costs far more than the canvas: while the chain runs live,
        # move its marker at most 4 times a second (and always when the user scrubs or it ends).
        # The step label beside the slider moves with the marker, so the two always name the same t.
        now = time.monotonic()
        if not (self.is_running() and self.follow_live) or now - self._marker_time >= 0.25:
            self._marker_time = now
            self.schedule_plot.set_marker(f.t)
            self._update_step_label(i)
        elif not self._marker_timer.isActive():
            self._marker_timer.start()  # catch up with the newest frame a quarter second later
        if self.is_running():
            self.follow_live = i == len(self.frames) - 1
        self._update_buttons()

    def _catch_up_marker(self) -> None:
        f = self.current_frame()
        if f is not None:
            self._marker_time = time.monotonic()
            self.schedule_plot.set_marker(f.t)
            self._update_step_label(self.slider.value())

    def _update_step_label(self, i: int) -> None:
        if not self.frames:
            self.viewer.step_label.setText("no chain yet")
            return
        f = self.frames[min(i, len(self.frames) - 1)]
        self.viewer.step_label.setText(f"step {f.index + 1} / {f.total} · t = {f.t}")

    def current_frame(self) -> jobs.ChainFrame | None:
        if not self.frames:
            return None
        return self.frames[min(self.slider.value(), len(self.frames) - 1)]

    def step(self, delta: int) -> None:
        self.slider.setValue(self.slider.value() + delta)

    def set_playing(self, on: bool) -> None:
        if self.play_button.isChecked() != on:
            self.play_button.setChecked(on)
            return
        icon = QStyle.StandardPixmap.SP_MediaPause if on else QStyle.StandardPixmap.SP_MediaPlay
        self.play_button.setIcon(self.style().standardIcon(icon))
        if on and self.frames:
            if self.slider.value() >= self.slider.maximum():
                self.slider.setValue(0)
            self.play_timer.start(int(1000 / max(1, self.gif_fps_spin.value())))
        else:
            self.play_timer.stop()
            if on:
                self.play_button.setChecked(False)

    def _play_tick(self) -> None:
        if self.slider.value() >= self.slider.maximum():
            self.set_playing(False)
        else:
            self.slider.setValue(self.slider.value() + 1)

    # -- settings ---------------------------------------------------------------------------------
    def save_settings(self, s) -> None:
        for form in self.forms:
            form.save(s, "sampling")  # sampling/<field>, as the schema names it
        self._save_export_settings(s)
        s.setValue("sampling/model_path", self.model_path or "")

    def restore_settings(self, s) -> None:
        from ..settings import get

        for form in self.forms:
            form.restore(s, "sampling")  # a saved value that no longer fits its field keeps the default
        self._show_sampler()
        self._restore_export_settings(s)
        remembered = get(s, "sampling/model_path", "")
        if remembered and os.path.exists(remembered) and not self.model_path:
            # the model opened last time; read once torch is imported (the start-up device probe)
            self.session.model_path = remembered
            self.src_disk.setChecked(True)
            self._update_model_label()
            self.state.device_changed.connect(self._read_remembered_model)

    def _read_remembered_model(self, *_) -> None:
        self.state.device_changed.disconnect(self._read_remembered_model)
        if self.model_path and self.session.loaded is None and self.info_task is None:
            self._read_model(self.model_path)
