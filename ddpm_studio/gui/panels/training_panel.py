"""Training panel: presets and hyperparameters, Start / Pause / Stop, live loss, schedule and previews.

The trainer runs on a worker thread (:func:`..jobs.make_train`); pausing and stopping go through
the trainer's thread-safe ``TrainControl``, called directly from the UI thread. What Start runs and
which run stays open are decided by ``training.session.TrainingSession`` (Qt-free, tested without Qt);
the settings column (preset and the forms generated from the config schema, ``build_config`` /
``set_config``, settings persistence) is ``training_forms.TrainingForms``; Open Run reads the run
folder on a worker.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QFileDialog, QGridLayout, QHBoxLayout, QLabel,
                               QProgressBar, QPushButton, QSplitter, QVBoxLayout, QWidget)

from ... import paths
from ...config import RunConfig, TrainConfig
from ...training.session import History, OpenedRun, TrainingSession, load_history, read_run
from .. import jobs
from ..state import StudioState
from ..widgets.chain_canvas import CaptionedView
from ..widgets.loss_plot import BucketLossPlot, LossPlot
from ..widgets.quality_plot import QualityPlot
from ..widgets.schedule_plot import SchedulePlot
from ..workers import Task
from ...durations import format_time_left
from .common import column_widget, settings_column
from .training_forms import (ADVANCED_TRAIN_FIELDS, DIFFUSION_FIELDS, MAIN_TRAIN_FIELDS,  # noqa: F401 (re-exported)
                             TrainingForms)


def _of_total(total: int | None) -> str:
    """' / N' after a step number, or a note for a run the clock ends (no step total)."""
    return " (no step limit)" if total is None else f" / {total:,}"


class TrainingPanel(TrainingForms, QWidget):
    training_started = Signal()
    training_finished = Signal(object)  # TrainFinished | None (failed)
    run_opened = Signal(str)  # Open Run's folder, once its settings are shown

    def __init__(self, state: StudioState, parent=None):
        super().__init__(parent)
        self.state = state
        self.task: Task | None = None
        self.control = None
        self.session = TrainingSession()  # the run decisions; this panel shows them
        self.overrides: dict[str, dict] = {}  # extra config fields (tests, benchmarks)
        self.last_finished = None
        self.metrics_received = 0
        self.ask_run_folder = self._ask_run_folder
        self._started_at = 0.0
        self._open_task: Task | None = None  # reads an opened run's files
        self._build()
        state.images_changed.connect(lambda _: self._update_buttons())
        state.images_changed.connect(lambda _: self._show_images_info())
        state.data_config_changed.connect(lambda _: self._show_images_info())
        state.images_changed.connect(lambda _: self.follow_image_size())
        state.data_config_changed.connect(lambda _: self.follow_image_size())
        self.apply_preset("tiny")
        self._schedule_changed()
        self._update_buttons()
        self._show_images_info()
        self.follow_image_size()

    # -- layout -----------------------------------------------------------------------------------
    # The session owns the run state; these read it (Open Run / a finished run set it there).
    @property
    def run_dir(self) -> str | None:
        return self.session.run_dir

    @property
    def resume_dir(self) -> str | None:
        return self.session.resume_dir

    @property
    def resume_config(self) -> RunConfig | None:
        return self.session.resume_config

    def _build(self) -> None:
        boxes = [self._build_preset(), self._build_diffusion(), self._build_optimisation(), self._build_run(),
                 self._build_more()]
        left_w = self._build_buttons(settings_column(boxes))
        lay = QHBoxLayout(self)
        lay.addWidget(left_w)
        lay.addLayout(self._build_plots(), 1)

    def _build_buttons(self, scroll: QWidget) -> QWidget:
        """The settings column with the run buttons under it."""
        self.lock_note = QLabel("")
        self.lock_note.setWordWrap(True)
        self.lock_note.setStyleSheet("color: palette(mid);")
        self.lock_note.setVisible(False)
        self.start_button = QPushButton("Start Training")
        self.start_button.setToolTip("Train a new run with these settings (or continue the opened run).")
        self.start_button.setDefault(True)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setCheckable(True)
        self.pause_button.setToolTip("Pause after the current step; press again to resume.")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the current step and save a checkpoint.")
        self.open_run_button = QPushButton("Open Run…")
        self.open_run_button.setToolTip("Continue a run saved earlier (Ctrl+Shift+O).")
        self.start_button.clicked.connect(self.start)
        self.pause_button.toggled.connect(self.set_paused)
        self.stop_button.clicked.connect(self.stop)
        self.open_run_button.clicked.connect(lambda: self.open_run())
        self.new_run_button = QPushButton("New Run")
        self.new_run_button.setToolTip("Forget the opened run: the next Start begins a fresh run with the settings "
                                       "above.")
        self.new_run_button.clicked.connect(self.new_run)
        brow = QGridLayout()
        brow.addWidget(self.start_button, 0, 0, 1, 2)
        brow.addWidget(self.pause_button, 1, 0)
        brow.addWidget(self.stop_button, 1, 1)
        brow.addWidget(self.open_run_button, 2, 0)
        brow.addWidget(self.new_run_button, 2, 1)

        left = QVBoxLayout()
        left.addWidget(scroll, 1)
        left.addWidget(self.lock_note)
        left.addLayout(brow)
        return column_widget(left, 330, 400)

    def _build_plots(self) -> QVBoxLayout:
        """Progress, the run line, the loss plots, the schedule and the previews."""
        self.progress = QProgressBar()
        self.progress.setRange(0, TrainConfig().steps)
        self.progress.setValue(0)
        self.progress.setFormat("%v / %m steps")
        self.steps_spin.valueChanged.connect(self._steps_changed)
        self.stats = QLabel("Not started")
        from ..widgets.plotting import quiet_label

        quiet_label(self.stats)
        self.run_label = QLabel("A new run will be created in " + str(paths.default_runs_dir()))
        self.run_label.setStyleSheet("color: palette(mid);")
        self.run_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.run_label.setWordWrap(True)

        self.loss_plot = LossPlot()
        self.bucket_plot = BucketLossPlot()
        self.schedule_plot = SchedulePlot(compact=True)
        self.preview = CaptionedView("Preview samples (EMA)", "Previews appear here during training")
        self.preview.caption.setAlignment(Qt.AlignmentFlag.AlignLeft)
        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(self.bucket_plot)
        bottom.addWidget(self.schedule_plot)
        bottom.addWidget(self.preview)
        self.bucket_plot.setMinimumWidth(170)
        self.schedule_plot.setMinimumWidth(210)  # narrower, its t axis labels run together
        self.preview.setMinimumWidth(170)
        bottom.setSizes([300, 300, 300])
        bottom.setChildrenCollapsible(False)
        self.quality_plot = QualityPlot()  # KID per scored checkpoint (train.eval_every; hidden while off)
        top = QSplitter(Qt.Orientation.Horizontal)
        top.addWidget(self.loss_plot)
        top.addWidget(self.quality_plot)
        top.setChildrenCollapsible(False)
        vsplit = QSplitter(Qt.Orientation.Vertical)
        vsplit.addWidget(top)
        vsplit.addWidget(bottom)
        vsplit.setSizes([380, 320])
        vsplit.setChildrenCollapsible(False)

        right = QVBoxLayout()
        right.addWidget(self.progress)
        right.addWidget(self.stats)  # its own row: the whole line fits at the window's minimum width
        right.addWidget(self.run_label)
        right.addWidget(vsplit, 1)
        return right

    def _steps_changed(self, value: int) -> None:
        """Before a run (or between sessions) the bar shows the run's total as Steps says."""
        if not self.is_running():
            self.progress.setFormat("%v / %m steps")
            self.progress.setRange(0, max(int(value), self.progress.value(), 1))

    # -- run control ------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.task is not None and self.task.is_running()

    def start(self) -> bool:
        """Start (or continue) training. False, with a message and no thread, if the input is bad."""
        if self.is_running():
            return False
        try:
            cfg = self.build_config()
            loaded = self.state.data_config  # a continued run reuses the loaded images only if they are its files
            folder = loaded.folder if loaded.exclude_duplicates == cfg.data.exclude_duplicates else None
            plan = self.session.plan_start(cfg, self.state.images, folder, paths.default_runs_dir())
        except ValueError as e:
            self.state.report_error(f"Cannot start training: {e}", "")
            return False
        from ...training.control import TrainControl

        if plan.fresh:
            self.loss_plot.clear()
            self.bucket_plot.clear()
            self.quality_plot.clear()
        run_dir = plan.run_dir
        self.control = TrainControl()
        self.metrics_received = 0
        self.last_finished = None
        task = Task(jobs.make_train(cfg, run_dir, plan.images, plan.resume, self.control), name="training",
                    on_cancel=self.control.stop)
        task.items.connect(self._on_items)
        task.succeeded.connect(self._on_finished)
        task.failed.connect(self._on_failed)
        task.cancelled.connect(lambda: self._on_finished(None))
        task.finished.connect(lambda t=task: self._on_task_finished(t))
        self.task = task
        self._started_at = time.monotonic()
        self._show_progress(self.progress.value() if plan.resume else 0, cfg.train.steps)
        self.stats.setText("Preparing the model…")
        self.run_label.setText(f"Run folder: {run_dir}")
        self.state.begin("training", "Training: starting")
        task.start()
        self._update_buttons()
        self.training_started.emit()
        return True

    def set_paused(self, paused: bool) -> None:
        if self.control is None or not self.is_running():
            if self.pause_button.isChecked():
                self.pause_button.setChecked(False)
            return
        if paused:
            self.control.pause()
            self.pause_button.setText("Resume")
            self.state.begin("training", "Training paused")
            self._show_paused()
        else:
            self.control.resume()
            self.pause_button.setText("Pause")
            self.state.begin("training", "Training")
            self.progress.setFormat(self._progress_format)
            self.stats.setText(f"Resumed at step {self.progress.value():,}; measuring the speed again…")

    def _show_paused(self) -> None:
        """Paused: the progress line says so, without a speed or a time left that no longer hold."""
        step = self.progress.value()
        self.progress.setFormat("Paused · " + self._progress_format)
        self.stats.setText(f"Paused at step {step:,}. Press Resume to continue, or Stop to save and end.")

    def stop(self) -> None:
        if self.task is not None and self.is_running():
            self.stats.setText("Stopping after this step and saving a checkpoint…")
            self.task.cancel()  # calls control.stop(), which also ends a pause

    def shutdown(self) -> None:
        self.stop()
        self.quality_plot.shutdown()

    def _update_buttons(self) -> None:
        running = self.is_running()
        self.start_button.setEnabled(not running)
        self.start_button.setText("Continue Run" if self.resume_dir and not running else "Start Training")
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        self.open_run_button.setEnabled(not running and self._open_task is None)
        self.new_run_button.setEnabled(not running and self.resume_dir is not None)
        locked = running or self.resume_dir is not None
        self.preset_combo.setEnabled(not locked)
        self.diffusion_form.setEnabled(not locked)
        # The trainer reads its settings once, at Start: nothing changes a run in flight.
        for form in self._train_forms():
            form.setEnabled(not running)
        if running:
            self.lock_note.setText("Settings are locked while training runs. Stop it (a checkpoint is saved) "
                                   "to change them: a larger Steps then extends the run with Continue Run.")
        elif self.resume_dir is not None:
            self.lock_note.setText("Continuing this run keeps its model and diffusion settings. Steps (the "
                                   "run's total: raise it to extend a finished run), batch size, learning "
                                   "rate and the settings below them apply when you continue.")
        self.lock_note.setVisible(locked)
        if not running and self.pause_button.isChecked():
            self.pause_button.blockSignals(True)
            self.pause_button.setChecked(False)
            self.pause_button.setText("Pause")
            self.pause_button.blockSignals(False)

    # -- events from the worker -------------------------------------------------------------------
    _progress_format = "%v / %m steps"

    def _show_progress(self, step: int, total: int | None) -> None:
        if total is None:  # a run the clock ends (trained with --minutes only)
            self._progress_format = "step %v · no step limit"
            self.progress.setRange(0, max(step, 1))
        else:
            self._progress_format = "%v / %m steps"
            self.progress.setRange(0, total)
        self.progress.setFormat(("Paused · " if self.pause_button.isChecked() else "") + self._progress_format)
        self.progress.setValue(step)

    def _on_items(self, items: list) -> None:
        from ...training.events import CheckpointSaved, StepMetrics, TrainStarted

        metrics = [it for it in items if isinstance(it, StepMetrics)]
        if metrics:
            self.metrics_received += len(metrics)
            self.loss_plot.add_points([m.step for m in metrics], [m.loss for m in metrics],
                                      [m.loss_smooth for m in metrics])
            last = metrics[-1]
            self._show_progress(last.step, last.total_steps)
            of = _of_total(last.total_steps)
            if self.pause_button.isChecked():
                self._show_paused()  # a log that was on its way when Pause was pressed
            else:
                left = format_time_left(last.eta_sec)
                self.stats.setText(f"step {last.step:,}{of} · {last.images_per_sec:,.0f} images/s · "
                                   f"lr {last.lr:.2e}" + (f" · {left}" if left else ""))
            if last.bucket_loss:
                self.bucket_plot.set_buckets(last.bucket_loss, self.state.schedule[1])
            if not (self.pause_button.isChecked()):
                self.state.begin("training", f"Training: step {last.step:,}{of}")
        for it in items:
            if isinstance(it, jobs.TrainerReady):
                self.state.set_trainer(it.trainer)
            elif isinstance(it, TrainStarted):
                what = "Resumed" if it.resumed else "Started"
                self.stats.setText(
                    f"{what} at step {it.start_step:,} on {it.device} ({it.precision}) · "
                    f"{it.num_parameters / 1e6:.2f}M parameters · "
                    f"{it.num_images:,} images"
                )
                self._show_progress(it.start_step, it.total_steps)
                if it.resumed and self.loss_plot.num_points == 0:
                    self._load_history(it.run_dir)  # read on a worker thread
            elif isinstance(it, jobs.PreviewGrid):
                self.preview.set_image(it.grid)
                self.preview.caption.setText(f"Preview samples (EMA) · step {it.step:,}")
            elif isinstance(it, CheckpointSaved):
                self.run_label.setText(f"Run folder: {self.run_dir} · last checkpoint at step {it.step:,}")
            elif isinstance(it, jobs.QualityPoint):
                self.quality_plot.add_point(it)
            elif isinstance(it, jobs.QualityNote) and it.text.startswith("quality: not scored"):
                self.quality_plot.set_note(it.text)

    def _load_history(self, run_dir: str) -> None:
        """Read the run's metrics on a worker thread, then plot them."""
        task = Task(lambda state: load_history(run_dir), name="history")
        task.succeeded.connect(self._show_history)
        self._history_task = task  # keep a reference until it ends
        task.finished.connect(lambda: setattr(self, "_history_task", None))
        task.start()

    def _show_history(self, history: History) -> None:
        if not history.steps or self.loss_plot.num_points:
            return
        self.loss_plot.add_points(history.steps, history.losses, history.smoothed)
        if not self.is_running():
            self.progress.setRange(0, self.session.history_total(history))
            self.progress.setValue(history.last_step)
        if history.buckets:
            self.bucket_plot.set_buckets(history.buckets, self.state.schedule[1])

    def _on_finished(self, end) -> None:
        result = end.result if end is not None else None
        self.last_finished = result
        if result is None:
            self.stats.setText("Stopped.")
        else:
            self.stats.setText(result.message)
            self.progress.setValue(result.step)
            if result.reason.failed:
                self.state.report_error(result.message,
                                        f"Run folder: {self.run_dir}\nLast good checkpoint: {result.checkpoint}")
            self.session.finished(end)  # the run can be continued with Start
        self.state.message.emit(result.message if result is not None else "Training stopped")
        self._outcome = (result,)

    def _on_failed(self, message: str, details: str) -> None:
        self.stats.setText("Training failed.")
        self.state.report_error(message, details)
        self._outcome = (None,)

    def _on_task_finished(self, task: Task) -> None:
        if self.task is task:
            self.task = None
            self.control = None
            self.state.end("training")
            self._update_buttons()
        outcome, self._outcome = getattr(self, "_outcome", None), None
        if outcome is not None:
            self.training_finished.emit(outcome[0])  # after Start is enabled again

    # -- runs -------------------------------------------------------------------------------------
    def _ask_run_folder(self) -> str | None:
        from .. import settings as settings_mod

        default = str(paths.default_runs_dir()) if paths.default_runs_dir().exists() else os.path.expanduser("~")
        path = QFileDialog.getExistingDirectory(self, "Open Run Folder", settings_mod.last_dir("runs", default))
        return path or None

    def open_run(self, path: str | None = None) -> bool:
        """Read a run's settings (on a worker thread) so that Start continues it; ``run_opened`` once shown.

        False when nothing was started (training runs, another run is being read, or no folder chosen)."""
        if self.is_running() or self._open_task is not None:
            return False
        path = path or self.ask_run_folder()
        if not path:
            return False
        task = Task(lambda state: read_run(path), name="open-run")
        task.succeeded.connect(lambda run, p=path: self._show_opened_run(p, run))
        task.failed.connect(lambda message, details: self.state.report_error(f"Cannot open this run: {message}", ""))
        task.finished.connect(self._open_run_finished)
        self._open_task = task
        self.stats.setText(f"Reading {path}…")
        task.start()
        self._update_buttons()
        return True

    def _open_run_finished(self) -> None:
        self._open_task = None
        self._update_buttons()

    def _show_opened_run(self, path: str, run: OpenedRun) -> None:
        if self.is_running():
            return  # training started while the run was read: it keeps its settings
        from .. import settings as settings_mod

        settings_mod.remember_dir("runs", Path(path).absolute().parent)  # the next dialog lists this run
        self.session.opened(path, run.config)
        self.set_config(run.config)
        self.loss_plot.clear()
        self.bucket_plot.clear()
        self._load_history(path)
        self.quality_plot.clear()
        self.quality_plot.load_run(path)
        if run.preview is not None:
            self.preview.set_image(run.preview)
            self.preview.caption.setText(f"Preview samples (EMA) · {run.preview_name.replace('_', ' ')}")
        self.run_label.setText(f"Continuing run: {path}")
        self.stats.setText("Press Continue Run to resume from the last checkpoint.")
        self._update_buttons()
        self.run_opened.emit(path)

    def new_run(self) -> None:
        """Forget an opened run: Start makes a new one."""
        self.session.forget()
        self.run_label.setText("A new run will be created in " + str(paths.default_runs_dir()))
        self.progress.setValue(0)
        self._steps_changed(self.steps_spin.value())
        self._update_buttons()
