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
