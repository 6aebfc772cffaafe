"""The dataset doctor in the Dataset panel (issue 17): findings about the loaded folder, with fixes.

``DoctorView(state, sources)``: ``sources()`` gives the folders / files loaded now ([] = the
built-in set, which needs no check). "Check Dataset" runs ``evaluation.doctor.diagnose`` on a
worker; each finding is a row (its files beneath it, its advice as the tooltip and below the
list); "Exclude Duplicates" asks the panel to leave the extra copies out
(``exclude_requested(kept_files)``; the Dataset panel reloads with ``data.exclude_duplicates`` on, the
same rule in the loader).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from PySide6.QtCore import Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import eval_jobs
from ..workers import Task
from . import plotting

SHOWN_FILES = 50  # file rows under one finding


class DoctorView(QWidget):
    finished = Signal(object)  # DoctorReport | None
    exclude_requested = Signal(list)  # the files that stay (the Dataset panel reloads with exclude_duplicates)

    def __init__(self, state, sources: Callable[[], list[str]], options: Callable[[], tuple[int, bool]], parent=None):
        super().__init__(parent)
        self.state = state
        self.sources = sources
        self.options = options  # () -> (image_size, flip)
        self.task: Task | None = None
        self.report = None
        self.check_button = QPushButton("Check Dataset")
        self.check_button.setToolTip("Look for duplicates, mixed sizes and modes, images a mirror would change, "
                                     "a set too small to learn without copying, very large images.")
        self.check_button.clicked.connect(self.check)
        self.fix_button = QPushButton("Exclude Duplicates")
        self.fix_button.setToolTip("Reload with 'Leave out duplicates' on: the extra copies are left out (the first of "
                                   "each group stays), and the run's settings record it (train --exclude-duplicates).")
        self.fix_button.clicked.connect(self.exclude_duplicates)
        self.fix_button.setEnabled(False)
        self.status = QLabel("<b>Dataset check</b> <span style='color:gray'>not run</span>")
        plotting.quiet_label(self.status)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Finding", "Files / folder"])
        self.tree.setColumnWidth(0, 420)
        self.tree.currentItemChanged.connect(self._show_advice)
        self.advice = QLabel("")
        self.advice.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(self.status, 1)
        top.addWidget(self.check_button)
        top.addWidget(self.fix_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addWidget(self.tree, 1)
        lay.addWidget(self.advice)

    def is_running(self) -> bool:
        return self.task is not None and self.task.is_running()

    def check(self) -> bool:
        paths = list(self.sources())
        if not paths:
            self.status.setText("<b>Dataset check</b> the built-in dataset needs none; open a folder of your own")
            return False
        if self.is_running():
            return False
        size, flip = self.options()
        task = Task(eval_jobs.make_doctor(paths, image_size=size, flip=flip), name="doctor")
        task.progress.connect(lambda d, t, m: self.status.setText(f"<b>Dataset check</b> {m}"))
        task.succeeded.connect(self.show_report)
        task.failed.connect(self._failed)
        task.cancelled.connect(lambda: self.finished.emit(None))
        task.finished.connect(lambda t=task: self._done(t))
        self.task = task
        self.check_button.setEnabled(False)
        self.fix_button.setEnabled(False)
        self.status.setText("<b>Dataset check</b> reading the files…")
        task.start()
        return True

    def _done(self, task: Task) -> None:
        if self.task is task:
            self.task = None
            self.check_button.setEnabled(True)

    def _failed(self, message: str, details: str) -> None:
        self.status.setText("<b>Dataset check</b> failed")
        self.state.report_error(message, details)
        self.finished.emit(None)

    def show_report(self, report) -> None:
        self.report = report
        self.tree.clear()
        for f in report.findings:
            item = QTreeWidgetItem([f"{'⚠' if f.severity == 'warning' else 'ℹ'}  {f.title}", str(len(f.files) or "")])
            item.setToolTip(0, f.advice)
            if f.severity == "warning":
                item.setForeground(0, QColor(plotting.VERMILION))
            item.setData(0, 256, f.advice)  # Qt.UserRole
            rows = f.groups if f.groups else [[p] for p in f.files]
            for group in rows[:SHOWN_FILES]:
                text = "  =  ".join(os.path.basename(p) for p in group)
                child = QTreeWidgetItem([text, os.path.dirname(group[0])])
                child.setToolTip(0, "\n".join(group))
                child.setData(0, 256, f.advice)
                item.addChild(child)
            if len(rows) > SHOWN_FILES:
                item.addChild(QTreeWidgetItem([f"… and {len(rows) - SHOWN_FILES} more", ""]))
            self.tree.addTopLevelItem(item)
        self.status.setText(f"<b>Dataset check</b> {report.summary()}")
        self.advice.setText(report.findings[0].advice if report.findings else "")
        self.fix_button.setEnabled(bool(report.exclude()))
        self.fix_button.setText(f"Exclude {len(report.exclude())} Duplicate(s)" if report.exclude()
                                else "Exclude Duplicates")
        self.finished.emit(report)

    def _show_advice(self, current, _previous=None) -> None:
        if current is not None and current.data(0, 256):
            self.advice.setText(str(current.data(0, 256)))

    def exclude_duplicates(self) -> None:
        if self.report is None or not self.report.exclude():
            return
        kept = self.report.kept_files()
        self.fix_button.setEnabled(False)
        self.status.setText(f"<b>Dataset check</b> loading {len(kept):,} files without "
                            f"{len(self.report.exclude())} duplicate(s)")
        self.exclude_requested.emit(kept)

    def shutdown(self) -> None:
        if self.task is not None:
            self.task.cancel()
