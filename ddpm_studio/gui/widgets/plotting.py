"""Shared pyqtgraph set-up: one look for every plot in the app."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtGui import QColor, QPalette
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


def style_plot(plot: pg.PlotItem, *, left: str = "", bottom: str = "") -> None:
    plot.showGrid(x=True, y=True, alpha=0.15)
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
