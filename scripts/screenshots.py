"""Screenshots of the real window, one per tab, into resources/screenshots/ (used by README.md).

    python scripts/screenshots.py [--steps 400] [--out resources/screenshots]

Opens the window offscreen with the built-in dataset, trains the tiny preset for ``--steps``
steps, generates with DDIM, scrubs the chain, and grabs each tab with ``QWidget.grab()``. It also
exports the reverse chain as a GIF through the app's own export (reverse_chain.gif).
Settings, cache and the run go to a temporary folder, never the user's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="training steps of the tiny preset before the shots")
    p.add_argument("--image-size", type=int, default=32, choices=(8, 16, 32))
    p.add_argument("--run", help="an existing run folder (copied, never modified) to show instead of training here")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "resources" / "screenshots"))
    p.add_argument("--width", type=int, default=1360)
    p.add_argument("--height", type=int, default=860)
    args = p.parse_args(argv)

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    tmp = tempfile.mkdtemp(prefix="ddpm-shots-")
    for k in ("CACHE", "CONFIG", "DATA"):
        os.environ[f"DDPM_STUDIO_{k}_DIR"] = str(Path(tmp) / k.lower())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(["ddpm-studio"])
    from ddpm_studio.gui.app import app_icon
    from ddpm_studio.gui.main_window import MainWindow

    app.setWindowIcon(app_icon())
    win = MainWindow(load_on_start=False)
    win.resize(args.width, args.height)
    win.show()

    from ddpm_studio.gui.testing import wait_until

    def wait(cond, timeout: float, what: str) -> None:
        wait_until(cond, timeout, what, settle=10)

    def shot(name: str) -> None:
        for _ in range(20):
            app.processEvents()
            time.sleep(0.01)
        path = out / f"{name}.png"
        win.grab().save(str(path))
        print(f"wrote {path}")

    ds = win.dataset_panel
    ds.size_combo.setCurrentIndex(ds.size_combo.findData(args.image_size))
    ds.load_paths([])
    wait(lambda: win.state.images is not None and not ds.is_loading(), 120, "the built-in dataset")
    wait(lambda: "detecting" not in win.device_label.text(), 60, "the device probe")
    win.tabs.setCurrentWidget(ds)
    shot("dataset")

    tp = win.training_panel
    if args.run:
        import shutil

        run_copy = Path(tmp) / "run"
        shutil.copytree(args.run, run_copy)
        win.tabs.setCurrentWidget(tp)
        opened = []
        tp.run_opened.connect(opened.append)
        tp.open_run(str(run_copy))
        wait(lambda: bool(opened) and getattr(tp, "_history_task", None) is None, 60, "the opened run")
        shot("training")
        return sample_and_forward(win, app, wait, shot, out, str(run_copy))
    tp.apply_preset("tiny")
    tp.steps_spin.setValue(args.steps)
    tp.batch_spin.setValue(32)
    tp.warmup_spin.setValue(min(100, args.steps // 4))
    tp.preview_spin.setValue(max(1, args.steps // 2))
    tp.ckpt_spin.setValue(0)
    tp.overrides = {"train": {"log_every": 5, "preview_count": 16, "preview_sampling_steps": 25, "ema_decay": 0.99}}
    win.tabs.setCurrentWidget(tp)
    tp.start()
    wait(lambda: not tp.is_running(), 3600, "training")
    shot("training")

    return sample_and_forward(win, app, wait, shot, out, None)


def sample_and_forward(win, app, wait, shot, out, run_dir) -> int:
    sp = win.sampling_panel
    if run_dir:
        sp.open_model(run_dir)
    else:
        sp.src_trained.setChecked(True)
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("ddim"))
    sp.steps_spin.setValue(50)
    sp.num_spin.setValue(16)
    sp.seed_spin.setValue(1)
    win.tabs.setCurrentWidget(sp)
    sp.generate()
    wait(lambda: not sp.is_running(), 600, "sampling")
    sp.slider.setValue(int(sp.slider.maximum() * 0.85))
    shot("sampling")
    sp.scale_spin.setValue(3)
    sp.gif_stride_spin.setValue(2)  # keeps the GIF small enough for the repository
    sp.gif_fps_spin.setValue(12)
    sp.gif_hold_spin.setValue(2.0)
    sp.export_gif(str(out / "reverse_chain.gif"))
    wait(lambda: sp.export_task is None, 120, "the GIF export")
    print(f"wrote {out / 'reverse_chain.gif'}")

    fp = win.forward_panel
    win.tabs.setCurrentWidget(fp)
    fp.select_image(3)
    fp.t_slider.setValue(120)
    shot("forward")

    win.confirm = lambda q: True
    win.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
