"""Screenshots of the Lab tab, one per mode, into resources/screenshots/ (used by README.md).

    python scripts/lab_screenshots.py --run RUN_DIR [--out resources/screenshots] [--modes compare,chain,interpolate]

Opens the real window offscreen, opens the run (copied, never modified) in the Lab tab and drives
each mode as a user would: the compare board, the chain's three views with two branch strips, a
seed interpolation and an image interpolation on the built-in dataset. Also writes the chain's
contact sheet through the app's own export (lab_contact_sheet.png); the interpolation shot has the
weight slider between two strip frames, with the frame at exactly that weight computed. ``--modes``
retakes only some of them. Settings and cache go to a temporary folder.
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
    p.add_argument("--run", required=True, help="a run folder to show")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "resources" / "screenshots"))
    p.add_argument("--width", type=int, default=1360)
    p.add_argument("--height", type=int, default=860)
    p.add_argument("--modes", default="compare,chain,interpolate", help="which shots to take (comma-separated)")
    args = p.parse_args(argv)

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    tmp = tempfile.mkdtemp(prefix="ddpm-lab-shots-")
    for k in ("CACHE", "CONFIG", "DATA"):
        os.environ[f"DDPM_STUDIO_{k}_DIR"] = str(Path(tmp) / k.lower())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Path(tmp) / "run"
    shutil.copytree(args.run, run)

    from PySide6.QtWidgets import QApplication

    QApplication.instance() or QApplication(["ddpm-studio"])
    from ddpm_studio.gui.main_window import MainWindow

    win = MainWindow(load_on_start=False)
    win.resize(args.width, args.height)
    win.show()

    from ddpm_studio.gui.testing import wait_until

    def wait(cond, timeout: float, what: str) -> None:
        wait_until(cond, timeout, what, settle=20)

    def shot(name: str) -> None:
        wait(lambda: True, 1, "")
        path = out / f"{name}.png"
        win.grab().save(str(path))
        print(f"wrote {path}")

    wait(lambda: "detecting" not in win.device_label.text(), 120, "the device probe")
    lab = win.lab_panel
    win.tabs.setCurrentWidget(lab)
    lab.open_model(str(run))

    def idle():
        return not lab.is_running()

    modes = {m.strip() for m in args.modes.split(",")}
    if "compare" in modes:
        lab.modes.setCurrentIndex(0)
        lab.specs_edit.setText("ddim:10,ddim:50,ddim:50:1,dpmpp-2m:10,dpmpp-2m:20,ddpm")
        lab.num_spin.setValue(8)
        lab.seed_spin.setValue(1)
        lab.run_compare()
        wait(idle, 900, "the compare board")
        shot("lab_compare")

    if "chain" in modes:
        lab.modes.setCurrentIndex(1)
        lab.sampler_combo.setCurrentIndex(lab.sampler_combo.findData("ddpm"))
        lab.num_spin.setValue(4)
        lab.run_chain()
        wait(idle, 900, "the chain")
        lab.branch_count.setValue(6)
        for frac, mode in ((0.5, "rest"), (0.8, "rest")):
            lab.chain_slider.setValue(int(lab.chain_slider.maximum() * frac))
            lab.branch_mode.setCurrentIndex(lab.branch_mode.findData(mode))
            lab.branch_here()
            wait(idle, 900, "a branch")
        lab.chain_slider.setValue(int(lab.chain_slider.maximum() * 0.6))
        shot("lab_chain_branch")
        lab.every_spin.setValue(max(1, len(lab.session.frames) // 10))
        lab.export_sheet(str(out / "lab_contact_sheet.png"))
        wait(lambda: not lab.export_task.is_running(), 120, "the contact sheet")
        print(f"wrote {out / 'lab_contact_sheet.png'}")

    if "interpolate" in modes:
        lab.modes.setCurrentIndex(2)
        lab.sampler_combo.setCurrentIndex(lab.sampler_combo.findData("ddim"))
        lab.steps_spin.setValue(50)
        lab.seed_a.setValue(1)
        lab.seed_b.setValue(7)
        lab.frames_spin.setValue(10)
        lab.run_interpolate()
        wait(idle, 900, "the seed walk")
        lab.weight_slider.setValue(50)  # between two strip frames (4/9 and 5/9): the frame at exactly 0.50
        wait(lambda: lab.weight_task is None and "computing" not in lab.interp_view.caption.text(), 300,
             "the frame at weight 0.50")
        shot("lab_interpolate")

    win.confirm = lambda q: True
    win.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
