"""The real window, offscreen, for the benchmarks that drive it (bench_ui_stall, bench_window_train):
settings, cache and runs in a temporary folder, the built-in set loaded, the device probe done."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def open_window(image_size: int, prefix: str = "ddpm-bench-"):
    """``(app, window, run_for, tmp)``: ``run_for(seconds, until=None)`` spins the event loop."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    for k in ("CACHE", "CONFIG", "DATA"):
        os.environ[f"DDPM_STUDIO_{k}_DIR"] = str(tmp / k.lower())
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(["bench"])
    from ddpm_studio.gui.main_window import MainWindow

    win = MainWindow(load_on_start=False)
    win.resize(1360, 860)
    win.show()

    def run_for(seconds: float, until=None) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds and (until is None or not until()):
            app.processEvents()
            time.sleep(0.001)

    ds = win.dataset_panel
    ds.size_combo.setCurrentIndex(ds.size_combo.findData(image_size))
    ds.load_paths([])
    run_for(300, until=lambda: win.state.images is not None and not ds.is_loading())
    # the device probe imports torch on a worker thread; that one-off import is not what is measured
    run_for(120, until=lambda: "detecting" not in win.device_label.text())
    return app, win, run_for, tmp


def close_window(win) -> None:
    """Close without the "work is running" question."""
    win.confirm = lambda q: True
    win.close()


def ui_gaps(seconds: float, until=None) -> list[float]:
    """Run the event loop proper (``exec``, as the app does) for ``seconds`` or until ``until()``,
    with a 10 ms QTimer on the UI thread: the gaps between its firings (ms), the first left out."""
    from PySide6.QtCore import QElapsedTimer, QEventLoop, QTimer

    gaps, clock, last = [], QElapsedTimer(), [0]

    def tick():
        now = clock.elapsed()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    clock.start()
    timer.start()
    loop = QEventLoop()
    stop = QTimer()
    stop.setSingleShot(True)
    stop.timeout.connect(loop.quit)
    stop.start(int(seconds * 1000))
    poll = QTimer()
    if until is not None:
        poll.timeout.connect(lambda: until() and loop.quit())
        poll.start(50)
    loop.exec()
    timer.stop()
    poll.stop()
    return gaps[1:]
