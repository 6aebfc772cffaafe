"""Small helpers the panels share: form rows with tooltips, section boxes (hand-made or generated from the
schema), a busy progress row."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLayout,
                               QProgressBar, QPushButton, QScrollArea, QSpinBox, QVBoxLayout, QWidget)

from ..forms import SchemaForm


def settings_column(items: list[QWidget | QLayout]) -> QScrollArea:
    """The panels' left column: section boxes (and button rows) stacked top-down in a vertical-only scroll area."""
    inner = QWidget()
    column = QVBoxLayout(inner)
    column.setContentsMargins(0, 0, 6, 0)
    for item in items:
        if isinstance(item, QLayout):
            column.addLayout(item)
        else:
            column.addWidget(item)
    column.addStretch(1)
    scroll = QScrollArea()
    scroll.setWidget(inner)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QScrollArea.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    # never narrower than its contents plus the vertical scroll bar: nothing hides under the bar
    scroll.setMinimumWidth(inner.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 2)
    return scroll


def section(title: str) -> tuple[QGroupBox, QFormLayout]:
    box = QGroupBox(title)
    form = QFormLayout(box)
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return box, form


def schema_section(title: str, settings: list, **kwargs) -> tuple[QGroupBox, SchemaForm]:
    """A section box holding one form generated from the schema (``gui.forms.SchemaForm``)."""
    box = QGroupBox(title)
    form = SchemaForm(settings, **kwargs)
    QVBoxLayout(box).addWidget(form)
    return box, form


class WrappedLabel(QLabel):
    """A word-wrapped label that keeps the height its text needs at its width. In a settings column (a scroll
    area) taller than the window, Qt's layouts otherwise squeeze wrapped labels to their one-line minimum
    and cut their text (seen: an opened model's "step · px" line hidden under its path)."""

    def _fit(self) -> None:
        old = self.minimumHeight()
        self.setMinimumHeight(0)  # QLabel's heightForWidth never answers less than the minimum height
        need = self.heightForWidth(self.width())
        self.setMinimumHeight(need if need > 0 else old)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._fit()

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        super().setText(text)
        self._fit()


def note(text: str = "", selectable: bool = False) -> QLabel:
    """A quiet, word-wrapped line of explanation (a hint under a choice, what a model is)."""
    label = WrappedLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: palette(mid);")
    if selectable:
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def add_row(form: QFormLayout, label: str, widget: QWidget, tip: str) -> QWidget:
    """A labelled row whose label and field both explain themselves in one sentence."""
    widget.setToolTip(tip)
    lab = QLabel(label)
    lab.setToolTip(tip)
    lab.setBuddy(widget)
    form.addRow(lab, widget)
    return widget


def int_spin(lo: int, hi: int, value: int, step: int = 1, suffix: str = "") -> QSpinBox:
    s = QSpinBox()
    s.setRange(lo, hi)
    s.setSingleStep(step)
    s.setValue(value)
    s.setGroupSeparatorShown(True)
    if suffix:
        s.setSuffix(suffix)
    s.setKeyboardTracking(False)
    return s


def float_spin(lo: float, hi: float, value: float, decimals: int, step: float) -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setDecimals(decimals)
    s.setRange(lo, hi)
    s.setSingleStep(step)
    s.setValue(value)
    s.setKeyboardTracking(False)
    return s


class ProgressRow(QWidget):
    """A progress bar, a message and a Cancel button, shown while a task runs."""

    cancel_clicked = Signal()

    def __init__(self, parent=None, cancel_text: str = "Cancel"):
        super().__init__(parent)
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.label = QLabel("")
        self.label.setStyleSheet("color: palette(mid);")
        from ..widgets.plotting import quiet_label

        quiet_label(self.label)
        self.cancel_button = QPushButton(cancel_text)
        self.cancel_button.clicked.connect(self.cancel_clicked)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.bar, 2)
        lay.addWidget(self.label, 3)
        lay.addWidget(self.cancel_button)
        self.finish("")

    def start(self, message: str) -> None:
        self.bar.setRange(0, 0)  # busy until the first report
        self.label.setText(message)
        self.cancel_button.setEnabled(True)
        self.bar.setVisible(True)
        self.cancel_button.setVisible(True)

    def report(self, done: int, total: int, message: str = "") -> None:
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(done)
        if message:
            self.label.setText(message)

    def finish(self, message: str) -> None:
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setVisible(False)
        self.cancel_button.setVisible(False)
        self.label.setText(message)


def column_widget(layout, min_width: int, max_width: int) -> QWidget:
    """A widget holding ``layout``, between ``min_width`` and ``max_width`` px wide (a panel's settings column)."""
    w = QWidget()
    w.setLayout(layout)
    w.setMinimumWidth(min_width)
    w.setMaximumWidth(max_width)
    return w
