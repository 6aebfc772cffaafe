"""A drop target for folders and image files dragged from a file manager."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent
from PySide6.QtWidgets import QFrame, QLabel, QPushButton, QVBoxLayout


def local_paths(mime) -> list[str]:
    """The local files and folders in a drag's mime data (remote URLs are ignored)."""
    if mime is None or not mime.hasUrls():
        return []
    return [u.toLocalFile() for u in mime.urls() if u.isLocalFile() and u.toLocalFile()]


class DropZone(QFrame):
    """A dashed box that says what to drop; emits ``paths_dropped(list[str])``.

    ``browse_requested`` is emitted by its "Choose folder…" button.
    """

    paths_dropped = Signal(list)
    browse_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("DropZone")
        self.setAcceptDrops(True)
        self.setMinimumHeight(150)
        self.setMaximumHeight(240)
        self._title = QLabel("Drop image folders or files here")
        self._title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        f = self._title.font()
        f.setPointSizeF(f.pointSizeF() * 1.25)
        f.setBold(True)
        self._title.setFont(f)
        self._hint = QLabel("PNG, JPEG, BMP, WebP, GIF or TIFF.\nFolders are searched recursively.")
        self._hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._hint.setWordWrap(True)
        self._hint.setStyleSheet("color: palette(mid);")
        self.browse_button = QPushButton("Choose Folder…")
        self.browse_button.setToolTip("Pick an image folder to train on (Ctrl+O).")
        self.browse_button.clicked.connect(self.browse_requested)
        lay = QVBoxLayout(self)
        lay.addStretch(1)
        lay.addWidget(self._title)
        lay.addWidget(self._hint)
        lay.addWidget(self.browse_button, 0, Qt.AlignmentFlag.AlignHCenter)
        lay.addStretch(1)
        self._set_hover(False)

    def _set_hover(self, hover: bool) -> None:
        border = "palette(highlight)" if hover else "palette(mid)"
        bg = "palette(alternate-base)" if hover else "transparent"
        self.setStyleSheet(
            f"#DropZone {{ border: 2px dashed {border}; border-radius: 10px; background: {bg}; }}"
        )

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if local_paths(event.mimeData()):
            event.acceptProposedAction()
            self._set_hover(True)
        else:
            event.ignore()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        if local_paths(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragLeaveEvent(self, event) -> None:
        self._set_hover(False)

    def dropEvent(self, event: QDropEvent) -> None:
        self._set_hover(False)
        paths = local_paths(event.mimeData())
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.paths_dropped.emit(paths)
