"""A scrollable grid of dataset thumbnails: ``QListView`` in icon mode over a lazy model.

The model holds the dataset's (N, H, W, C) uint8 array and builds an icon only when the view asks
for a visible row, caching a bounded number; 20,000 images cost nothing until scrolled to.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from PySide6.QtCore import QAbstractListModel, QModelIndex, QSize, Qt
from PySide6.QtWidgets import QListView

from ..qimage import to_icon


class ThumbnailModel(QAbstractListModel):
    def __init__(self, parent=None, icon_size: int = 64, cache_size: int = 2000):
        super().__init__(parent)
        self._images: np.ndarray | None = None
        self._paths: list[str] = []
        self.icon_size = icon_size
        self._cache: OrderedDict[int, object] = OrderedDict()
        self._cache_size = cache_size

    def set_images(self, images: np.ndarray | None, paths: list[str] | None = None) -> None:
        self.beginResetModel()
        self._images = images
        self._paths = list(paths or [])
        self._cache.clear()
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:
        if parent.isValid() or self._images is None:
            return 0
        return len(self._images)

    def image(self, row: int) -> np.ndarray | None:
        if self._images is None or not 0 <= row < len(self._images):
            return None
        return self._images[row]

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or self._images is None:
            return None
        row = index.row()
        if role == Qt.ItemDataRole.DecorationRole:
            icon = self._cache.get(row)
            if icon is None:
                icon = to_icon(self._images[row], self.icon_size)
                self._cache[row] = icon
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(row)
            return icon
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._paths[row] if row < len(self._paths) else f"image {row}"
        return None


class ThumbnailGrid(QListView):
    def __init__(self, parent=None, icon_size: int = 64):
        super().__init__(parent)
        self.thumbs = ThumbnailModel(self, icon_size=icon_size)
        self.setModel(self.thumbs)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)
        self.setLayoutMode(QListView.LayoutMode.Batched)
        self.setBatchSize(256)
        self.setIconSize(QSize(icon_size, icon_size))
        self.setGridSize(QSize(icon_size + 8, icon_size + 8))
        self.setSpacing(2)
        self.setSelectionMode(QListView.SelectionMode.SingleSelection)

    def set_images(self, images: np.ndarray | None, paths: list[str] | None = None) -> None:
        self.thumbs.set_images(images, paths)

    def count(self) -> int:
        return self.thumbs.rowCount()
