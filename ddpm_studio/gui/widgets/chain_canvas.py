"""Pixel-exact image views: small images upscaled with nearest-neighbour so every pixel shows.

``PixelImageView`` paints one image at the largest whole-number scale that fits (falling back to
a fractional nearest-neighbour scale when the image is larger than the view).
``ChainCanvas`` puts x_t and the predicted x_0 side by side for the live reverse chain.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QImage, QPainter, QPalette
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from ..qimage import to_qimage


class PixelImageView(QWidget):
    def __init__(self, parent=None, placeholder: str = ""):
        super().__init__(parent)
        self._image: QImage | None = None
        self._array: np.ndarray | None = None
        self.placeholder = placeholder
        self.setMinimumSize(120, 120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_image(self, image: np.ndarray | None) -> None:
        """Show a (H, W, C) uint8 array (built into a QImage here, on the UI thread)."""
        if image is None:
            self._image, self._array = None, None
        else:
            self._array = image
            self._image = to_qimage(image)
        self.update()

    def image_array(self) -> np.ndarray | None:
        return self._array

    def sizeHint(self) -> QSize:
        return QSize(256, 256)

    def target_rect(self) -> QRect:
        if self._image is None:
            return QRect()
        w, h = self._image.width(), self._image.height()
        aw, ah = max(1, self.width() - 8), max(1, self.height() - 8)
        k = min(aw / w, ah / h)
        if k >= 1:
            k = int(k)  # whole-number zoom keeps every pixel the same size
        tw, th = max(1, int(w * k)), max(1, int(h * k))
        return QRect((self.width() - tw) // 2, (self.height() - th) // 2, tw, th)

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), self.palette().color(QPalette.ColorRole.Base))
        if self._image is None:
            if self.placeholder:
                p.setPen(self.palette().color(QPalette.ColorRole.PlaceholderText))
                p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.placeholder)
        else:
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)  # nearest-neighbour
            p.drawImage(self.target_rect(), self._image)
        p.end()


class CaptionedView(QWidget):
    """A PixelImageView with a caption above it."""

    def __init__(self, caption: str, placeholder: str = "", parent=None):
        super().__init__(parent)
        self.caption = QLabel(caption)
        self.caption.setAlignment(Qt.AlignmentFlag.AlignCenter)
        f = self.caption.font()
        f.setBold(True)
        self.caption.setFont(f)
        self.view = PixelImageView(placeholder=placeholder)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        lay.addWidget(self.caption)
        lay.addWidget(self.view, 1)

    def set_image(self, image: np.ndarray | None) -> None:
        self.view.set_image(image)


class ChainCanvas(QWidget):
    """x_t and the model's predicted x_0, side by side."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.xt = CaptionedView("x_t  (current sample)", "Press Generate to watch the reverse chain")
        self.x0 = CaptionedView("predicted x₀", "")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(10)
        lay.addWidget(self.xt, 1)
        lay.addWidget(self.x0, 1)
        self.frames_shown = 0

    def show_frame(self, xt: np.ndarray | None, x0: np.ndarray | None) -> None:
        self.xt.set_image(xt)
        self.x0.set_image(x0)
        self.frames_shown += 1

    def current(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        return self.xt.view.image_array(), self.x0.view.image_array()
