"""Evaluate panel (issue 17): how good are the samples, when did quality stop improving, are they copies?

- **Evaluate**: N samples of the chosen checkpoint (or of every checkpoint) scored against the
  training images (``evaluation.metrics``): a table of KID, Fréchet distance, precision / recall /
  density / coverage, each beside the real-vs-real floor.
- **KID per step** beside the smoothed loss: from every evaluation kept in RUN/evaluation.jsonl.
- **Check for Copies**: 64 samples, each beside its nearest training images (``evaluation.memorization``).
- **Time-lapse**: the run's preview grids as a GIF and a contact sheet (``evaluation.timelapse``).

Every file read, sample and score runs on a worker thread (:mod:`..eval_jobs`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ... import paths
from .. import eval_jobs
from ..qimage import to_pixmap
from ..state import StudioState
from ..widgets import plotting
from ..workers import Task
from .common import ProgressRow, add_row, int_spin, section, settings_column

NEAREST_SAMPLES = 64


class EvaluatePanel(QWidget):
    evaluation_finished = Signal(object)  # EvalResults | None
    nearest_finished = Signal(object)  # NearestResults | None
    timelapse_finished = Signal(object)  # dict | None
    run_opened = Signal(object)  # RunSummary | None

    def __init__(self, state: StudioState, parent=None):
        super().__init__(parent)
        self.state = state
        self.task: Task | None = None
        self.run: eval_jobs.RunSummary | None = None
        self.results: eval_jobs.EvalResults | None = None
        self.nearest: eval_jobs.NearestResults | None = None
        self.device = "auto"
        self._outcome = None  # the running task's result, announced when its thread has ended
        self.ask_run_folder = self._ask_run_folder  # replaceable (tests)
        self.ask_save_path = self._ask_save_path

        left = self._build_settings()
        self.progress = ProgressRow()
        self.progress.cancel_clicked.connect(self.cancel)
        self.summary = QLabel("Open a run, then press Evaluate.")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.views = QTabWidget()
        self.views.addTab(self._build_quality_view(), "Quality")
        self.views.addTab(self._build_nearest_view(), "Nearest training images")
        right = QVBoxLayout()
        right.addWidget(self.summary)
        right.addWidget(self.progress)
        right.addWidget(self.views, 1)
        lay = QHBoxLayout(self)
        lay.addWidget(left)
        lay.addLayout(right, 1)
        self._update_buttons()

    # -- layout ---------------------------------------------------------------------------------------
    def _build_settings(self) -> QWidget:
        """The left column: the run, the quality settings and the actions."""
        run_box, run_form = section("Run")
        self.run_label = QLabel("No run opened")
        self.run_label.setWordWrap(True)
        self.open_button = QPushButton("Open Run…")
        self.open_button.clicked.connect(lambda: self.open_run())
        run_form.addRow(self.run_label)
        run_form.addRow(self.open_button)
        self.checkpoint_combo = QComboBox()
        add_row(run_form, "Checkpoint", self.checkpoint_combo,
                "Which saved weights to judge; the newest good one by default.")

        box, form = section("Quality")
        self.num_spin = int_spin(16, 50000, 256, 64)
        add_row(form, "Samples", self.num_spin,
                "How many images to generate and score. Figures are comparable only at the same number; "
                "256 is enough for KID on a CPU, more on a GPU.")
        self.all_check = QCheckBox("Every checkpoint (KID per step)")
        self.all_check.setToolTip("Score each saved checkpoint, oldest first, to see when quality stops improving.")
        form.addRow(self.all_check)
        self.cost_label = QLabel("")
        self.cost_label.setWordWrap(True)
        self.cost_label.setStyleSheet("color: palette(mid);")
        form.addRow(self.cost_label)
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.setToolTip("Generate the samples and score them against the training images.")
        self.evaluate_button.clicked.connect(self.evaluate)
        form.addRow(self.evaluate_button)

        box2, form2 = section("Memorisation and time-lapse")
        self.nearest_button = QPushButton(f"Check {NEAREST_SAMPLES} Samples for Copies")
        self.nearest_button.setToolTip("Generate samples and show each beside its nearest training images.")
        self.nearest_button.clicked.connect(self.check_copies)
        self.timelapse_button = QPushButton("Make Time-lapse…")
        self.timelapse_button.setToolTip("The run's preview grids as a GIF, with a contact sheet beside it.")
        self.timelapse_button.clicked.connect(lambda: self.make_timelapse())
        form2.addRow(self.nearest_button)
        form2.addRow(self.timelapse_button)
        self.num_spin.valueChanged.connect(self._update_cost)
        self.all_check.toggled.connect(self._update_cost)
        left = settings_column([run_box, box, box2])
        left.setMinimumWidth(300)
        left.setMaximumWidth(380)
        return left

    def _build_quality_view(self) -> QSplitter:
        """The metrics table above the loss and KID-per-step plots."""
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Metric", "Model", "Floor (real vs real)", "Meaning"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)

        plotting.configure()
        self.loss_plot = pg.PlotWidget(axisItems=plotting.grid_axes())
        plotting.style_plot(self.loss_plot.getPlotItem(), left="loss (smoothed)", bottom="step")
        self.loss_curve = self.loss_plot.plot([], [], pen=pg.mkPen(plotting.BLUE, width=2))
        self.kid_plot = pg.PlotWidget(axisItems=plotting.grid_axes())
        plotting.style_plot(self.kid_plot.getPlotItem(), left="KID (lower is better)", bottom="step")
        self.kid_plot.setXLink(self.loss_plot)
        self.kid_curve = self.kid_plot.plot([], [], pen=pg.mkPen(plotting.VERMILION, width=2), symbol="o",
                                            symbolSize=6, symbolBrush=plotting.VERMILION)
        self.kid_bars = pg.ErrorBarItem(x=np.zeros(0), y=np.zeros(0), top=np.zeros(0), bottom=np.zeros(0),
                                        beam=0, pen=pg.mkPen(plotting.VERMILION))
        self.kid_plot.addItem(self.kid_bars)
        self.floor_line = pg.InfiniteLine(angle=0, pen=pg.mkPen(plotting.GREEN, width=1, style=Qt.PenStyle.DashLine),
                                          label="floor", labelOpts={"position": 0.05, "color": plotting.GREEN})
        self.floor_line.setVisible(False)
        self.kid_plot.addItem(self.floor_line)
        plots = QSplitter(Qt.Orientation.Horizontal)
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.kid_plot)

        quality = QSplitter(Qt.Orientation.Vertical)
        quality.addWidget(self.table)
        quality.addWidget(plots)
        quality.setStretchFactor(0, 1)
        quality.setStretchFactor(1, 2)
        quality.setSizes([270, 430])  # the whole table shows
        return quality

    def _build_nearest_view(self) -> QWidget:
        """The copy check's table: each sample beside its three nearest training images."""
        self.nearest_summary = QLabel("Press Check for Copies.")
        self.nearest_summary.setWordWrap(True)
        self.nearest_table = QTableWidget(0, 5)
        self.nearest_table.setHorizontalHeaderLabels(
            ["Sample", "Nearest", "2nd", "3rd", "Distance to the nearest / typical distance between training images"])
        self.nearest_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.nearest_table.verticalHeader().setVisible(False)
        self.nearest_table.horizontalHeader().setStretchLastSection(True)
        nearest_w = QWidget()
        nl = QVBoxLayout(nearest_w)
        nl.setContentsMargins(0, 0, 0, 0)
        nl.addWidget(self.nearest_summary)
        nl.addWidget(self.nearest_table, 1)
        return nearest_w

    # -- run ----------------------------------------------------------------------------------------
    def _ask_run_folder(self) -> str | None:
        return QFileDialog.getExistingDirectory(self, "Open Run Folder", str(paths.default_runs_dir())) or None

    def _ask_save_path(self, title: str, filt: str, default: str) -> str | None:
        return QFileDialog.getSaveFileName(self, title, default, filt)[0] or None

    def open_run(self, path: str | None = None) -> bool:
        """Read a run's checkpoints, loss and earlier evaluations (on a worker). False if nothing started."""
        path = path or self.ask_run_folder()
        if not path or not self._can_start():
            return False
        return self._start(eval_jobs.make_open_run(str(path), self.device), "evaluate-open",
                           f"Opening {Path(path).name}…", self._on_run, self.run_opened)

    def _on_run(self, summary: eval_jobs.RunSummary) -> None:
        self.run = summary
        self.run_label.setText(f"{summary.run_dir}\n{len(summary.checkpoints)} checkpoint(s), "
                               f"{summary.previews} preview grid(s)")
        self.checkpoint_combo.clear()
        self.checkpoint_combo.addItem("Newest good checkpoint", None)
        for step, p in reversed(summary.checkpoints):
            self.checkpoint_combo.addItem(f"Step {step:,}", p)
        steps, loss = summary.loss
        self.loss_curve.setData(steps, loss)
        self._plot_history(summary.history)
        name = Path(summary.run_dir).name
        self.summary.setText(f"{name}: press Evaluate." if not summary.history
                             else f"{name}: {len(summary.history)} earlier evaluation(s) plotted.")
        self._update_cost()

    # -- evaluate -----------------------------------------------------------------------------------
    def evaluate(self) -> bool:
        if self.run is None:
            self.state.report_error("Open a run first: Evaluate scores a run's checkpoints.", "")
            return False
        if not self._can_start():
            return False
        job = eval_jobs.make_evaluate(self.run.run_dir, num=int(self.num_spin.value()),
                                      checkpoint=self.checkpoint_combo.currentData(),
                                      all_checkpoints=self.all_check.isChecked(), device=self.device)
        what = "every checkpoint" if self.all_check.isChecked() else "the checkpoint"
        return self._start(job, "evaluate", f"Scoring {what} with {self.num_spin.value()} samples…",
                           self._on_evaluated, self.evaluation_finished, items=self._on_partial)

    def _on_partial(self, items: list) -> None:
        for r in items:
            self.summary.setText(r.summary())

    def _on_evaluated(self, res: eval_jobs.EvalResults) -> None:
        self.results = res
        last = res.readouts[-1]
        self.show_readout(last)
        self._plot_history(res.history)
        self._update_cost()

    def show_readout(self, r) -> None:
        rows = r.rows()
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, text in enumerate(row):
                self.table.setItem(i, j, QTableWidgetItem(text))
        notes = "".join(f"<br><i>{n}</i>" for n in r.notes)
        self.summary.setText(f"<b>{r.summary()}</b><br>{r.sampling}{notes}")

    def _plot_history(self, history: list) -> None:
        n = {d.get("num_samples") for d in history}
        if not history:
            self.kid_curve.setData([], [])
            self.kid_bars.setData(x=np.zeros(0), y=np.zeros(0), top=np.zeros(0), bottom=np.zeros(0))
            self.floor_line.setVisible(False)
            return
        num = max(n, key=lambda k: sum(d.get("num_samples") == k for d in history))  # the N used most
        pts = sorted((d for d in history if d.get("num_samples") == num and d.get("step") is not None),
                     key=lambda d: d["step"])
        x = np.array([d["step"] for d in pts], float)
        y = np.array([d["kid"] for d in pts], float)
        lo = np.array([d["kid_lo"] for d in pts], float)
        hi = np.array([d["kid_hi"] for d in pts], float)
        self.kid_curve.setData(x, y)
        self.kid_bars.setData(x=x, y=y, top=hi - y, bottom=y - lo)
        self.floor_line.setValue(float(np.median([d["floor_kid"] for d in pts])))
        self.floor_line.setVisible(True)
        self.kid_plot.getPlotItem().setTitle(f"KID per step, N = {num}", size="9pt")

    def kid_points(self) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.kid_curve.getData()
        return (np.zeros(0), np.zeros(0)) if x is None else (np.asarray(x), np.asarray(y))

    def _update_cost(self, *_) -> None:
        if self.run is None:
            self.cost_label.setText("")
            return
        k = len(self.run.checkpoints) if self.all_check.isChecked() else 1
        text = f"Costs {k} x {self.num_spin.value():,} samples ({self.run.sampling}) plus scoring."
        if self.results is not None:
            scored = max(1, self.results.readouts[-1].num_samples)
            per = self.results.seconds_per_checkpoint * self.num_spin.value() / scored
            text += f" Last time's pace: about {per * k:.0f} s."
        elif self.run.seconds_per_sample is not None:
            est = k * (self.run.seconds_per_sample * self.num_spin.value() + 1.0)
            text += f" Estimated: about {est:.0f} s (timed on this machine)."
        self.cost_label.setText(text)

    # -- nearest ------------------------------------------------------------------------------------
    def check_copies(self) -> bool:
        if self.run is None:
            self.state.report_error("Open a run first: the copy check samples a run's checkpoint.", "")
            return False
        if not self._can_start():
            return False
        job = eval_jobs.make_nearest(self.run.run_dir, num=NEAREST_SAMPLES,
                                     checkpoint=self.checkpoint_combo.currentData(), device=self.device)
        return self._start(job, "evaluate-nearest", "Looking for copies of training images…", self._on_nearest,
                           self.nearest_finished)

    def _on_nearest(self, res: eval_jobs.NearestResults) -> None:
        self.nearest = res
        rep = res.report
        order = sorted(rep.matches, key=lambda m: m.pixel_ratio)
        self.nearest_table.setRowCount(len(order))
        side = res.samples.shape[1]
        scale = max(1, 48 // side)
        for i, m in enumerate(order):
            self.nearest_table.setCellWidget(i, 0, self._thumb(res.samples[m.index], scale))
            for c, j in enumerate(m.pixel_neighbours[:3]):
                tip = rep.train_paths[j] if j < len(rep.train_paths) else ""
                self.nearest_table.setCellWidget(i, c + 1, self._thumb(res.neighbours[j], scale, tip))
            text = (f"pixels {m.pixel_ratio:.2f}x, features {m.feature_ratio:.2f}x"
                    + ("  — a near-copy" if m.near_copy else ""))
            item = QTableWidgetItem(text)
            if m.near_copy:
                item.setForeground(QColor(plotting.VERMILION))
            self.nearest_table.setItem(i, 4, item)
            self.nearest_table.setRowHeight(i, side * scale + 6)
        for c in range(4):
            self.nearest_table.setColumnWidth(c, max(64, side * scale + 12))
        self.nearest_summary.setText(f"<b>Step {res.step:,}: {rep.summary()}.</b> Sorted closest first; "
                                     "a ratio under 1 means closer than two training images usually are.")
        self.views.setCurrentIndex(1)

    @staticmethod
    def _thumb(image: np.ndarray, scale: int, tip: str = "") -> QLabel:
        lab = QLabel()
        lab.setPixmap(to_pixmap(image, scale))
        lab.setAlignment(Qt.AlignmentFlag.AlignCenter)
        if tip:
            lab.setToolTip(tip)
        return lab

    # -- time-lapse ---------------------------------------------------------------------------------
    def make_timelapse(self, path: str | None = None) -> bool:
        if self.run is None:
            self.state.report_error("Open a run first: the time-lapse is made of a run's preview grids.", "")
            return False
        if self.run.previews == 0:
            self.state.report_error("This run has no preview grids; train with previews on to make a time-lapse.", "")
            return False
        path = path or self.ask_save_path("Save Time-lapse", "GIF (*.gif)",
                                          os.path.join(self.run.run_dir, "timelapse.gif"))
        if not path or not self._can_start():
            return False
        if not path.lower().endswith(".gif"):
            path += ".gif"
        sheet = path[:-4] + "_sheet.png"
        return self._start(eval_jobs.make_timelapse(self.run.run_dir, path, sheet), "evaluate-timelapse",
                           "Writing the time-lapse…", self._on_timelapse, self.timelapse_finished)

    def _on_timelapse(self, got: dict) -> None:
        self.summary.setText(f"Wrote {got['gif']} ({got['frames']} frames) and {got['sheet']}.")
        self.state.message.emit(f"Wrote {got['gif']}")

    # -- tasks --------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.task is not None and self.task.is_running()

    def _can_start(self) -> bool:
        if self.is_running():
            self.state.message.emit("The Evaluate tab is still busy; wait or cancel.")
            return False
        return True

    def _start(self, job, key: str, message: str, on_ok, finished_signal, items=None) -> bool:
        """Run ``job``; ``on_ok(result)`` on success; ``finished_signal(result or None)`` once the thread has ended."""
        task = Task(job, name=key)
        self._outcome = None
        task.progress.connect(self.progress.report)
        task.succeeded.connect(lambda r: (on_ok(r), setattr(self, "_outcome", r)))
        if items is not None:
            task.items.connect(items)
        task.failed.connect(self._on_failed)
        task.cancelled.connect(lambda: self.progress.finish("Cancelled."))
        task.finished.connect(lambda t=task, s=finished_signal: self._on_task_finished(t, s))
        self.task = task
        self.progress.start(message)
        self.state.begin("evaluate", message.rstrip("…"))
        task.start()
        self._update_buttons()
        return True

    def _on_failed(self, message: str, details: str) -> None:
        self.progress.finish("Failed.")
        self.state.report_error(message, details)

    def _on_task_finished(self, task: Task, finished_signal) -> None:
        if self.task is task:
            self.task = None
            self.state.end("evaluate")
            if self.progress.bar.isVisible():
                self.progress.finish("")
            self._update_buttons()
            outcome, self._outcome = self._outcome, None
            finished_signal.emit(outcome)

    def _update_buttons(self) -> None:
        busy = self.is_running()
        for b in (self.evaluate_button, self.nearest_button, self.timelapse_button, self.open_button):
            b.setEnabled(not busy)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def shutdown(self) -> None:
        self.cancel()
