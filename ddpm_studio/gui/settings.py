"""QSettings in an INI file under ``paths.config_dir()`` (so tests, which redirect that folder,
never touch the user's real settings)."""

from __future__ import annotations

from PySide6.QtCore import QSettings

from .. import paths


def settings_path():
    return paths.config_dir() / "ddpm-studio.ini"


# 2: the sampling spacing's default became auto. Settings written before it hold "trailing", the old default,
# whether or not the user chose it; version 1 had no key of its own.
SETTINGS_VERSION = 2


def open_settings() -> QSettings:
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = QSettings(str(path), QSettings.Format.IniFormat)
    migrate(settings)
    return settings


def migrate(settings: QSettings) -> None:
    """Bring settings written by an older version up to this one: a spacing saved as the old default
    (trailing) gives way to the new default (auto), so an upgrade gets the sampler's own steps."""
    if get(settings, "settings_version", 1, kind=int) >= SETTINGS_VERSION:
        return
    if settings.value("sampling/spacing") == "trailing":
        settings.remove("sampling/spacing")
    settings.setValue("settings_version", SETTINGS_VERSION)


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


def save_section(settings: QSettings, prefix: str, section, names: tuple[str, ...] | None = None) -> None:
    """Write a config section's fields (all, or ``names``) as ``prefix/<field>``, typed by the schema."""
    from ..config import settings_of

    for s in settings_of(section):
        value = getattr(section, s.name)
        if (names is None or s.name in names) and value is not None and not s.kind.startswith("tuple["):
            settings.setValue(f"{prefix}/{s.name}", value)


def restore_section(settings: QSettings, prefix: str, section, names: tuple[str, ...] | None = None):
    """``section`` with the saved fields the schema accepts; a saved value that no longer fits is left out."""
    import dataclasses

    from ..config import settings_of

    kinds = {"bool": bool, "int": int, "float": float, "str": str}
    for s in settings_of(section):
        key = f"{prefix}/{s.name}"
        if (names is not None and s.name not in names) or s.kind not in kinds or not settings.contains(key):
            continue
        trial = dataclasses.replace(section, **{s.name: get(settings, key, getattr(section, s.name) or s.default,
                                                            kind=kinds[s.kind])})
        try:
            trial.validate()
        except ValueError:
            continue
        section = trial
    return section
def last_dir(kind: str, default) -> str:
    """The folder a file dialog of ``kind`` ("runs", "exports", "images") used last, if it still exists."""
    import os

    value = get(open_settings(), f"dialogs/{kind}", "")
    return value if value and os.path.isdir(value) else str(default)


def remember_dir(kind: str, path) -> None:
    """Remember the folder of ``path`` (or ``path`` itself when it is a folder) for the next dialog of ``kind``."""
    import os

    path = str(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if folder:
        s = open_settings()
        s.setValue(f"dialogs/{kind}", folder)
        s.sync()
