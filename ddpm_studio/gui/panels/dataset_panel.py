"""Dataset panel: drop folders or images, choose preprocessing, see what will be trained on.

Decoding runs on a worker thread (:func:`..jobs.make_load_dataset`); the UI shows progress, can
cancel, and keeps the previous dataset when a load fails or is cancelled.
"""

from __future__ import annotations

import dataclasses
import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QHeaderView, QLabel,
                               QPushButton, QSplitter, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from ...config import DataConfig, settings_of
from .. import jobs
from ..state import StudioState
from ..widgets.doctor_view import DoctorView
from ..widgets.drop_zone import DropZone
from ..widgets.thumbnail_grid import ThumbnailGrid
from ..workers import Task
from ..forms import fields, name_items
from .common import ProgressRow, column_widget, schema_section

IMAGE_SIZES = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
CHANNEL_CHOICES = (("auto", "Automatic"), ("3", "RGB"), ("1", "Grayscale"))
# The DataConfig fields of the Preprocessing form (widgets, labels, tooltips from config.py): every one
# (a new one too) except image_size, which has a list of sizes of its own, and folder, what was opened.
OPTION_FIELDS = tuple(s.name for s in settings_of(DataConfig) if s.name not in ("folder", "image_size"))


class DatasetPanel(QWidget):
    loaded = Signal(object)  # ImageSet
    load_failed = Signal(str)

    def __init__(self, state: StudioState, parent=None):
        super().__init__(parent)
        self.state = state
        self.task: Task | None = None
        self.sources: list[str] = []  # what is loaded now; [] = built-in
        self._pending_sources: list[str] = []
        self.ask_folder = self._ask_folder  # replaceable (tests)

        left_w = self._build_left()
        right = self._build_right()
        lay = QHBoxLayout(self)
        lay.addWidget(left_w)
        lay.addLayout(right, 1)
        self._show_skipped([])
        self._options_changed()
        state.activity_changed.connect(self._lock_while_training)

    def _build_left(self) -> QWidget:
        """The drop zone and the preprocessing settings."""
        # -- left: drop zone and preprocessing -----------------------------------------------
        self.drop_zone = DropZone()
        self.drop_zone.paths_dropped.connect(self.load_paths)
        self.drop_zone.browse_requested.connect(self.open_folder)

        box = self._build_preprocessing()
        self.progress = ProgressRow()
        self.progress.cancel_clicked.connect(self.cancel)

        self.training_note = QLabel("Training runs on the images loaded now; stop it to change the dataset.")
        self.training_note.setWordWrap(True)
        self.training_note.setStyleSheet("color: palette(mid);")
        self.training_note.setVisible(False)

        left = QVBoxLayout()
        left.addWidget(self.training_note)
        left.addWidget(self.drop_zone)
        left.addWidget(box)
        left.addStretch(1)
        return column_widget(left, 300, 380)

    def _build_preprocessing(self) -> QWidget:
        box, self.options_form = schema_section("Preprocessing", fields(DataConfig, OPTION_FIELDS))
        form = self.options_form.form
        size = fields(DataConfig, ("image_size",))[0]  # a list of common sizes rather than a spin box
        self.size_combo = QComboBox()
        for px in IMAGE_SIZES:
            self.size_combo.addItem(f"{px} × {px} px", px)
        self.size_combo.setCurrentIndex(IMAGE_SIZES.index(32))
        self.size_combo.setToolTip(size.knob.help)
        label = QLabel(size.knob.label)
        label.setToolTip(size.knob.help)
        form.insertRow(0, label, self.size_combo)
        w = self.options_form.widgets
        self.channels_combo, self.flip_check = w["channels"], w["flip"]
        self.background_combo, self.min_size_spin = w["background"], w["min_size"]
        self.dedup_check = w["exclude_duplicates"]  # the doctor's Exclude Duplicates sets it
        name_items(self.channels_combo, dict(CHANNEL_CHOICES))
        self.min_size_spin.setSuffix(" px")
        self.min_size_spin.setSpecialValueText("keep all")
        self.apply_button = QPushButton("Reload with These Settings")
        self.apply_button.setToolTip("Decode the current images again with the preprocessing above.")
        self.apply_button.clicked.connect(self.reload)
        self.builtin_button = QPushButton("Use Built-in Dataset")
        self.builtin_button.setToolTip("The shapes dataset that ships with DDPM Studio; the tiny preset learns it in "
                                       "minutes.")
        self.builtin_button.clicked.connect(lambda: self.load_paths([]))
        form.addRow(self.apply_button)
        form.addRow(self.builtin_button)
        self.size_combo.currentIndexChanged.connect(self._options_changed)
        self.options_form.changed.connect(self._options_changed)
        return box

    def _build_right(self) -> QVBoxLayout:
        # -- right: summary, thumbnails, skipped files ---------------------------------------------
        self.summary = QLabel("No images loaded")
        f = self.summary.font()
        f.setPointSizeF(f.pointSizeF() * 1.3)
        f.setBold(True)
        self.summary.setFont(f)
        self.source_label = QLabel("")
        self.source_label.setStyleSheet("color: palette(mid);")
        self.source_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.source_label.setWordWrap(True)
        self.grid = ThumbnailGrid(icon_size=64)
        self.grid.setToolTip("The images after preprocessing, exactly as the network will see them.")
        self.skipped_label = QLabel("Skipped files")
        self.skipped = QTreeWidget()
        self.skipped.setHeaderLabels(["File", "Why it was skipped"])
        self.skipped.setRootIsDecorated(False)
        self.skipped.setAlternatingRowColors(True)
        self.skipped.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self.skipped.header().setStretchLastSection(True)
        self.skipped.setColumnWidth(0, 360)
        skipped_w = QWidget()
        sl = QVBoxLayout(skipped_w)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.addWidget(self.skipped_label)
        sl.addWidget(self.skipped)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.grid)
        split.addWidget(skipped_w)
        self.doctor = DoctorView(self.state, lambda: list(self.sources),  # issue 17: the dataset doctor
                                 lambda: (int(self.size_combo.currentData()), self.flip_check.isChecked()))
        self.doctor.exclude_requested.connect(self._exclude_duplicates)
        split.addWidget(self.doctor)
        split.setStretchFactor(0, 4)
        split.setStretchFactor(1, 1)
        split.setChildrenCollapsible(False)
        right = QVBoxLayout()
        right.addWidget(self.summary)
        right.addWidget(self.source_label)
        right.addWidget(self.progress)
        right.addWidget(split, 1)
        return right

    # -- options ----------------------------------------------------------------------------------
    def data_config(self) -> DataConfig:
        return DataConfig(folder=None, image_size=int(self.size_combo.currentData()), **self.options_form.values())

    def set_data_config(self, cfg: DataConfig) -> None:
        if cfg.image_size in IMAGE_SIZES:
            self.size_combo.setCurrentIndex(IMAGE_SIZES.index(cfg.image_size))
        else:
            self.size_combo.addItem(f"{cfg.image_size} × {cfg.image_size} px", cfg.image_size)
            self.size_combo.setCurrentIndex(self.size_combo.count() - 1)
        self.options_form.set_values(cfg)
        self._options_changed()

    def _options_changed(self, *_) -> None:
        loaded = self.state.data_config
        cur = self.data_config()
        differs = self.state.images is not None and dataclasses.replace(loaded, folder=None, flip=cur.flip) != cur
        self.apply_button.setEnabled(differs and not self.is_loading() and not self.state.is_busy("training"))
        if self.state.images is not None and cur.flip != loaded.flip:
            # flip acts at training time only: no need to decode again
            self.state.set_data_config(dataclasses.replace(loaded, flip=cur.flip))

    def _lock_while_training(self) -> None:
        """A running trainer has its images already: nothing here would change it, so nothing is editable."""
        training = self.state.is_busy("training")
        for w in (self.drop_zone, self.size_combo, self.options_form, self.builtin_button):
            w.setEnabled(not training)
        self.training_note.setVisible(training)
        self._options_changed()

    # -- loading ----------------------------------------------------------------------------------
    def is_loading(self) -> bool:
        return self.task is not None and self.task.is_running()

    def _ask_folder(self) -> str | None:
        from .. import settings as settings_mod

        start = settings_mod.last_dir("images", os.path.expanduser("~"))
        path = QFileDialog.getExistingDirectory(self, "Open Image Folder", start)
        if path:
            settings_mod.remember_dir("images", os.path.dirname(os.path.abspath(path)))  # beside the folder opened
        return path or None

    def open_folder(self) -> None:
        path = self.ask_folder()
        if path:
            self.load_paths([path])

    def reload(self) -> None:
        self.load_paths(list(self.sources))

    def _exclude_duplicates(self, _kept: list) -> None:
        """The doctor's fix: the same files again with data.exclude_duplicates on, so the run's config records
        the choice and a resumed run (or the CLI) leaves out the same files."""
        self.dedup_check.setChecked(True)
        self.reload()

    def load_paths(self, paths: list[str]) -> bool:
        """Load ``paths`` (folders and/or image files; [] = built-in). False if nothing started."""
        paths = [str(p) for p in paths]
        if self.state.is_busy("training"):
            self.state.report_error("Training runs on the images loaded now: stop it before opening other images.", "")
            return False
        try:
            cfg = self.data_config()
            cfg.validate()
            missing = [p for p in paths if not os.path.exists(p)]
            if missing:
                raise ValueError(f"{missing[0]} does not exist")
        except ValueError as e:
            self.state.report_error(f"Cannot open these images: {e}", "")
            return False
        if self.is_loading():
            self.task.cancel()
        self._pending_sources = paths
        what = "built-in dataset" if not paths else (os.path.basename(paths[0].rstrip("/\\")) or paths[0]) + (
            f" and {len(paths) - 1} more" if len(paths) > 1 else "")
        task = Task(jobs.make_load_dataset(paths, cfg), name="dataset")
        task.progress.connect(self.progress.report)
        task.succeeded.connect(lambda imgs, c=cfg, p=paths: self._on_loaded(imgs, c, p))
        task.failed.connect(self._on_failed)
        task.cancelled.connect(lambda: self.progress.finish("Loading cancelled; the previous images are kept."))
        task.finished.connect(lambda t=task: self._on_task_finished(t))
        self.task = task
        self.progress.start(f"Loading {what}…")
        self.state.begin("dataset", f"Loading {what}")
        self.apply_button.setEnabled(False)
        task.start()
        return True

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _on_task_finished(self, task: Task) -> None:
        if self.task is task:
            self.task = None
            self.state.end("dataset")
            self._options_changed()

    def _on_loaded(self, images, cfg: DataConfig, paths: list[str]) -> None:
        self.sources = paths
        folder = None if not paths else (paths[0] if len(paths) == 1 else images.source)
        loaded_cfg = dataclasses.replace(cfg, folder=folder)
        self.state.set_data_config(loaded_cfg)
        self.state.set_images(images)
        self.show_images(images)
        took = " (from cache)" if getattr(images, "from_cache", False) else ""
        self.progress.finish(f"Loaded {len(images.images):,} images{took}.")
        self.loaded.emit(images)

    def _on_failed(self, message: str, details: str) -> None:
        self.progress.finish("Loading failed; the previous images are kept.")
        self.state.report_error(message, details)
        self.load_failed.emit(message)

    # -- display ----------------------------------------------------------------------------------
    def show_images(self, images) -> None:
        n = len(images.images)
        ch = {1: "grayscale", 3: "RGB"}.get(int(images.channels), f"{images.channels} channels")
        self.summary.setText(f"{n:,} images · {images.image_size} × {images.image_size} px · {ch}")
        src = "Built-in dataset (shapes drawn by DDPM Studio)" if images.source == "built-in" else images.source
        self.source_label.setText(src)
        self.grid.set_images(images.images, list(images.paths))
        self._show_skipped(list(images.skipped))

    def _show_skipped(self, skipped: list) -> None:
        self.skipped.clear()
        items = [QTreeWidgetItem([str(s.path), str(s.reason)]) for s in skipped]
        self.skipped.addTopLevelItems(items)
        self.skipped_label.setText(
            f"<b>Skipped files ({len(skipped)})</b>" if skipped
            else "<b>Skipped files</b> <span style='color:gray'>none</span>"
        )

    # -- settings ---------------------------------------------------------------------------------
    def save_settings(self, s) -> None:
        from ..settings import save_section

        save_section(s, "dataset", self.data_config(), ("image_size",) + OPTION_FIELDS)  # dataset/<field>
        s.setValue("dataset/sources", "\n".join(self.sources))

    def restore_settings(self, s) -> list[str]:
        """Restore the options (each saved value the schema still accepts); return the sources to reopen."""
        from ..settings import get, restore_section

        self.set_data_config(restore_section(s, "dataset", DataConfig(), ("image_size",) + OPTION_FIELDS))
        sources = [p for p in get(s, "dataset/sources", "").split("\n") if p]
        return [p for p in sources if os.path.exists(p)]

    def shutdown(self) -> None:
        self.cancel()
        self.doctor.shutdown()
