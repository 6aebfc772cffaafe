"""Helpers for driving the real window in tests and benchmarks (no pytest import here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QWidget

# A network small enough to train a few steps in well under a second on one CPU core.
MICRO_MODEL = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(), dropout=0.0)


def micro_overrides(steps: int = 4, timesteps: int = 100, batch_size: int = 4) -> dict[str, dict]:
    return {
        "model": dict(MICRO_MODEL),
        "diffusion": dict(timesteps=timesteps),
        "train": dict(steps=steps, batch_size=batch_size, warmup_steps=0, log_every=1, preview_every=0,
                      checkpoint_every=0, checkpoint_minutes=0.0, device="cpu"),
    }


def write_image_folder(folder: Path, count: int = 12, size: int = 16, seed: int = 0) -> Path:
    """``count`` small PNGs of coloured squares on plain backgrounds."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        a = np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8)  # (H, W, 3)
        lo, hi = sorted(rng.integers(1, size - 1, 2))
        a[lo:hi + 1, lo:hi + 1] = rng.integers(0, 256, 3)
        Image.fromarray(a).save(folder / f"img_{i:03d}.png")
    return folder


def write_bad_folder(folder: Path) -> Path:
    """Files that are not usable images: empty, text, truncated PNG."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not a picture", encoding="utf-8")
    (folder / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")
    return folder


def drop_paths(widget: QWidget, paths: list[str | Path]) -> bool:
    """Send ``widget`` a real drag-enter and drop of file URLs, as a file manager would.

    Returns whether the drop was accepted.
    """
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    pos = QPointF(widget.width() / 2, widget.height() / 2)
    actions = Qt.DropAction.CopyAction | Qt.DropAction.LinkAction
    enter = QDragEnterEvent(QPoint(int(pos.x()), int(pos.y())), actions, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, enter)
    if not enter.isAccepted():
        return False
    drop = QDropEvent(pos, actions, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, drop)
    return drop.isAccepted()


def wait_until(cond, timeout: float, what: str, settle: int = 20) -> None:
    """Run the event loop until ``cond()`` holds (SystemExit naming ``what`` after ``timeout``
    seconds), then ``settle`` more rounds of ~10 ms so that queued repaints land. For scripts that
    drive the window without pytest-qt (screenshots, benchmarks)."""
    import time

    app = QApplication.instance()
    t0 = time.monotonic()
    while not cond():
        app.processEvents()
        time.sleep(0.01)
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out waiting for {what}")
    for _ in range(settle):
        app.processEvents()
        time.sleep(0.01)
