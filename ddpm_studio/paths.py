"""Where DDPM Studio keeps its cache, settings and runs.

Each folder can be moved with an environment variable (the tests use these):
``DDPM_STUDIO_CACHE_DIR``, ``DDPM_STUDIO_CONFIG_DIR``, ``DDPM_STUDIO_DATA_DIR``.
Defaults follow each platform's convention (XDG on Linux, ~/Library on macOS, %LOCALAPPDATA% on Windows).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

APP = "ddpm-studio"


def _platform_base(kind: str) -> Path:
    home = Path.home()
    if sys.platform == "win32":
        root = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return root / APP / {"cache": "Cache", "config": "Config", "data": "Data"}[kind]
    if sys.platform == "darwin":
        lib = home / "Library"
        return {"cache": lib / "Caches", "config": lib / "Preferences", "data": lib / "Application Support"}[kind] / APP
    xdg = {"cache": ("XDG_CACHE_HOME", home / ".cache"),
           "config": ("XDG_CONFIG_HOME", home / ".config"),
           "data": ("XDG_DATA_HOME", home / ".local" / "share")}[kind]
    return Path(os.environ.get(xdg[0]) or xdg[1]) / APP


def _dir(kind: str) -> Path:
    override = os.environ.get(f"DDPM_STUDIO_{kind.upper()}_DIR")
    return Path(override) if override else _platform_base(kind)


def cache_dir() -> Path:
    """Decoded-dataset cache (safe to delete)."""
    return _dir("cache")


def config_dir() -> Path:
    """Settings (the GUI's QSettings file lives here too)."""
    return _dir("config")


def data_dir() -> Path:
    """Default parent folder for runs started from the GUI, and logs."""
    return _dir("data")


def default_runs_dir() -> Path:
    return data_dir() / "runs"


def logs_dir() -> Path:
    return data_dir() / "logs"


def tunings_dir() -> Path:
    """Tuned timesteps remembered per model (``sampling.tuning_store``)."""
    return data_dir() / "tunings"


def resources_dir() -> Path:
    """The shipped resources (icons, built-in dataset, screenshots), installed or in a checkout."""
    try:
        from importlib.resources import files

        p = Path(str(files("ddpm_studio.resources")))
        if p.is_dir():
            return p
    except (ModuleNotFoundError, TypeError):
        pass
    if getattr(sys, "frozen", False):  # PyInstaller bundle
        return Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent)) / "ddpm_studio" / "resources"
    return Path(__file__).resolve().parent.parent / "resources"


def file_kind(mode: int) -> str | None:
    """What a file that is not a regular file is, in words ("a folder", "a device", "a named pipe",
    "a socket"), from its ``st_mode``; None for a regular file or anything else."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None
