"""Sampling panel: generate with DDPM, DDIM or DPM-Solver++, watch the reverse chain live, scrub it, export it.

The chain runs on a worker thread (:func:`..jobs.make_sample`), which turns the recorded steps into
``uint8`` grids and sends them in batches (at most ~30 a second, plus the last). Every step is
recorded while the chain fits the memory budget, every k-th beyond it. Exports run on worker
threads too. Which model Generate uses is ``sampling.session.SamplingSession``'s decision (Qt-free).

Length (over 500 lines, on purpose): one module per panel (STYLE.md): the settings, the live chain
viewer with its playback, and four exports, all widgets and wiring.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QFileDialog, QHBoxLayout, QLabel,
                               QPushButton, QRadioButton, QSlider, QSplitter, QStyle,
                               QVBoxLayout, QWidget)

from ... import paths
from ...config import SAMPLER_INFO, SAMPLERS, SPACING_HINTS, SPACINGS, SamplingConfig, sampler_default_steps
from ...sampling.session import SamplingSession, schedule_of
from .. import jobs
from .. import settings as settings_mod
from ..state import StudioState
from ..widgets.chain_canvas import ChainCanvas
from ..widgets.schedule_plot import SchedulePlot
from ..workers import Task
from .common import ProgressRow, add_row, float_spin, int_spin, section, settings_column


class ChainViewer(QWidget):
    """The canvas plus the scrubber; Left/Right step through the chain, Space plays."""

    step_requested = Signal(int)  # -1 or +1
    play_requested = Signal()
    home_end_requested = Signal(bool)  # True = end

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.canvas = ChainCanvas()
        self.play_button = QPushButton()
        self.play_button.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_MediaPlay))
        self.play_button.setToolTip("Play the recorded reverse chain (Space).")
        self.play_button.setCheckable(True)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 0)
        self.slider.setEnabled(False)
        self.slider.setToolTip("Scrub through the recorded steps of the reverse chain (Left / Right keys).")
        self.step_label = QLabel("no chain yet")
        self.step_label.setFixedWidth(200)
        row = QHBoxLayout()
        row.addWidget(self.play_button)
        row.addWidget(self.slider, 1)
        row.addWidget(self.step_label)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas, 1)
        lay.addLayout(row)

    def keyPressEvent(self, e: QKeyEvent) -> None:
        k = e.key()
        if k in (Qt.Key.Key_Left, Qt.Key.Key_Right):
            self.step_requested.emit(-1 if k == Qt.Key.Key_Left else 1)
        elif k == Qt.Key.Key_Space:
            self.play_requested.emit()
        elif k in (Qt.Key.Key_Home, Qt.Key.Key_End):
            self.home_end_requested.emit(k == Qt.Key.Key_End)
        else:
            super().keyPressEvent(e)

    def mousePressEvent(self, e) -> None:
        self.setFocus()
        super().mousePressEvent(e)


# The SamplingConfig fields this panel has widgets for (and keeps in the settings file, by the schema).
PANEL_FIELDS = ("sampler", "steps", "eta", "variance", "clip_denoised", "num_images", "seed", "spacing")


class SamplingPanel(QWidget):
    generation_finished = Signal(object)  # SampleResult | None
    export_finished = Signal(list)  # paths written
    model_read = Signal(str)  # an opened model's step, size and schedule are shown

    def __init__(self, state: StudioState, parent=None, budget_bytes: int = jobs.DEFAULT_CHAIN_BUDGET):
        super().__init__(parent)
        self.state = state
        self.budget_bytes = budget_bytes
        self.task: Task | None = None
        self.export_task: Task | None = None
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
        sd = SamplingConfig()
        boxes = [self._build_model(), self._build_sampler(sd), self._build_images(sd), self._build_buttons(),
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
        self.model_label = QLabel("")
        self.model_label.setWordWrap(True)
        self.model_label.setStyleSheet("color: palette(mid);")
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        mform.addRow(self.src_trained)
        mform.addRow(self.src_disk)
        mform.addRow(self.open_button)
        mform.addRow(self.model_label)
        self.src_group.buttonToggled.connect(lambda *_: self._update_model_label())
        return mbox

    def _build_sampler(self, sd: SamplingConfig) -> QWidget:
        sbox, sform = section("Sampler")
        self.sampler_combo = QComboBox()
        for name in SAMPLERS:
            self.sampler_combo.addItem(SAMPLER_INFO[name]["label"], name)
            self.sampler_combo.setItemData(self.sampler_combo.count() - 1, SAMPLER_INFO[name]["hint"],
                                           Qt.ItemDataRole.ToolTipRole)
        self.sampler_combo.setCurrentIndex(max(0, self.sampler_combo.findData(sd.sampler)))
        add_row(sform, "Sampler", self.sampler_combo,
                "How to walk from noise to an image. DPM-Solver++ needs the fewest network calls; DDPM is the paper's.")
        self.sampler_hint = QLabel("")
        self.sampler_hint.setWordWrap(True)
        self.sampler_hint.setStyleSheet("color: palette(mid);")
        sform.addRow(self.sampler_hint)
        self.variance_combo = QComboBox()
        self.variance_combo.addItem("σ² = β̃_t (posterior)", "fixed_small")
        self.variance_combo.addItem("σ² = β_t", "fixed_large")
        add_row(sform, "Variance", self.variance_combo,
                "The paper's two choices for the reverse-step noise; both give similar samples.")
        self.steps_spin = int_spin(1, 4000, sd.steps, 10)
        add_row(sform, "Steps", self.steps_spin, "How many network calls to take from pure noise to an image "
                "(choosing a sampler sets its own default: DDIM 50, DPM-Solver++ 20).")
        self.spacing_combo = QComboBox()
        for name in SPACINGS:
            self.spacing_combo.addItem(name.capitalize(), name)
            self.spacing_combo.setItemData(self.spacing_combo.count() - 1, SPACING_HINTS[name],
                                           Qt.ItemDataRole.ToolTipRole)
        self.spacing_combo.setCurrentIndex(max(0, self.spacing_combo.findData(sd.spacing)))
        add_row(sform, "Spacing", self.spacing_combo, "Which timesteps the steps visit. Trailing starts from pure "
                "noise for every step count; leading is diffusers' old default, kept for comparisons.")
        self.eta_spin = float_spin(0.0, 1.0, sd.eta, 2, 0.1)
        add_row(sform, "η (eta)", self.eta_spin, "0 = deterministic DDIM; 1 adds as much noise as ancestral sampling.")
        self.clip_check = QCheckBox("Clip predicted x₀ to [-1, 1]")
        self.clip_check.setChecked(sd.clip_denoised)
        add_row(sform, "Clip", self.clip_check, "Keep the model's guess of the clean image inside the valid range at "
                                                "every step.")
        self.sampler_combo.currentIndexChanged.connect(self._sampler_changed)
        return sbox

    def _build_images(self, sd: SamplingConfig) -> QWidget:
        ibox, iform = section("Images")
        self.num_spin = int_spin(1, 1024, sd.num_images)
        add_row(iform, "Number", self.num_spin, "How many images to generate at once; they are shown as a grid.")
        self.seed_spin = int_spin(0, 2**31 - 1, sd.seed)
        self.dice = QPushButton("Randomise")
        self.dice.setToolTip("Pick a new random seed.")
        self.dice.clicked.connect(self.randomise_seed)
        seed_row = QWidget()
        sr = QHBoxLayout(seed_row)
        sr.setContentsMargins(0, 0, 0, 0)
        sr.addWidget(self.seed_spin, 1)
        sr.addWidget(self.dice)
        add_row(iform, "Seed", seed_row, "Same seed and settings, same images.")
        self.seed_spin.setToolTip(seed_row.toolTip())
        return ibox

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

    def _build_export(self) -> QWidget:
        ebox, eform = section("Export")
        self.scale_spin = int_spin(1, 16, 4, 1, "×")
        add_row(eform, "Upscale", self.scale_spin, "Enlarge exported images by this factor with crisp, "
                                                   "nearest-neighbour pixels.")
        self.layout_combo = QComboBox()
        self.layout_combo.addItem("One grid image", "grid")
        self.layout_combo.addItem("One file per image", "each")
        add_row(eform, "Samples as", self.layout_combo, "Save the final samples tiled into one PNG or as separate PNG "
                                                        "files.")
        self.gif_stride_spin = int_spin(1, 1000, 1)
        add_row(eform, "GIF stride", self.gif_stride_spin, "Use every n-th recorded step in the GIF (the last step is "
                                                           "always kept).")
        self.gif_fps_spin = int_spin(1, 60, 20, 1, " fps")
        add_row(eform, "GIF speed", self.gif_fps_spin, "Frames per second of the animated GIF.")
        self.gif_hold_spin = float_spin(0.0, 30.0, 1.5, 1, 0.5)
        self.gif_hold_spin.setSuffix(" s")
        add_row(eform, "Hold last", self.gif_hold_spin, "How long the GIF lingers on the final samples before looping.")
        self.export_frame_button = QPushButton("Frame…")
        self.export_frame_button.setToolTip("Save the frame on screen (x_t and predicted x₀ side by side) as PNG "
                                            "(Ctrl+E).")
        self.export_samples_button = QPushButton("Samples…")
        self.export_samples_button.setToolTip("Save the final samples as PNG.")
        self.export_gif_button = QPushButton("GIF…")
        self.export_gif_button.setToolTip("Save the reverse chain as an animated GIF (Ctrl+Shift+E).")
        self.export_frame_button.clicked.connect(lambda: self.export_frame())
        self.export_samples_button.clicked.connect(lambda: self.export_samples())
        self.export_gif_button.clicked.connect(lambda: self.export_gif())
        erow = QHBoxLayout()
        erow.addWidget(self.export_frame_button)
        erow.addWidget(self.export_samples_button)
        erow.addWidget(self.export_gif_button)
        eform.addRow(erow)
        return ebox

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
        """Show the sampler's one-line explanation, enable only the settings it reads, set its default steps."""
        name = self.sampler_combo.currentData()
        info = SAMPLER_INFO[name]
        self.sampler_hint.setText(info["hint"])
        self.sampler_combo.setToolTip(info["hint"])
        used = info["settings"]
        self.steps_spin.setEnabled("steps" in used)
        self.spacing_combo.setEnabled("spacing" in used)
        self.eta_spin.setEnabled("eta" in used)
        self.variance_combo.setEnabled("variance" in used)
        if "steps" in used:
            self.steps_spin.setValue(sampler_default_steps(name, self._model_T()))

    def _model_T(self) -> int:
        """T of the model last sampled from (its config), else the default 1000."""
        cfg = getattr(self, "_model_config", None)
        return cfg.diffusion.timesteps if cfg is not None else 1000

    def sampling_config(self) -> SamplingConfig:
        cfg = SamplingConfig(sampler=self.sampler_combo.currentData(), steps=int(self.steps_spin.value()),
                             eta=float(self.eta_spin.value()), variance=self.variance_combo.currentData(),
                             clip_denoised=self.clip_check.isChecked(), num_images=int(self.num_spin.value()),
                             seed=int(self.seed_spin.value()), spacing=self.spacing_combo.currentData())
        cfg.validate()
        return cfg

    def set_sampling_config(self, cfg: SamplingConfig) -> None:
        self.sampler_combo.setCurrentIndex(max(0, self.sampler_combo.findData(cfg.sampler)))
        self.spacing_combo.setCurrentIndex(max(0, self.spacing_combo.findData(cfg.spacing)))
        self.steps_spin.setValue(cfg.steps)
        self.eta_spin.setValue(cfg.eta)
        self.variance_combo.setCurrentIndex(max(0, self.variance_combo.findData(cfg.variance)))
        self.clip_check.setChecked(cfg.clip_denoised)
        self.num_spin.setValue(cfg.num_images)
        self.seed_spin.setValue(min(cfg.seed, self.seed_spin.maximum()))

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

            return load_model(path)

        task = Task(job, name="model")
        task.succeeded.connect(lambda loaded, p=path: self._on_model_read(p, loaded))
        task.failed.connect(lambda m, d, p=path: self._on_model_unreadable(p, m))
        task.finished.connect(lambda t=task: setattr(self, "info_task", None) if self.info_task is t else None)
        self.info_task = task
        task.start()

    def _on_model_read(self, path: str, loaded) -> None:
        if path != self.model_path or self.is_running():
            return  # another model was opened meanwhile, or a chain already loads it
        self._on_model_ready(jobs.ModelReady(loaded.config, int(loaded.step), str(loaded.source), loaded))
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
        if self.is_running():
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
        if self.task is not None:
            self.task.cancel()

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
            if first_time and m.config.sampling.spacing != "trailing":
                # a model that says how it is to be sampled (an imported scheduler's timestep_spacing):
                # shown in the chooser for the next Generate, where the user can change it
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
        running = self.is_running()
        ready = self.source_ready()
        self.generate_button.setEnabled(not running and ready)
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

    # -- export -----------------------------------------------------------------------------------
    def _ask_save_path(self, title: str, filt: str, default: str) -> str | None:
        start = settings_mod.last_dir("exports", os.path.expanduser("~"))
        path, _ = QFileDialog.getSaveFileName(self, title, os.path.join(start, default), filt)
        return path or None

    def _ask_folder(self, title: str) -> str | None:
        path = QFileDialog.getExistingDirectory(self, title, settings_mod.last_dir("exports", os.path.expanduser("~")))
        return path or None

    def _start_export(self, job, what: str, target: str | None = None) -> bool:
        if self.export_task is not None and self.export_task.is_running():
            self.state.report_error("An export is already running; wait for it to finish.", "")
            return False
        if target:
            settings_mod.remember_dir("exports", target)
        task = Task(job, name="export")
        task.progress.connect(lambda d, t, m: self.state.begin("export", f"{what}: {m} {d}/{t}"))
        task.succeeded.connect(self._on_exported)
        task.failed.connect(lambda m, d: self.state.report_error(f"Export failed: {m}", d))
        task.finished.connect(lambda t=task: self._on_export_finished(t))
        self.export_task = task
        self.state.begin("export", what)
        task.start()
        self._update_buttons()
        return True

    def _on_exported(self, written: list) -> None:
        where = str(written[0]) if len(written) == 1 else f"{len(written)} files in {Path(written[0]).parent}"
        self.state.message.emit(f"Saved {where}")
        self._exported = [str(p) for p in written]

    def _on_export_finished(self, task: Task) -> None:
        if self.export_task is task:
            self.export_task = None
            self.state.end("export")
            self._update_buttons()
        written, self._exported = getattr(self, "_exported", None), None
        if written is not None:
            self.export_finished.emit(written)  # after the buttons are usable again

    def export_frame(self, path: str | None = None) -> bool:
        """The frame on screen: x_t and predicted x_0 side by side, as one PNG."""
        f = self.current_frame()
        if f is None:
            self.state.report_error("There is no frame to export yet: press Generate first.", "")
            return False
        path = path or self.ask_save_path("Export Frame", "PNG image (*.png)", f"frame_t{f.t:04d}.png")
        if not path:
            return False
        gap = np.full((f.xt.shape[0], 4, f.xt.shape[2]), 255, dtype=np.uint8)  # (H, 4, C) white divider
        image = np.concatenate([f.xt, gap, f.x0], axis=1)  # (H, 2W + 4, C)
        return self._start_export(jobs.make_export_png(image, path, self.scale_spin.value()), "Exporting frame", path)

    def export_samples(self, path: str | None = None, per_image: bool | None = None) -> bool:
        if self.result is None:
            self.state.report_error("There are no finished samples to export yet: let a generation finish first.", "")
            return False
        per_image = self.layout_combo.currentData() == "each" if per_image is None else per_image
        if not path:
            path = self.ask_folder("Export Samples to Folder") if per_image else \
                self.ask_save_path("Export Samples", "PNG image (*.png)", "samples.png")
        if not path:
            return False
        return self._start_export(jobs.make_export_samples(self.result.images, path, per_image,
                                                           self.scale_spin.value()),
                                  "Exporting samples", path)

    def export_gif(self, path: str | None = None) -> bool:
        if not self.frames:
            self.state.report_error("There is no reverse chain to export yet: press Generate first.", "")
            return False
        path = path or self.ask_save_path("Export GIF", "Animated GIF (*.gif)", "reverse_chain.gif")
        if not path:
            return False
        frames = [f.xt for f in self.frames]
        job = jobs.make_export_gif(frames, path, stride=self.gif_stride_spin.value(), fps=self.gif_fps_spin.value(),
                                   hold_last_sec=self.gif_hold_spin.value(), scale=self.scale_spin.value())
        return self._start_export(job, "Exporting GIF", path)

    # -- settings ---------------------------------------------------------------------------------
    def save_settings(self, s) -> None:
        from ..settings import save_section

        save_section(s, "sampling", self.sampling_config() if self._valid() else SamplingConfig(), PANEL_FIELDS)
        s.setValue("sampling/scale", self.scale_spin.value())
        s.setValue("sampling/gif_fps", self.gif_fps_spin.value())
        s.setValue("sampling/gif_stride", self.gif_stride_spin.value())
        s.setValue("sampling/gif_hold", self.gif_hold_spin.value())
        s.setValue("sampling/layout", self.layout_combo.currentData())
        s.setValue("sampling/model_path", self.model_path or "")

    def _valid(self) -> bool:
        try:
            self.sampling_config()
            return True
        except ValueError:
            return False

    def restore_settings(self, s) -> None:
        from ..settings import get, restore_section

        self.set_sampling_config(restore_section(s, "sampling", SamplingConfig(), PANEL_FIELDS))
        self.scale_spin.setValue(get(s, "sampling/scale", 4))
        self.gif_fps_spin.setValue(get(s, "sampling/gif_fps", 20))
        self.gif_stride_spin.setValue(get(s, "sampling/gif_stride", 1))
        self.gif_hold_spin.setValue(get(s, "sampling/gif_hold", 1.5))
        self.layout_combo.setCurrentIndex(max(0, self.layout_combo.findData(get(s, "sampling/layout", "grid"))))
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
