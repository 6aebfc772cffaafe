"""``ddpm-studio`` with no command: the application object, the icon and the main window.

``main(["--smoke"])`` opens the window, processes events, closes it and returns 0 (the packaging
test uses it). Torch is not imported here: the window shows first, then a worker thread imports it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_T0 = time.perf_counter()


def app_icon():
    """The icon from resources/icons (SVG plus PNG sizes); an empty icon if they are missing."""
    from PySide6.QtGui import QIcon

    from .. import paths

    icon = QIcon()
    folder = paths.resources_dir() / "icons"
    if folder.is_dir():
        for size in (16, 24, 32, 48, 64, 128, 256, 512):
            p = folder / f"ddpm-studio-{size}.png"
            if p.is_file():
                icon.addFile(str(p))
        svg = folder / "ddpm-studio.svg"
        if icon.isNull() and svg.is_file():
            icon.addFile(str(svg))
    return icon


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddpm-studio", description="Open the DDPM Studio window.")
    p.add_argument("--smoke", action="store_true",
                   help="open the window, process events, close it and exit 0 (for packaging tests)")
    p.add_argument("--no-dataset", action="store_true", help="do not open the last (or built-in) dataset on start")
    return p


def window_problem(qt_args: list[str]) -> str | None:
    """Why the window cannot open here, in one line (checked before Qt could abort), or None."""
    from .syslibs import check_window_libraries, uses_xcb

    if not uses_xcb(qt_args=qt_args):
        return None
    if not os.environ.get("DISPLAY"):
        return ("ddpm-studio: the window cannot open: there is no X display (DISPLAY is not set). Run it on a "
                "desktop, or use a command without the window (ddpm-studio --help)")
    return check_window_libraries(qt_args)


def main(argv: list[str] | None = None) -> int:
    args, qt_args = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    problem = window_problem(qt_args)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    try:
        from PySide6.QtCore import QCoreApplication, QTimer
        from PySide6.QtWidgets import QApplication
    except ImportError as e:  # a system library Qt links to is missing (libEGL, libfontconfig, ...)
        from .syslibs import import_failure_message

        print(import_failure_message(e), file=sys.stderr)
        return 1

    QCoreApplication.setOrganizationName("ddpm-studio")
    QCoreApplication.setApplicationName("DDPM Studio")
    app = QApplication.instance() or QApplication(["ddpm-studio", *qt_args])
    app.setApplicationDisplayName("DDPM Studio")
    if hasattr(app, "setDesktopFileName"):
        app.setDesktopFileName("ddpm-studio")
    app.setWindowIcon(app_icon())

    from ..logs import install_excepthooks, setup_logging
    from .main_window import MainWindow

    setup_logging()
    win = MainWindow(load_on_start=not args.no_dataset and not args.smoke, probe_device=not args.smoke)
    install_excepthooks(win.show_error)
    win.show()
    shown = time.perf_counter() - _T0
    if os.environ.get("DDPM_STUDIO_TIMING"):
        print(f"window shown {shown:.2f} s after app.py was imported", file=sys.stderr)
    if args.smoke:
        for _ in range(5):
            app.processEvents()
        ok = win.isVisible()
        win.close()
        app.processEvents()
        print(f"smoke: window {'opened' if ok else 'did not open'} in {shown:.2f} s")
        return 0 if ok else 1
    QTimer.singleShot(0, win.raise_)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
