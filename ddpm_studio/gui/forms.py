"""Forms generated from the config schema: one row per field, its label, range or choices and
tooltip from the field's ``knob(...)`` declaration (config.py), bound both ways to a config section
and kept in the settings file under the field's key.

``SchemaForm(settings)`` builds the widgets; ``set_values(section)`` shows a section's values,
``values()`` reads them back as a dict of field -> value (what ``dataclasses.replace`` takes),
``save(qsettings, prefix)`` / ``restore(qsettings, prefix)`` persist them. ``fields(section, names)``
picks a panel's rows by name, in its order; ``name_items`` gives a choice's combo friendlier words
(the values, which the binding reads, stay). The panels' main forms and "More settings" are all
SchemaForms: a field reaches a panel by its name in one of the panel's field lists.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLineEdit, QSpinBox,
                               QWidget)

from ..config import Setting, settings_of

_INT_MAX = 2**31 - 1  # QSpinBox holds a C int


def _decimals(s: Setting) -> int:
    """Enough decimals (2 to 8) to show the default and the range's ends exactly."""
    needed = [next((d for d in range(9) if abs(round(v, d) - v) <= 1e-12 * max(1.0, abs(v))), 8)
              for v in (s.default, s.knob.lo, s.knob.hi) if isinstance(v, (int, float)) and abs(v) < 1e12]
    return max([2, *needed]) if needed else 3


def _int_step(default: Any) -> int:
    """Arrow-key step: half the default's leading power of ten (4000 -> 500, 64 -> 5), at least 1."""
    return max(1, 10 ** (len(str(abs(int(default or 0)))) - 1) // 2)


def _float_step(default: Any, decimals: int, hi: float | None = None) -> float:
    """A tenth of the default's order of magnitude (1e-3 -> 1e-4), or the last shown decimal but one;
    for a decay just under its upper bound of 1, the order of its distance to 1 (0.999 -> 0.001)."""
    if isinstance(default, (int, float)) and 0.5 < default < 1 and hi is not None and hi <= 1:
        return 10.0 ** math.floor(math.log10(1 - default))
    if isinstance(default, (int, float)) and default:
        return 10.0 ** (math.floor(math.log10(abs(default))) - 1)
    return 10.0 ** -(decimals - 1) if decimals > 1 else 1.0


def number_text(v: float) -> str:
    """A float as a person writes it: 0.001, 0.995, 5, 2e-4 (never 0.00100000)."""
    if v and (abs(v) < 1e-3 or abs(v) >= 1e7):
        mant, _, exp = f"{v:.3g}".partition("e")
        return f"{mant}e{int(exp)}" if exp else mant
    return f"{v:.7g}"


_LADDER = [m * 10.0 ** e for e in range(-12, 13) for m in (1.0, 2.0, 5.0)]


def _one_two_five(value: float, steps: int) -> float:
    """``steps`` moves along 1, 2, 5, 10, 20, 50... from the rung nearest ``value`` (> 0)."""
    i = min(range(len(_LADDER)), key=lambda j: abs(math.log10(_LADDER[j]) - math.log10(max(value, 1e-12))))
    return _LADDER[max(0, min(len(_LADDER) - 1, i + steps))]


class NumberSpinBox(QDoubleSpinBox):
    """A float field's spin box: shows the value as written (``number_text``), accepts any float
    typed (``2e-4`` too), and on a field spanning four or more orders of magnitude (a learning rate)
    steps along 1, 2, 5 x 10^k instead of by a fixed amount."""

    def __init__(self, s: Setting) -> None:
        super().__init__()
        lo = s.knob.lo if s.knob.lo is not None else -1e12
        hi = s.knob.hi if s.knob.hi is not None else 1e12
        self.log_steps = lo > 0 and hi / lo >= 1e4
        shown = _decimals(s)
        self.setDecimals(12 if self.log_steps else shown)
        self.setRange(lo, hi)
        self.setSingleStep(_float_step(s.default, shown, s.knob.hi))
        self.setKeyboardTracking(False)

    def textFromValue(self, value: float) -> str:  # noqa: N802 - Qt's name
        return number_text(value)

    def valueFromText(self, text: str) -> float:  # noqa: N802
        try:
            return float(text.replace(",", "").strip())
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int):
        t = text.replace(",", "").strip()
        try:
            v = float(t)
        except ValueError:
            partial = t == "" or t[-1] in "eE.-+" or t in ("-", "+")
            return (QValidator.State.Intermediate if partial else QValidator.State.Invalid), text, pos
        ok = self.minimum() <= v <= self.maximum()
        return (QValidator.State.Acceptable if ok else QValidator.State.Intermediate), text, pos

    def stepBy(self, steps: int) -> None:  # noqa: N802
        if not self.log_steps:
            return super().stepBy(steps)
        self.setValue(min(self.maximum(), max(self.minimum(), _one_two_five(self.value(), steps))))


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
        w.setSingleStep(_int_step(s.default))
        w.setGroupSeparatorShown(True)
        w.setKeyboardTracking(False)  # one change when the typing is done, not one per digit
        return w
    if s.kind == "float":
        return NumberSpinBox(s)
    return QLineEdit()  # text, and tuples as "1, 2, 2"


def fields(section: Any, names: tuple[str, ...] | list[str]) -> list[Setting]:
    """The settings of ``section`` named in ``names``, in that order (KeyError for a name it lacks)."""
    by_name = {s.name: s for s in settings_of(section)}
    return [by_name[n] for n in names]


def name_items(combo: QComboBox, texts: Mapping[Any, str], tips: Mapping[Any, str] | None = None) -> None:
    """Show ``texts[value]`` (and ``tips[value]`` as its tooltip) for a choice combo's items."""
    for i in range(combo.count()):
        value = combo.itemData(i)
        if value in texts:
            combo.setItemText(i, texts[value])
        if tips and value in tips:
            combo.setItemData(i, tips[value], Qt.ItemDataRole.ToolTipRole)


class SchemaForm(QWidget):
    """Rows for ``settings`` (one section's fields), bound both ways to that section.

    ``beside`` puts a widget of the panel's to the right of a field's own (a Randomise button by the
    seed); ``form`` is the QFormLayout, so a panel can add rows of its own (a note, a read-out).
    """

    changed = Signal()

    def __init__(self, settings: list[Setting], parent: QWidget | None = None, *,
                 beside: Mapping[str, QWidget] | None = None) -> None:
        super().__init__(parent)
        self.settings = list(settings)
        self.widgets: dict[str, QWidget] = {}
        self.form = form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        for s in self.settings:
            w = make_widget(s)
            w.setToolTip(s.knob.help)
            self.widgets[s.name] = w
            form.addRow(s.knob.label, _with(w, (beside or {}).get(s.name)))
            for signal in ("toggled", "currentIndexChanged", "valueChanged", "editingFinished"):
                if hasattr(w, signal):
                    getattr(w, signal).connect(lambda *_: self.changed.emit())
                    break
            self.label(s.name).setToolTip(s.knob.help)
            self.label(s.name).setBuddy(w)
        self.set_values({s.name: s.default for s in self.settings})

    def label(self, name: str) -> QWidget:
        """The row label of field ``name``."""
        w = self.widgets[name]
        return self.form.labelForField(w if w.parentWidget() is self else w.parentWidget())

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
                w.setValue(min(max(value, w.minimum()), w.maximum()))  # a seed above a C int: the largest
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


def _with(w: QWidget, extra: QWidget | None) -> QWidget:
    """``w`` alone, or ``w`` and ``extra`` side by side in one row widget."""
    if extra is None:
        return w
    row = QWidget()
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(w, 1)
    lay.addWidget(extra)
    return row


def _parse_text(s: Setting, text: str) -> Any:
    text = text.strip()
    if s.nullable and not text:
        return None
    if not s.kind.startswith("tuple["):
        return text
    one = int if s.kind == "tuple[int, ...]" else float
    try:
        return tuple(one(p) for p in text.replace(" ", ",").split(",") if p)
    except ValueError:
        raise ValueError(f"{s.key} must be comma-separated numbers, e.g. 1, 2, 2; got {text!r}") from None
