"""Forms generated from the config schema: one row per field, its label, range or choices and
tooltip from the field's ``knob(...)`` declaration (config.py), bound both ways to a config section
and kept in the settings file under the field's key.

``SchemaForm(settings)`` builds the widgets; ``set_values(section)`` shows a section's values,
``values()`` reads them back as a dict of field -> value (what ``dataclasses.replace`` takes),
``save(qsettings, prefix)`` / ``restore(qsettings, prefix)`` persist them.
"""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLineEdit, QSpinBox, QWidget

from ..config import Setting

_INT_MAX = 2**31 - 1  # QSpinBox holds a C int


def _decimals(s: Setting) -> int:
    """Enough decimals to show the default and the smallest allowed value."""
    small = [abs(v) for v in (s.default, s.knob.lo) if isinstance(v, (int, float)) and v]
    if not small:
        return 3
    return max(1, min(8, 2 - math.floor(math.log10(min(small)))))


def make_widget(s: Setting) -> QWidget:
    """The widget for one field (no value set yet)."""
    if s.kind == "bool":
        return QCheckBox()
    if s.choices:
        w = QComboBox()
        for value in s.choices:
            w.addItem(str(value), value)
        return w
    if s.kind == "int":
        w = QSpinBox()
        w.setRange(int(max(s.knob.lo if s.knob.lo is not None else -_INT_MAX, -_INT_MAX)),
                   int(min(s.knob.hi if s.knob.hi is not None else _INT_MAX, _INT_MAX)))
        return w
    if s.kind == "float":
        w = QDoubleSpinBox()
        w.setDecimals(_decimals(s))
        w.setRange(s.knob.lo if s.knob.lo is not None else -1e12, s.knob.hi if s.knob.hi is not None else 1e12)
        w.setSingleStep(10 ** -(w.decimals() - 1) if w.decimals() > 1 else 1.0)
        return w
    return QLineEdit()  # text, and tuples as "1, 2, 2"


class SchemaForm(QWidget):
    """Rows for ``settings`` (one section's fields), bound both ways to that section."""

    changed = Signal()

    def __init__(self, settings: list[Setting], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = list(settings)
        self.widgets: dict[str, QWidget] = {}
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        for s in self.settings:
            w = make_widget(s)
            w.setToolTip(s.knob.help)
            self.widgets[s.name] = w
            form.addRow(s.knob.label, w)
            for signal in ("toggled", "currentIndexChanged", "valueChanged", "editingFinished"):
                if hasattr(w, signal):
                    getattr(w, signal).connect(lambda *_: self.changed.emit())
                    break
            form.labelForField(w).setToolTip(s.knob.help)
        self.set_values({s.name: s.default for s in self.settings})

    # -- two-way binding ------------------------------------------------------------------------

    def set_values(self, section: Any) -> None:
        """Show a section's values (a config dataclass or a dict of field -> value)."""
        get = section.get if isinstance(section, dict) else (lambda name, default=None: getattr(section, name))
        for s in self.settings:
            value = get(s.name, s.default)
            if value is None:
                value = s.default
            w = self.widgets[s.name]
            w.blockSignals(True)
            if isinstance(w, QCheckBox):
                w.setChecked(bool(value))
            elif isinstance(w, QComboBox):
                w.setCurrentIndex(max(0, w.findData(value)))
            elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
                w.setValue(value)
            else:
                w.setText(", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value or ""))
            w.blockSignals(False)

    def values(self) -> dict[str, Any]:
        """field -> value as the widgets show it (ValueError naming the field for unreadable text)."""
        out: dict[str, Any] = {}
        for s in self.settings:
            w = self.widgets[s.name]
            if isinstance(w, QCheckBox):
                out[s.name] = w.isChecked()
            elif isinstance(w, QComboBox):
                out[s.name] = w.currentData()
            elif isinstance(w, QSpinBox):
                out[s.name] = int(w.value())
            elif isinstance(w, QDoubleSpinBox):
                out[s.name] = float(w.value())
            else:
                out[s.name] = _parse_text(s, w.text())
        return out

    # -- settings file --------------------------------------------------------------------------

    def save(self, qsettings, prefix: str) -> None:
        for name, value in self.values().items():
            qsettings.setValue(f"{prefix}/{name}", list(value) if isinstance(value, tuple) else value)

    def restore(self, qsettings, prefix: str) -> None:
        """Show the saved values; one that no longer fits its field keeps the widget's value."""
        from .settings import get

        current = self.values()
        restored = {}
        for s in self.settings:
            key = f"{prefix}/{s.name}"
            if not qsettings.contains(key) or s.kind.startswith("tuple["):
                continue
            kind = {"bool": bool, "int": int, "float": float}.get(s.kind, str)
            value = get(qsettings, key, current[s.name], kind=kind)
            ok = value in s.choices if s.choices else (
                (s.knob.lo is None or value >= s.knob.lo) and (s.knob.hi is None or value <= s.knob.hi)
                if kind in (int, float) else True)
            if ok:
                restored[s.name] = value
        self.set_values({**current, **restored})


def _parse_text(s: Setting, text: str) -> Any:
    text = text.strip()
    if not s.kind.startswith("tuple["):
        return None if (s.nullable and not text) else text
    one = int if s.kind == "tuple[int, ...]" else float
    try:
        return tuple(one(p) for p in text.replace(" ", ",").split(",") if p)
    except ValueError:
        raise ValueError(f"{s.key} must be comma-separated numbers, e.g. 1, 2, 2; got {text!r}") from None
