"""The Sampling panel's chain viewer: the x_t / predicted x_0 canvas with its scrubber and play button."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSlider, QStyle, QVBoxLayout, QWidget

from .chain_canvas import ChainCanvas


class ChainViewer(QWidget):
    """The canvas plus the scrubber; Left/Right step through the chain, Space plays."""

    step_requested = Signal(int)  # -1 or +1
    play_requested = Signal()
    home_end_requested = Signal(bool)  # True = end

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.canvas = ChainCanvas()
        self.play_button = QPushButton()
        self.play_button.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_MediaPlay))
        self.play_button.setToolTip("Play the recorded reverse chain (Space).")
        self.play_button.setCheckable(True)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 0)
        self.slider.setEnabled(False)
        self.slider.setToolTip("Scrub through the recorded steps of the reverse chain (Left / Right keys).")
        self.step_label = QLabel("no chain yet")
        self.step_label.setFixedWidth(200)
        row = QHBoxLayout()
        row.addWidget(self.play_button)
        row.addWidget(self.slider, 1)
        row.addWidget(self.step_label)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas, 1)
        lay.addLayout(row)

    def keyPressEvent(self, e: QKeyEvent) -> None:
        k = e.key()
        if k in (Qt.Key.Key_Left, Qt.Key.Key_Right):
            self.step_requested.emit(-1 if k == Qt.Key.Key_Left else 1)
        elif k == Qt.Key.Key_Space:
            self.play_requested.emit()
        elif k in (Qt.Key.Key_Home, Qt.Key.Key_End):
            self.home_end_requested.emit(k == Qt.Key.Key_End)
        else:
            super().keyPressEvent(e)

    def mousePressEvent(self, e) -> None:
        self.setFocus()
        super().mousePressEvent(e)
