"""Quality while training (issue 17): KID per scored checkpoint, beside the Training panel's loss plot.

``QualityPlot`` shows one point per checkpoint the trainer's scorer (``train.eval_every``) scored,
with its 95% bootstrap interval as an error bar and the real-vs-real floor as a dashed line; a
caption above says the cost before Start ("quality every K steps: N samples, about X s each") and
the latest readout during the run. It is hidden while scoring is off and nothing was scored.

The cost is timed on a worker (``jobs.make_quality_cost``: an untrained network of the run's shape);
``load_run(run_dir)`` reads a run's earlier scores (RUN/evaluation.jsonl) on a worker too. Points
arrive once per checkpoint, so each ``setData`` is one cheap repaint; the axes are set by hand.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from .. import jobs
from ..workers import Task
from . import plotting


class QualityPlot(QWidget):
    """KID against step, with interval bars and the floor; ``add_point(QualityPoint)`` adds one."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        plotting.quiet_label(self.caption)
        plotting.configure()
        self.plot = pg.PlotWidget(axisItems=plotting.grid_axes())
        self.plot.setMinimumHeight(120)
        plotting.style_plot(self.plot.getPlotItem(), left="KID (lower is better)", bottom="step")
        self.curve = self.plot.plot([], [], pen=pg.mkPen(plotting.VERMILION, width=2), symbol="o", symbolSize=6,
                                    symbolBrush=plotting.VERMILION)
        self.bars = pg.ErrorBarItem(x=np.zeros(0), y=np.zeros(0), top=np.zeros(0), bottom=np.zeros(0), beam=0,
                                    pen=pg.mkPen(plotting.VERMILION))
        self.plot.addItem(self.bars)
        self.floor_line = pg.InfiniteLine(angle=0, pen=pg.mkPen(plotting.GREEN, width=1, style=Qt.PenStyle.DashLine),
                                          label="floor", labelOpts={"position": 0.05, "color": plotting.GREEN})
        self.floor_line.setVisible(False)
        self.plot.addItem(self.floor_line)
        self.placeholder = plotting.Placeholder(self.plot, "KID of each scored checkpoint appears here")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.caption)
        lay.addWidget(self.placeholder.stack, 1)
        self._rows: list[tuple[float, float, float, float, float]] = []  # (step, kid, lo, hi, floor)
        self._enabled = False
        self._cost_task: Task | None = None
        self._pending: Callable[[], object] | None = None
        self._closed = False  # the window closed: start no further estimate
        self._runs_task: Task | None = None
        self.clear()

    # -- points -------------------------------------------------------------------------------------
    @property
    def num_points(self) -> int:
        return len(self._rows)

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, KID) as plotted."""
        a = np.array(self._rows, float).reshape(-1, 5)
        return a[:, 0], a[:, 1]

    def clear(self) -> None:
        self._rows = []
        self._redraw()

    def add_point(self, p: "jobs.QualityPoint") -> None:
        self._rows = sorted([r for r in self._rows if r[0] != p.step]
                            + [(p.step, p.kid, p.kid_lo, p.kid_hi, p.floor_kid)])
        self.caption.setText(f"<b>Quality</b> step {p.step:,} · KID {p.kid:.4f} [{p.kid_lo:.4f}, {p.kid_hi:.4f}] · "
                             f"floor {p.floor_kid:.4f} · N = {p.num_samples}")
        self.caption.setToolTip(p.summary)
        self._redraw()

    def set_note(self, text: str) -> None:
        self.caption.setText(text)

    def _redraw(self) -> None:
        a = np.array(self._rows, float).reshape(-1, 5)  # (n, 5)
        x, y, lo, hi = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
        self.curve.setData(x, y)
        self.bars.setData(x=x, y=y, top=hi - y, bottom=y - lo)
        self.placeholder.set_empty(len(a) == 0)
        if len(a):
            floor = float(np.median(a[:, 4]))
            self.floor_line.setValue(floor)
            self.floor_line.setVisible(True)
            top, bottom = max(float(hi.max()), floor), min(float(lo.min()), floor, 0.0)
            pad = 0.08 * (top - bottom or 1.0)
            self.plot.setYRange(bottom - pad, top + pad, padding=0)
            self.plot.setXRange(0, max(float(x.max()) * 1.1, 1.0), padding=0)
        else:
            self.floor_line.setVisible(False)
        self._update_visible()

    def _update_visible(self) -> None:
        self.setVisible(self._enabled or bool(self._rows))

    # -- the cost before Start ----------------------------------------------------------------------
    def show_plan(self, config: Callable[[], object]) -> None:
        """Show the cost of scoring for the config ``config()`` builds (timed on a worker); hidden when off.

        ``config`` is called here, on the UI thread (it reads widgets); a ValueError leaves the caption as is.
        """
        try:
            cfg = config()
        except ValueError:
            return
        self._enabled = cfg.train.eval_every > 0
        self._update_visible()
        if not self._enabled:
            return
        if self._cost_task is not None:  # one estimate at a time: the newest settings go next
            self._pending = config
            return
        self.caption.setText(f"quality every {cfg.train.eval_every} steps: timing one score…")
        task = Task(jobs.make_quality_cost(cfg), name="quality-cost")
        task.succeeded.connect(lambda text: self.caption.setText(text) if text else None)
        task.failed.connect(lambda message, _details: self.caption.setText(f"quality: no estimate ({message})"))
        task.finished.connect(self._cost_done)
        self._cost_task = task
        task.start()

    def shutdown(self) -> None:
        """The window closes: no estimate waits to start after the one running."""
        self._pending = None
        self._closed = True

    def _cost_done(self) -> None:
        self._cost_task = None
        pending, self._pending = self._pending, None
        if pending is not None and not self._closed:
            self.show_plan(pending)

    # -- a run's earlier scores -------------------------------------------------------------------
    def load_run(self, run_dir: str) -> None:
        """Plot the scores a run already has (its evaluation.jsonl, read on a worker)."""
        def job(state):
            from ...evaluation.metrics import read_results

            return read_results(run_dir)

        task = Task(job, name="quality-history")
        task.succeeded.connect(self._show_results)
        task.finished.connect(lambda: setattr(self, "_runs_task", None))
        self._runs_task = task
        task.start()

    def _show_results(self, results: list) -> None:
        for d in results:
            if d.get("step") is None:
                continue
            self._rows = [r for r in self._rows if r[0] != d["step"]] + [
                (float(d["step"]), d["kid"], d["kid_lo"], d["kid_hi"], d["floor_kid"])]
        self._rows.sort()
        self._redraw()

    def is_busy(self) -> bool:
        return any(t is not None and t.is_running() for t in (self._cost_task, self._runs_task))
