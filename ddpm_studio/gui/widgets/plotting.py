"""Shared pyqtgraph set-up: one look for every plot in the app."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF
from PySide6.QtGui import QColor, QPalette, QPen
from PySide6.QtWidgets import QApplication

# Colour-blind-safe (Okabe–Ito) hues for the curves.
BLUE = "#0072B2"
ORANGE = "#E69F00"
GREEN = "#009E73"
VERMILION = "#D55E00"
PURPLE = "#CC79A7"
GREY = "#999999"

_configured = False


def configure() -> None:
    """Match pyqtgraph to the application palette (light or dark) once."""
    global _configured
    if _configured:
        return
    _configured = True
    app = QApplication.instance()
    if app is not None:
        pal = app.palette()
        bg = pal.color(QPalette.ColorRole.Base)
        fg = pal.color(QPalette.ColorRole.Text)
    else:
        bg, fg = QColor("white"), QColor("black")
    # Antialiasing multiplies the cost of every repaint; curves of hundreds of points look smooth without it.
    pg.setConfigOptions(background=bg, foreground=fg, antialias=False)


def quiet_label(label) -> None:
    """A label whose text changes often: its size hint never triggers a re-layout (and a repaint
    of the plots beside it), it just shows what fits."""
    from PySide6.QtWidgets import QSizePolicy

    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.setMinimumWidth(0)


class GridAxis(pg.AxisItem):
    """An axis that draws pyqtgraph's grid for a fraction of the cost, with the same pixels.

    pyqtgraph draws the grid as translucent one-pixel lines, which Qt's raster engine blends pixel
    by pixel: one repaint of the loss plot (900 x 380 px) cost about 11 ms, 9 ms of it grid, and
    the training tab repaints several such plots while it trains (ui-stall benchmark, issue #5).
    Here (the repaint costs 2.5 ms):

    - horizontal lines are filled one-pixel-high rectangles: still translucent and drawn over the
      data as before, but blended a whole row at a time;
    - vertical lines are opaque, in exactly the colour the translucent line shows over the
      background, and :func:`style_plot` puts their axis beneath the plot's data.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pens: dict[tuple, QPen] = {}

    def drawPicture(self, p, axisSpec, tickSpecs, textSpecs):
        bg = pg.mkColor(pg.getConfigOption("background"))
        p.setRenderHint(p.RenderHint.Antialiasing, False)
        for pen, p1, p2 in tickSpecs:
            if p1.y() == p2.y():
                p.fillRect(QRectF(QPointF(p1.x(), p1.y() - 0.5), QPointF(p2.x(), p2.y() + 0.5)).normalized(),
                           pen.color())
            else:
                p.setPen(self._opaque(pen, bg))
                p.drawLine(p1, p2)
        super().drawPicture(p, axisSpec, [], textSpecs)  # the axis line and the tick labels

    def _opaque(self, pen: QPen, bg: QColor) -> QPen:
        c = pen.color()
        if c.alpha() == 255 or bg.alpha() != 255:
            return pen
        key = (c.rgba(), bg.rgba(), pen.widthF(), pen.style())
        out = self._pens.get(key)
        if out is None:
            out = self._pens[key] = QPen(pen)
            out.setColor(composed(c, bg))
        return out


def composed(colour: QColor, background: QColor) -> QColor:
    """The opaque colour a translucent ``colour`` shows over an opaque ``background``."""
    a = colour.alphaF()
    return QColor.fromRgbF(*(a * f + (1 - a) * b for f, b in ((colour.redF(), background.redF()),
                                                              (colour.greenF(), background.greenF()),
                                                              (colour.blueF(), background.blueF()))))


def faded(colour, alpha: float) -> QColor:
    """``colour`` at ``alpha`` opacity over the plots' background, as an opaque colour.

    Qt blends translucent lines pixel by pixel; an opaque line in the composed colour draws
    several times faster and looks the same, except that a translucent line also darkens where
    its segments overlap (as a dense, noisy loss curve does).
    """
    c = pg.mkColor(colour)
    c.setAlphaF(alpha)
    return composed(c, pg.mkColor(pg.getConfigOption("background")))


def grid_axes() -> dict[str, GridAxis]:
    """The ``axisItems`` for a new plot (``pg.PlotWidget(axisItems=...)``, ``addPlot(axisItems=...)``)."""
    return {"left": GridAxis("left"), "bottom": GridAxis("bottom")}


def style_plot(plot: pg.PlotItem, *, left: str = "", bottom: str = "") -> None:
    plot.showGrid(x=True, y=True, alpha=0.15)
    if isinstance(plot.getAxis("bottom"), GridAxis):
        plot.getAxis("bottom").setZValue(plot.vb.zValue() - 1)  # its opaque grid lines go beneath the data
    plot.setMenuEnabled(False)
    plot.hideButtons()
    if left:
        plot.setLabel("left", left)
    if bottom:
        plot.setLabel("bottom", bottom)
    for name in ("left", "bottom"):
        ax = plot.getAxis(name)
        ax.enableAutoSIPrefix(False)  # "β_t" stays "β_t", not "β_t (x0.001)"
        ax.setTextPen(pg.mkPen(ax.pen().color()))


class Placeholder:
    """A plot widget that shows a quiet sentence in its place until it has data (no empty 0-1 axes)."""

    def __init__(self, plot_widget, text: str):
        from PySide6.QtCore import Qt
        from PySide6.QtWidgets import QFrame, QLabel, QStackedWidget

        self.stack = QStackedWidget()
        self.label = QLabel(text)
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label.setWordWrap(True)
        self.label.setStyleSheet("color: palette(mid);")
        self.label.setFrameShape(QFrame.Shape.StyledPanel)
        self.label.setMinimumHeight(plot_widget.minimumHeight())
        self.stack.addWidget(self.label)
        self.stack.addWidget(plot_widget)
        self.plot_widget = plot_widget

    def set_empty(self, empty: bool) -> None:
        self.stack.setCurrentIndex(0 if empty else 1)

    @property
    def empty(self) -> bool:
        return self.stack.currentIndex() == 0


def decade_ticks(lo: float, hi: float, most: int = 4) -> list[tuple[float, str]]:
    """Labelled ticks for a log axis over log10 values [lo, hi]: at most ``most`` whole decades,
    evenly spaced, as "10⁻³", "1", "10⁴" (pyqtgraph labels every decade, which overlap on a small plot)."""
    import math

    a, b = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
    if b < a:
        return []
    step = max(1, math.ceil((b - a + 1) / most))
    sup = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
    ticks = []
    for e in range(a, b + 1, step):
        label = "1" if e == 0 else ("10" if e == 1 else "10" + str(e).translate(sup))
        ticks.append((float(e), label))
    return ticks


def sub_decade_ticks(lo: float, hi: float, most: int = 4) -> list[tuple[float, str]]:
    """Ticks for a log axis that spans less than a decade (an early loss): nice linear values between
    10**lo and 10**hi, placed at their log10, labelled with 3 significant digits."""
    import math

    a, b = 10.0 ** lo, 10.0 ** hi
    if not (b > a > 0):
        return []
    raw = (b - a) / max(1, most)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(a / step) * step
    ticks = []
    v = first
    while v <= b * (1 + 1e-9) and len(ticks) < most + 2:
        ticks.append((math.log10(v), f"{v:.3g}"))
        v += step
    return ticks
