"""The Lab's image widgets: three views of a chain step side by side, and a board view."""

from __future__ import annotations

import numpy as np
from PySide6.QtWidgets import QHBoxLayout, QWidget

from .chain_canvas import CaptionedView, PixelImageView


class ThreeViews(QWidget):
    """x_t, the predicted x̂0 and the predicted noise ε̂ (v̂ for v-models) of one step."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.xt = CaptionedView("x_t  (what the network sees)", "Press Run Chain")
        self.x0 = CaptionedView("predicted x̂0", "")
        self.noise = CaptionedView("predicted noise ε̂", "")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(8)
        for v in (self.xt, self.x0, self.noise):
            lay.addWidget(v, 1)

    def set_noise_label(self, text: str) -> None:
        self.noise.caption.setText(text)

    def show_views(self, views: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> None:
        for view, image in zip((self.xt, self.x0, self.noise), views or (None, None, None)):
            view.set_image(image)

    def current(self) -> tuple[np.ndarray | None, ...]:
        return tuple(v.view.image_array() for v in (self.xt, self.x0, self.noise))


class BoardView(PixelImageView):
    """A composed board (compare rows, branch strips, interpolation strip), drawn pixel-exact."""

    def __init__(self, placeholder: str = "", parent=None):
        super().__init__(parent, placeholder=placeholder)
        self.setMinimumSize(200, 120)
