"""The noise schedule: beta_t, alpha-bar_t and SNR(t) = alpha-bar_t / (1 - alpha-bar_t), stacked
with a shared t axis, and a marker at the current timestep."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGraphicsItem, QLabel, QVBoxLayout, QWidget

from . import plotting


class SchedulePlot(QWidget):
    def __init__(self, parent=None, title: str = "Noise schedule", compact: bool = False,
                 empty_text: str = "No schedule yet."):
        super().__init__(parent)
        plotting.configure()
        self.view = pg.GraphicsLayoutWidget()
        self.compact = compact
        self.view.setMinimumHeight(210 if compact else 270)
        self.view.ci.setSpacing(0)
        self.plots: list[pg.PlotItem] = []
        self.curves: list[pg.PlotDataItem] = []
        self.markers: list[pg.InfiniteLine] = []
        rows = [("β_t", plotting.BLUE, False), ("ᾱ_t", plotting.ORANGE, False), ("SNR", plotting.GREEN, True)]
        for i, (name, colour, log) in enumerate(rows):
            p = self.view.addPlot(row=i, col=0, axisItems=plotting.grid_axes())
            plotting.style_plot(p, left=name, bottom="timestep t" if i == len(rows) - 1 else "")
            p.setMouseEnabled(x=False, y=False)
            p.getAxis("left").setWidth(56)
            if log:
                p.setLogMode(x=False, y=True)
            if i < len(rows) - 1:
                p.getAxis("bottom").setStyle(showValues=False)
            if self.plots:
                p.setXLink(self.plots[0])
            curve = p.plot([], [], pen=pg.mkPen(colour, width=2))
            # The curves change only with the schedule, the marker moves 4 times a second while a
            # chain runs: redraw each curve from a cached pixmap (a repaint 8 -> 5 ms).
            curve.curve.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
            marker = pg.InfiniteLine(angle=90, movable=False,
                                     pen=pg.mkPen(plotting.VERMILION, width=1.5, style=Qt.PenStyle.DashLine))
            marker.setVisible(False)
            p.addItem(marker, ignoreBounds=True)
            self.plots.append(p)
            self.curves.append(curve)
            self.markers.append(marker)
        self.title = QLabel(f"<b>{title}</b>")
        self.readout = QLabel("")
        self.readout.setStyleSheet("color: palette(mid);")
        plotting.quiet_label(self.readout)
        self.readout.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.placeholder = plotting.Placeholder(self.view, empty_text)
        lay.addWidget(self.title)
        lay.addWidget(self.placeholder.stack, 1)
        lay.addWidget(self.readout)
        self._betas = self._abar = self._snr = None
        self.marked_t: int | None = None
        self.label = ""

    @property
    def timesteps(self) -> int:
        return 0 if self._betas is None else len(self._betas)

    def set_schedule(self, betas: np.ndarray, alphas_cumprod: np.ndarray, snr: np.ndarray | None = None,
                     label: str = "") -> None:
        betas = np.asarray(betas, dtype=np.float64)
        abar = np.asarray(alphas_cumprod, dtype=np.float64)
        if snr is None:
            snr = abar / np.maximum(1.0 - abar, 1e-300)
        self._betas, self._abar, self._snr = betas, abar, np.asarray(snr, dtype=np.float64)
        self.label = label
        t = np.arange(len(betas))
        self.curves[0].setData(t, betas)
        self.curves[1].setData(t, abar)
        self.curves[2].setData(t, np.clip(self._snr, 1e-12, None))
        self.plots[0].setXRange(0, max(1, len(betas) - 1), padding=0.01)
        log_snr = np.log10(np.clip(self._snr, 1e-12, None))
        self.plots[2].getAxis("left").setTicks([plotting.decade_ticks(float(log_snr.min()), float(log_snr.max()),
                                                                      most=3 if self.compact else 5), []])
        self.placeholder.set_empty(False)
        if self.marked_t is not None and self.marked_t >= len(betas):
            self.marked_t = len(betas) - 1
        self._update_readout()

    def set_marker(self, t: int | None) -> None:
        """Mark timestep ``t`` (0-based) on every row; ``None`` hides the marker."""
        self.marked_t = None if t is None else int(t)
        for m in self.markers:
            m.setVisible(t is not None)
            if t is not None:
                m.setValue(int(t))
        self._update_readout()

    def _update_readout(self) -> None:
        if self._betas is None:
            self.readout.setText("")
            return
        head = f"{self.label} · T = {len(self._betas)}" if self.label else f"T = {len(self._betas)}"
        t = self.marked_t
        if t is None or not 0 <= t < len(self._betas):
            self.readout.setText(head)
            return
        self.readout.setText(
            f"{head} · t = {t}: β = {self._betas[t]:.3g}, ᾱ = {self._abar[t]:.4g}, SNR = {self._snr[t]:.3g}"
        )
