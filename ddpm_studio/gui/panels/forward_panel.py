"""Forward process explorer: pick a dataset image, drag t, see x_t ~ q(x_t | x_0) and the noise added.

One noisy draw of one small image is a few arithmetic operations on a (H, W, C) array, so it is
computed here with numpy from the engine's schedule (no torch, no worker thread needed).
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QPushButton, QSlider, QSplitter, QVBoxLayout, QWidget)

from ..state import StudioState
from ..widgets.chain_canvas import CaptionedView
from ..widgets.schedule_plot import SchedulePlot
from ..widgets.thumbnail_grid import ThumbnailGrid
from .common import int_spin


def q_sample_numpy(x0: np.ndarray, abar_t: float, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε  (eq. (4), Ho et al. 2020); returns (x_t, added noise)."""
    added = np.sqrt(1.0 - abar_t) * eps
    return np.sqrt(abar_t) * x0 + added, added


def to_unit(image_u8: np.ndarray) -> np.ndarray:
    return image_u8.astype(np.float64) / 127.5 - 1.0  # [0, 255] → [-1, 1]


def to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)  # [-1, 1] → [0, 255]


class ForwardPanel(QWidget):
    def __init__(self, state: StudioState, parent=None):
        super().__init__(parent)
        self.state = state
        self._schedule = None
        self._x0: np.ndarray | None = None
        self._eps: np.ndarray | None = None

        self.grid = ThumbnailGrid(icon_size=48)
        self.grid.setToolTip("Pick the image to noise.")
        self.grid.setMinimumWidth(200)
        self.grid.setMaximumWidth(360)
        self.grid.clicked.connect(lambda idx: self.select_image(idx.row()))
        pick = QLabel("<b>Dataset image</b>")
        left = QVBoxLayout()
        left.addWidget(pick)
        left.addWidget(self.grid, 1)

        self.x0_view = CaptionedView("x₀  (the image)", "Pick an image on the left")
        self.noise_view = CaptionedView("noise added  √(1−ᾱ_t)·ε")
        self.xt_view = CaptionedView("x_t ~ q(x_t | x₀)")
        views = QHBoxLayout()
        for v in (self.x0_view, self.noise_view, self.xt_view):
            views.addWidget(v, 1)

        trow, explain = self._build_controls()

        self.schedule_plot = SchedulePlot(title="Noise schedule (from the Training tab)", compact=True)
        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addLayout(views, 1)
        tl.addLayout(trow)
        tl.addWidget(self.t_label)
        tl.addWidget(explain)
        vs = QSplitter(Qt.Orientation.Vertical)
        vs.addWidget(top)
        vs.addWidget(self.schedule_plot)
        vs.setSizes([480, 240])
        vs.setChildrenCollapsible(False)
        lay = QHBoxLayout(self)
        lay.addLayout(left)
        lay.addWidget(vs, 1)

        state.images_changed.connect(self.set_images)
        state.schedule_changed.connect(self.set_schedule)
        self.set_schedule(*state.schedule)
        if state.images is not None:
            self.set_images(state.images)

    def _build_controls(self) -> tuple[QHBoxLayout, QLabel]:
        """The t slider, the noise seed and the line explaining the forward process."""
        self.t_slider = QSlider(Qt.Orientation.Horizontal)
        self.t_slider.setToolTip("The timestep t: how much noise the forward process has added (0 = almost none).")
        self.t_slider.valueChanged.connect(self.set_t)
        self.t_label = QLabel("t = 0")
        self.t_label.setMinimumWidth(0)
        self.seed_spin = int_spin(0, 2**31 - 1, 0)
        self.seed_spin.setPrefix("noise seed ")
        self.seed_spin.setToolTip("The seed of ε; the same seed gives the same noise at every t.")
        self.seed_spin.valueChanged.connect(lambda _: self._new_noise())
        self.resample = QPushButton("New Noise")
        self.resample.setToolTip("Draw a different ε.")
        self.resample.clicked.connect(lambda: self.seed_spin.setValue(self.seed_spin.value() + 1))
        trow = QHBoxLayout()
        trow.addWidget(QLabel("t"))
        trow.addWidget(self.t_slider, 1)  # the slider keeps the row's width; the readout has a row of its own
        trow.addWidget(self.seed_spin)
        trow.addWidget(self.resample)
        explain = QLabel("The forward process needs no network: q(x_t | x₀) = N(√ᾱ_t · x₀, (1 − ᾱ_t) I). "
                         "Training teaches the network to undo it, one t at a time.")
        explain.setWordWrap(True)
        explain.setStyleSheet("color: palette(mid);")
        return trow, explain

    def set_schedule(self, kind: str, T: int) -> None:
        from ...engine.schedules import NoiseSchedule

        self._schedule = NoiseSchedule.from_config(kind, T)
        s = self._schedule
        self.schedule_plot.set_schedule(s.betas, s.alphas_cumprod, s.snr, label=kind)
        t = min(self.t_slider.value(), T - 1)
        self.t_slider.blockSignals(True)
        self.t_slider.setRange(0, T - 1)
        self.t_slider.setPageStep(max(1, T // 20))
        self.t_slider.setValue(t if t > 0 else T // 4)
        self.t_slider.blockSignals(False)
        self.set_t(self.t_slider.value())

    def set_images(self, images) -> None:
        self.grid.set_images(None if images is None else images.images, None if images is None else list(images.paths))
        if images is not None and len(images.images):
            self.select_image(0)

    def select_image(self, row: int) -> None:
        img = self.grid.thumbs.image(row)
        if img is None:
            return
        self.grid.setCurrentIndex(self.grid.thumbs.index(row))
        self._x0 = to_unit(img)  # (H, W, C) in [-1, 1]
        self.x0_view.set_image(img)
        self._new_noise()

    def _new_noise(self) -> None:
        if self._x0 is None:
            return
        rng = np.random.default_rng(self.seed_spin.value())
        self._eps = rng.standard_normal(self._x0.shape)  # ε ~ N(0, I), (H, W, C)
        self.set_t(self.t_slider.value())

    def set_t(self, t: int) -> None:
        s = self._schedule
        if s is None:
            return
        t = int(t)
        abar = float(s.alphas_cumprod[t])
        self.t_label.setText(f"t = {t} · ᾱ_t = {abar:.4f} · SNR = {s.snr[t]:.3g}")
        self.schedule_plot.set_marker(t)
        if self._x0 is None or self._eps is None:
            return
        xt, added = q_sample_numpy(self._x0, abar, self._eps)
        self.noise_view.set_image(to_u8(added))
        self.xt_view.set_image(to_u8(xt))

    def current_xt(self) -> np.ndarray | None:
        return self.xt_view.view.image_array()
