"""Before the QApplication exists: are the system libraries Qt's X11 (xcb) platform needs installed?

On a minimal Linux desktop Qt aborts the process when its xcb plugin cannot be loaded, and its own
message blames ``libxcb-cursor0`` whichever library is really missing. This module asks the
dynamic loader first (``ldd`` on the plugin, or ``ctypes.CDLL`` of each library it needs when
``ldd`` is absent) and turns the missing libraries into one plain line naming the Debian / Ubuntu
packages and the command that installs them. It imports no Qt module (so it runs before Qt can
abort) and nothing from Qt's bindings but the location of the PySide6 folder.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

# The libraries the xcb plugin of PySide6 6.6-6.11 links to (ldd of libqxcb.so, transitively).
XCB_LIBRARIES = (
    "libxcb.so.1", "libX11-xcb.so.1", "libxkbcommon.so.0", "libxkbcommon-x11.so.0", "libxcb-cursor.so.0",
    "libxcb-icccm.so.4", "libxcb-util.so.1", "libxcb-image.so.0", "libxcb-keysyms.so.1", "libxcb-randr.so.0",
    "libxcb-render-util.so.0", "libxcb-shm.so.0", "libxcb-sync.so.1", "libxcb-xfixes.so.0",
    "libxcb-render.so.0", "libxcb-shape.so.0", "libxcb-xkb.so.1",
)

# soname -> Debian / Ubuntu package, where the package name is not the usual derivation
_PACKAGES = {
    "libX11-xcb.so.1": "libx11-xcb1", "libX11.so.6": "libx11-6", "libxcb.so.1": "libxcb1",
    "libEGL.so.1": "libegl1", "libGL.so.1": "libgl1", "libOpenGL.so.0": "libopengl0",
    "libfontconfig.so.1": "libfontconfig1", "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3", "libglib-2.0.so.0": "libglib2.0-0", "libgthread-2.0.so.0": "libglib2.0-0",
    "libSM.so.6": "libsm6", "libICE.so.6": "libice6", "libXext.so.6": "libxext6", "libXrender.so.1": "libxrender1",
}

# What a minimal Debian / Ubuntu desktop usually lacks for the window (README.md says the same).
MINIMAL_DESKTOP_PACKAGES = ("libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1", "libxcb-image0",
                            "libxcb-render-util0", "libxcb-shape0", "libxcb-xinerama0", "libxkbcommon-x11-0")

_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)


def debian_package(soname: str) -> str:
    """The Debian / Ubuntu package that ships ``soname``: ``libxcb-icccm.so.4`` -> ``libxcb-icccm4``."""
    if soname in _PACKAGES:
        return _PACKAGES[soname]
    m = re.fullmatch(r"(lib[\w+.-]*?)\.so\.(\d+)(?:\.\d+)*", soname)
    if not m:
        return soname
    name, major = m.group(1).lower(), m.group(2)
    return f"{name}-{major}" if name[-1].isdigit() else f"{name}{major}"  # Debian policy 8.1


def qt_plugin(name: str = "libqxcb.so") -> Path | None:
    """The path of a PySide6 platform plugin, found without importing PySide6."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        p = Path(folder) / "Qt" / "plugins" / "platforms" / name
        if p.is_file():
            return p
    return None


def missing_from_ldd(output: str) -> list[str]:
    """The libraries ``ldd`` reports as ``not found``, each once, in order."""
    seen: list[str] = []
    for soname in _NOT_FOUND.findall(output):
        if soname not in seen:
            seen.append(soname)
    return seen


def missing_by_loading(sonames: Iterable[str], load: Callable[[str], object] = ctypes.CDLL) -> list[str]:
    """The libraries the dynamic loader cannot open (``load`` raises OSError)."""
    missing = []
    for soname in sonames:
        try:
            load(soname)
        except OSError:
            missing.append(soname)
    return missing


def missing_libraries(plugin: Path | None = None, *, run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                      load: Callable[[str], object] = ctypes.CDLL) -> list[str]:
    """The shared libraries the xcb plugin needs and the system lacks ([] when all are there)."""
    plugin = plugin if plugin is not None else qt_plugin()
    if plugin is not None and shutil.which("ldd"):
        try:
            proc = run(["ldd", str(plugin)], capture_output=True, text=True, timeout=20)
            return missing_from_ldd(proc.stdout + proc.stderr)
        except (OSError, subprocess.SubprocessError):
            pass
    return missing_by_loading(XCB_LIBRARIES, load)


def install_message(missing: list[str], prog: str = "ddpm-studio") -> str:
    """One line: what is missing, the packages and the command that installs them."""
    packages = list(dict.fromkeys(debian_package(s) for s in missing))
    return (f"{prog}: the window cannot open: Qt's X11 platform needs system libraries that are not installed "
            f"({', '.join(missing)}). On Debian or Ubuntu install them with: sudo apt install {' '.join(packages)} "
            f"(the commands work without them: {prog} --help)")


def uses_xcb(environ: dict | None = None, qt_args: list[str] | None = None, platform: str | None = None) -> bool:
    """Whether Qt would load its xcb plugin: Linux, and the platform is xcb or left to Qt outside Wayland."""
    env = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if not platform.startswith("linux"):
        return False
    args = list(qt_args or [])
    chosen = env.get("QT_QPA_PLATFORM", "")
    for i, a in enumerate(args):
        if a in ("-platform", "--platform") and i + 1 < len(args):
            chosen = args[i + 1]
        elif a.startswith(("-platform=", "--platform=")):
            chosen = a.split("=", 1)[1]
    if chosen:
        return chosen.split(";")[0].split(":")[0].strip() == "xcb"
    # Qt 6 prefers Wayland in a Wayland session; otherwise it takes xcb.
    return not (env.get("WAYLAND_DISPLAY") and env.get("XDG_SESSION_TYPE", "").lower() == "wayland")


def check_window_libraries(qt_args: list[str] | None = None, environ: dict | None = None, **kw) -> str | None:
    """None when the window can try to open; otherwise the one-line message to print before exiting."""
    if not uses_xcb(environ, qt_args):
        return None
    missing = missing_libraries(**kw)
    return install_message(missing) if missing else None


def import_failure_message(error: ImportError, prog: str = "ddpm-studio") -> str:
    """One line for a Qt module that cannot load because a system library is missing."""
    text = str(error)
    m = re.search(r"(lib[\w+.-]+\.so(?:\.\d+)*)", text)
    if m and "cannot open shared object file" in text:
        lib = m.group(1)
        return (f"{prog}: the window cannot open: Qt needs the system library {lib}, which is not installed. "
                f"On Debian or Ubuntu install it with: sudo apt install {debian_package(lib)} "
                f"(the commands work without it: {prog} --help)")
    return f"{prog}: the window cannot open: {' '.join(text.split())}"
