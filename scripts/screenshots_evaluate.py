"""Screenshots of the Evaluate tab and the dataset doctor (issue 17) into resources/screenshots/.

    python scripts/screenshots_evaluate.py [--steps 600] [--run RUN_DIR] [--out resources/screenshots]

Trains the tiny preset on the built-in set at 16 px (a checkpoint and a preview every --steps/6
steps) unless --run is given (copied, never modified), opens it in the Evaluate tab, scores every
checkpoint (KID per step beside the loss), checks 64 samples for copies, and runs the dataset
doctor on a folder of built-in images with a few injected duplicates. Everything temporary goes to
a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--run", help="an existing run folder to show")
    p.add_argument("--num", type=int, default=128, help="samples per checkpoint")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "resources" / "screenshots"))
    args = p.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    tmp = Path(tempfile.mkdtemp(prefix="ddpm-shots-eval-"))
    for k in ("CACHE", "CONFIG", "DATA"):
        os.environ[f"DDPM_STUDIO_{k}_DIR"] = str(tmp / k.lower())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import numpy as np
    from PIL import Image

    from ddpm_studio.config import DataConfig, RunConfig
    from ddpm_studio.data import load_images

    run = tmp / "run"
    if args.run:
        shutil.copytree(args.run, run)
    else:
        from ddpm_studio.training.trainer import Trainer

        every = max(1, args.steps // 6)
        cfg = RunConfig.from_preset("tiny", data={"image_size": 16},
                                    train={"steps": args.steps, "checkpoint_every": every, "preview_every": every,
                                           "keep_checkpoints": 100, "minutes": None, "device": "cpu"})
        print(Trainer(cfg, run).run().message)

    folder = tmp / "photos"  # built-in images as files, a few copied twice
    folder.mkdir()
    imgs = load_images(DataConfig(folder=None, image_size=32)).images[:150]
    for i, a in enumerate(imgs):
        Image.fromarray(a).save(folder / f"shape_{i:03d}.png")
    for i in (4, 17, 90):
        shutil.copy(folder / f"shape_{i:03d}.png", folder / f"shape_{i:03d} copy.png")
    Image.fromarray(np.asarray(Image.fromarray(imgs[40]).resize((1024, 1024)))).save(folder / "scan_large.png")

    from PySide6.QtWidgets import QApplication

    QApplication.instance() or QApplication(["ddpm-studio"])
    from ddpm_studio.gui.main_window import MainWindow

    win = MainWindow(load_on_start=False, probe_device=False)
    win.resize(1360, 860)
    win.show()

    from ddpm_studio.gui.testing import wait_until

    def wait(cond, timeout: float, what: str) -> None:
        wait_until(cond, timeout, what, settle=20)

    def shot(name: str) -> None:
        path = out / f"{name}.png"
        win.grab().save(str(path))
        print(f"wrote {path}")

    ev = win.evaluate_panel
    win.tabs.setCurrentWidget(ev)
    ev.open_run(str(run))
    wait(lambda: ev.run is not None and not ev.is_running(), 60, "the run")
    ev.num_spin.setValue(args.num)
    ev.all_check.setChecked(True)
    ev.evaluate()
    wait(lambda: not ev.is_running(), 1800, "scoring every checkpoint")
    ev.views.setCurrentIndex(0)
    shot("evaluate")
    ev.check_copies()
    wait(lambda: not ev.is_running(), 600, "the copy check")
    shot("evaluate_nearest")

    dp = win.dataset_panel
    dp.size_combo.setCurrentIndex(dp.size_combo.findData(32))
    win.tabs.setCurrentWidget(dp)
    dp.load_paths([str(folder)])
    wait(lambda: win.state.images is not None and not dp.is_loading(), 120, "the folder")
    dp.doctor.check()
    wait(lambda: not dp.doctor.is_running(), 120, "the doctor")
    top = dp.doctor.tree.topLevelItem(0)
    if top is not None:
        top.setExpanded(True)
        dp.doctor.tree.setCurrentItem(top)
    shot("dataset_doctor")
    win.confirm = lambda q: True
    win.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
