"""QSettings in an INI file under ``paths.config_dir()`` (so tests, which redirect that folder,
never touch the user's real settings)."""

from __future__ import annotations

from PySide6.QtCore import QSettings

from .. import paths


def settings_path():
    return paths.config_dir() / "ddpm-studio.ini"


def open_settings() -> QSettings:
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return QSettings(str(path), QSettings.Format.IniFormat)


def get(settings: QSettings, key: str, default, kind=None):
    """Read ``key`` with the type of ``default`` (INI files store strings)."""
    value = settings.value(key, default)
    kind = kind or type(default)
    try:
        if kind is bool:
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if kind in (int, float, str):
            return kind(value)
    except (TypeError, ValueError):
        return default
    return value
