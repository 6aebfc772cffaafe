"""The training-loss plot (raw + smoothed) and the loss per timestep bucket.

Hours of training give hundreds of thousands of points. The plot keeps the full history in
growing numpy buffers, and a timer (4 Hz, only when something changed) hands pyqtgraph a
min/max-decimated copy of at most ~2 × ``max_bins`` points through ``setData`` on one persistent
``PlotDataItem`` per curve — never one item per point, never a redraw per point.

Each update costs one repaint, on the UI thread, so they are kept cheap (ui-stall benchmark,
issue #5): the decimation only adds the new runs of points; the axes are set before the repaint
(pyqtgraph's auto-range ran inside it and took a second repaint) and change only when the data
outgrow them, by ``X_HEADROOM`` past the last step, or when the loss range shrinks a lot (a new
range re-lays out an axis: about 3 ms each); the bucket bars follow the latest values at the
same 4 Hz however often the trainer reports.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from . import plotting


def decimate_minmax(x: np.ndarray, y: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the min and the max of ``y`` in each of ``bins`` equal runs of points (in order).

    Peaks and dips survive (unlike striding), and the output has at most ``2 * bins + per`` points.
    """
    n = len(x)
    if n <= 2 * bins:
        return x, y
    per = -(-n // bins)  # ceil
    m = (n // per) * per
    xs, ys = _minmax_runs(x[:m], y[:m], per)
    return np.concatenate([xs, x[m:]]), np.concatenate([ys, y[m:]])


def _minmax_runs(x: np.ndarray, y: np.ndarray, per: int) -> tuple[np.ndarray, np.ndarray]:
    """The min and max of each run of ``per`` points, in order (``len(x)`` is a multiple of ``per``)."""
    xr = x.reshape(-1, per)  # (runs, per)
    yr = y.reshape(-1, per)  # (runs, per)
    with np.errstate(invalid="ignore"):
        imin = np.nanargmin(np.where(np.isnan(yr), np.inf, yr), axis=1)
        imax = np.nanargmax(np.where(np.isnan(yr), -np.inf, yr), axis=1)
    first, second = np.minimum(imin, imax), np.maximum(imin, imax)
    rows = np.arange(len(yr))
    xs = np.stack([xr[rows, first], xr[rows, second]], axis=1).ravel()  # (2 * runs,)
    ys = np.stack([yr[rows, first], yr[rows, second]], axis=1).ravel()  # (2 * runs,)
    return xs, ys


class _Decimator:
    """``decimate_minmax`` of a series that only grows, without redoing the runs already done.

    The runs are aligned at multiples of ``per`` from the first point, so while ``per`` stays the
    same (for ``bins`` points at a time) a finished run never changes: only the new ones are
    computed: at 200,000 points (hours of training) 0.02 ms a redraw instead of 5 ms per curve.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._per = 0
        self._done = 0  # points already turned into runs
        self._xs, self._ys = _Series(), _Series()

    def __call__(self, x: np.ndarray, y: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(x)
        if n <= 2 * bins:
            self.reset()
            return x, y
        per = -(-n // bins)
        if per != self._per or self._done > n:
            self.reset()
            self._per = per
        m = (n // per) * per
        if m > self._done:
            xs, ys = _minmax_runs(x[self._done:m], y[self._done:m], per)
            self._xs.extend(xs)
            self._ys.extend(ys)
            self._done = m
        return np.concatenate([self._xs.values, x[m:]]), np.concatenate([self._ys.values, y[m:]])


class _Series:
    """A growing float64 buffer (amortised O(1) append)."""

    def __init__(self, capacity: int = 1024):
        self._a = np.empty(capacity, dtype=np.float64)
        self.n = 0

    def extend(self, values) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        need = self.n + len(v)
        if need > len(self._a):
            grown = np.empty(max(need, 2 * len(self._a)), dtype=np.float64)
            grown[: self.n] = self._a[: self.n]
            self._a = grown
        self._a[self.n:need] = v
        self.n = need

    def clear(self) -> None:
        self.n = 0

    @property
    def values(self) -> np.ndarray:
        return self._a[: self.n]


X_HEADROOM = 0.05  # the step axis, when the run outgrows it, extends this fraction past the last step
Y_REFIT = 0.7  # the loss axis refits when the loss spans less than this fraction of it


class LossPlot(QWidget):
    """Raw and smoothed loss against step, with a log-scale toggle.

    The step axis shows every step from the first, with up to ``X_HEADROOM`` of room to the
    right; the loss axis shows every loss, with pyqtgraph's auto-range padding when it refits.
    Panning or zooming by hand stops both from following the data until :meth:`clear`.
    """

    log_scale_changed = Signal(bool)

    def __init__(self, parent=None, max_bins: int = 1500, redraw_hz: float = 4.0):
        super().__init__(parent)
        plotting.configure()
        self.max_bins = max_bins
        self._steps, self._raw, self._smooth = _Series(), _Series(), _Series()
        self._dirty = False
        self.redraw_count = 0

        self.plot_widget = pg.PlotWidget(axisItems=plotting.grid_axes())
        self.plot_widget.setMinimumHeight(160)
        self.plot = self.plot_widget.getPlotItem()
        plotting.style_plot(self.plot, left="loss", bottom="step")
        self.plot.addLegend(offset=(-10, 10))
        # One persistent item per curve, updated with setData.
        # The raw loss in the colour of 45 % opacity, drawn opaque (plotting.faded): with 20,000
        # noisy losses a repaint took 43 ms with the translucent curve, 14 ms with this one.
        self.raw_curve = self.plot.plot([], [], pen=pg.mkPen(plotting.faded(plotting.BLUE, 0.45), width=1), name="loss")
        self.smooth_curve = self.plot.plot([], [], pen=pg.mkPen(plotting.VERMILION, width=2), name="smoothed")
        self.plot.setClipToView(True)
        self.plot.disableAutoRange()
        self.x_range: tuple[float, float] | None = None  # the ranges set by the plot itself
        self.y_range: tuple[float, float] | None = None
        self._decimate_raw, self._decimate_smooth = _Decimator(), _Decimator()
        self._follow = True
        self.plot.vb.sigRangeChangedManually.connect(self._stop_following)

        self.log_check = QCheckBox("Log scale")
        self.log_check.setToolTip("Show the loss on a logarithmic axis; useful once it has dropped a lot.")
        self.log_check.toggled.connect(self.set_log_scale)
        self.readout = QLabel("No training yet")
        self.readout.setStyleSheet("color: palette(mid);")
        plotting.quiet_label(self.readout)
        top = QHBoxLayout()
        title = QLabel("<b>Training loss</b>")
        top.addWidget(title)
        top.addSpacing(12)
        top.addWidget(self.readout, 1)
        top.addWidget(self.log_check)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.placeholder = plotting.Placeholder(self.plot_widget, "The loss appears here once training starts.")
        lay.addLayout(top)
        lay.addWidget(self.placeholder.stack, 1)

        self._timer = QTimer(self)
        self._timer.setInterval(int(1000 / redraw_hz))
        self._timer.timeout.connect(self.redraw)
        self._timer.start()

    # -- data -----------------------------------------------------------------------------------
    def add_points(self, steps, raw, smooth) -> None:
        """Append points; the plot catches up at its next timer tick."""
        self._steps.extend(steps)
        self._raw.extend(raw)
        self._smooth.extend(smooth)
        self._dirty = True
        if len(self._steps.values):
            self.placeholder.set_empty(False)
            self.readout.setText(
                f"step {int(self._steps.values[-1]):,} · loss {self._raw.values[-1]:.4f} · smoothed "
                f"{self._smooth.values[-1]:.4f}"
            )

    def clear(self) -> None:
        for s in (self._steps, self._raw, self._smooth):
            s.clear()
        self._decimate_raw.reset()
        self._decimate_smooth.reset()
        self._dirty = True
        self.readout.setText("No training yet")
        self.placeholder.set_empty(True)
        self.x_range, self.y_range, self._follow = None, None, True
        self.redraw()

    def _stop_following(self, *_) -> None:
        self._follow = False

    @property
    def num_points(self) -> int:
        return self._steps.n

    def set_log_scale(self, on: bool) -> None:
        if self.log_check.isChecked() != on:
            self.log_check.setChecked(on)
            return
        self.plot.setLogMode(x=False, y=on)
        self.plot.setLabel("left", "loss (log)" if on else "loss")
        self._dirty = True
        self.y_range = None
        self._log_ticks()
        self.redraw()
        self.log_scale_changed.emit(on)

    @property
    def log_scale(self) -> bool:
        return self.log_check.isChecked()

    # -- drawing --------------------------------------------------------------------------------
    def redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        x = self._steps.values
        xr, raw = self._decimate_raw(x, self._raw.values, self.max_bins)
        xs, smooth = self._decimate_smooth(x, self._smooth.values, self.max_bins)
        if self.log_scale:  # log axis: keep the curve finite
            raw, smooth = np.maximum(raw, 1e-12), np.maximum(smooth, 1e-12)
        self.raw_curve.setData(xr, raw)
        self.smooth_curve.setData(xs, smooth)
        if self._follow and len(x):
            self._follow_data(float(x[0]), float(x[-1]))
        self.redraw_count += 1

    def _follow_data(self, first_step: float, last_step: float) -> None:
        if self.x_range is None or first_step < self.x_range[0] or last_step > self.x_range[1]:
            self.x_range = (first_step, last_step + max(1.0, X_HEADROOM * (last_step - first_step)))
            self.plot.setXRange(*self.x_range)
        vb = self.plot.vb
        yb = vb.childrenBounds()[1]  # the curves' loss range, in view units (log10 on a log axis)
        if yb is None or not np.all(np.isfinite(yb)):
            return
        lo, hi = yb
        if self.y_range is not None and self.y_range[0] <= lo and hi <= self.y_range[1] \
                and hi - lo >= Y_REFIT * (self.y_range[1] - self.y_range[0]):
            return
        pad = (hi - lo) * vb.suggestPadding(1)  # as pyqtgraph's auto-range
        vb.setYRange(lo - pad, hi + pad, padding=0)
        self.y_range = tuple(vb.viewRange()[1])
        self._log_ticks()

    def _log_ticks(self) -> None:
        """On a log axis that spans less than a decade pyqtgraph labels no tick at all: give it a few."""
        axis = self.plot.getAxis("left")
        if self.log_scale and self.y_range is not None and self.y_range[1] - self.y_range[0] < 1.0:
            axis.setTicks([plotting.sub_decade_ticks(*self.y_range), []])
        else:
            axis.setTicks(None)

    def displayed_points(self) -> int:
        """How many points the raw curve currently hands to Qt (after decimation)."""
        xs, _ = self.raw_curve.getData()
        return 0 if xs is None else len(xs)


class BucketLossPlot(QWidget):
    """Mean loss in each of the trainer's t-buckets, as bars (one persistent BarGraphItem).

    The trainer reports buckets with every step; the bars show the latest values at most
    ``redraw_hz`` times a second (the first at once, the last always).
    """

    def __init__(self, parent=None, redraw_hz: float = 4.0):
        super().__init__(parent)
        plotting.configure()
        self.plot_widget = pg.PlotWidget(axisItems=plotting.grid_axes())
        self.plot_widget.setMinimumHeight(120)
        self.plot = self.plot_widget.getPlotItem()
        plotting.style_plot(self.plot, left="loss", bottom="timestep t")
        self.bars = pg.BarGraphItem(x=[], height=[], width=1.0, brush=pg.mkBrush(plotting.GREEN),
                                    pen=pg.mkPen(None))
        self.plot.addItem(self.bars)
        self._heights: np.ndarray | None = None
        self._pending: tuple[list, int] | None = None
        self._timesteps: int | None = None
        self.redraw_count = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(1000 / redraw_hz))
        self._timer.timeout.connect(self._on_timer)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        title = QLabel("<b>Loss per timestep</b>")
        title.setToolTip("Mean loss in each tenth of the timesteps: small t = little noise, "
                         "large t = almost pure noise.")
        self.plot_widget.setToolTip(title.toolTip())
        self.placeholder = plotting.Placeholder(self.plot_widget, "The loss per timestep appears after the first "
                                                                  "logged steps.")
        lay.addWidget(title)
        lay.addWidget(self.placeholder.stack, 1)

    def set_buckets(self, losses: list, timesteps: int) -> None:
        """Show these bucket losses (``None`` = no sample yet) over t = 0 … ``timesteps``."""
        if len(losses) == 0:
            return
        self._pending = (list(losses), int(timesteps))
        if not self._timer.isActive():
            self._on_timer()

    def _on_timer(self) -> None:
        if self._pending is None:
            return
        (losses, timesteps), self._pending = self._pending, None
        k = len(losses)
        width = timesteps / k
        centres = (np.arange(k) + 0.5) * width
        h = np.array([np.nan if v is None else float(v) for v in losses], dtype=np.float64)
        self._heights = h
        self.bars.setOpts(x=centres, height=np.nan_to_num(h, nan=0.0), width=width * 0.85)
        self.placeholder.set_empty(False)
        if timesteps != self._timesteps:
            self._timesteps = timesteps
            self.plot.setXRange(0, timesteps, padding=0.02)
        self.plot.vb.prepareForPaint()  # fit the loss axis now, not in the repaint (which took a second one)
        self.redraw_count += 1
        self._timer.start()  # values that come sooner wait for it

    def clear(self) -> None:
        self._pending = None
        self._timer.stop()
        self._heights = None
        self.bars.setOpts(x=[], height=[])
        self.placeholder.set_empty(True)

    @property
    def heights(self) -> np.ndarray | None:
        """The heights on screen (``nan`` for an empty bucket)."""
        return self._heights
