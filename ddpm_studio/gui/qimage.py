"""numpy ``uint8`` images to Qt images.

Workers hand the UI thread numpy arrays; only the UI thread builds ``QImage`` objects. A
``QImage`` made from a buffer only borrows it, so every function here returns a ``.copy()`` that
owns its pixels and stays valid after the array is gone.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtGui import QIcon, QImage, QPixmap


def to_qimage(image: np.ndarray) -> QImage:
    """(H, W), (H, W, 1) or (H, W, 3) ``uint8`` → an owning ``QImage``."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"image must be uint8; got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]  # (H, W)
    if a.ndim == 2:
        a = np.ascontiguousarray(a)
        h, w = a.shape
        img = QImage(a.data, w, h, a.strides[0], QImage.Format.Format_Grayscale8)
    elif a.ndim == 3 and a.shape[2] == 3:
        a = np.ascontiguousarray(a)
        h, w, _ = a.shape
        img = QImage(a.data, w, h, a.strides[0], QImage.Format.Format_RGB888)
    else:
        raise ValueError(f"image must have shape (H, W), (H, W, 1) or (H, W, 3); got {a.shape}")
    return img.copy()  # own the pixels: the numpy buffer may go away


def to_pixmap(image: np.ndarray, scale: int = 1) -> QPixmap:
    """An owning pixmap, upscaled by an integer factor with nearest-neighbour sampling."""
    pm = QPixmap.fromImage(to_qimage(image))
    if scale > 1:
        from PySide6.QtCore import Qt

        pm = pm.scaled(pm.width() * scale, pm.height() * scale, Qt.AspectRatioMode.IgnoreAspectRatio,
                       Qt.TransformationMode.FastTransformation)
    return pm


def to_icon(image: np.ndarray, size: int) -> QIcon:
    """A thumbnail icon about ``size`` px wide, nearest-neighbour so small images stay crisp."""
    h, w = image.shape[:2]
    scale = max(1, size // max(h, w))
    return QIcon(to_pixmap(image, scale))
