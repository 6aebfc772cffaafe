"""Dataset panel: drop folders or images, choose preprocessing, see what will be trained on.

Decoding runs on a worker thread (:func:`..jobs.make_load_dataset`); the UI shows progress, can
cancel, and keeps the previous dataset when a load fails or is cancelled.
"""

from __future__ import annotations

import dataclasses
import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QHBoxLayout, QHeaderView, QLabel,
                               QPushButton, QSplitter, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from ...config import DataConfig
from .. import jobs
from ..state import StudioState
from ..widgets.doctor_view import DoctorView
from ..widgets.drop_zone import DropZone
from ..widgets.thumbnail_grid import ThumbnailGrid
from ..workers import Task
from .common import ProgressRow, add_row, column_widget, int_spin, section

IMAGE_SIZES = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
CHANNEL_CHOICES = (("auto", "Automatic"), ("3", "RGB"), ("1", "Grayscale"))


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
        box, form = section("Preprocessing")
        self.size_combo = QComboBox()
        for s in IMAGE_SIZES:
            self.size_combo.addItem(f"{s} × {s} px", s)
        self.size_combo.setCurrentIndex(IMAGE_SIZES.index(32))
        add_row(form, "Image size", self.size_combo,
                "Every image is resized on its short side and center-cropped to this square; small sizes train much "
                "faster.")
        self.channels_combo = QComboBox()
        for value, text in CHANNEL_CHOICES:
            self.channels_combo.addItem(text, value)
        add_row(form, "Channels", self.channels_combo,
                "Automatic uses grayscale only when every image is grayscale; otherwise RGB.")
        self.flip_check = QCheckBox("Random horizontal flip")
        self.flip_check.setChecked(False)
        add_row(form, "Augment", self.flip_check,
                "Mirror images at random while training. Helps photos of left-right symmetric scenes and faces; "
                "hurts text, digits, logos and anything with a left and a right (samples come out mirrored).")
        self.background_combo = QComboBox()
        self.background_combo.addItems(["white", "black"])
        add_row(form, "Background", self.background_combo,
                "Transparent pixels are painted onto this colour.")
        self.min_size_spin = int_spin(0, 100000, 0, 8, " px")
        self.min_size_spin.setSpecialValueText("keep all")
        add_row(form, "Minimum size", self.min_size_spin,
                "Skip images whose short side is smaller than this; 'keep all' upsamples small images.")
        self.dedup_check = QCheckBox("Leave out duplicates")  # data.exclude_duplicates (the doctor's fix)
        add_row(form, "Duplicates", self.dedup_check,
                "Leave out exact and near duplicate files; the first of each group stays and the others are listed "
                "as skipped (the same rule as the dataset check below).")
        self.apply_button = QPushButton("Reload with These Settings")
        self.apply_button.setToolTip("Decode the current images again with the preprocessing above.")
        self.apply_button.clicked.connect(self.reload)
        self.builtin_button = QPushButton("Use Built-in Dataset")
        self.builtin_button.setToolTip("The shapes dataset that ships with DDPM Studio; the tiny preset learns it in "
                                       "minutes.")
        self.builtin_button.clicked.connect(lambda: self.load_paths([]))
        form.addRow(self.apply_button)
        form.addRow(self.builtin_button)
        for w in (self.size_combo, self.channels_combo, self.background_combo):
            w.currentIndexChanged.connect(self._options_changed)
        self.flip_check.toggled.connect(self._options_changed)
        self.dedup_check.toggled.connect(self._options_changed)
        self.min_size_spin.valueChanged.connect(self._options_changed)
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
        return DataConfig(
            folder=None,
            image_size=int(self.size_combo.currentData()),
            channels=str(self.channels_combo.currentData()),
            flip=self.flip_check.isChecked(),
            background=self.background_combo.currentText(),
            min_size=int(self.min_size_spin.value()),
            exclude_duplicates=self.dedup_check.isChecked(),
        )

    def set_data_config(self, cfg: DataConfig) -> None:
        if cfg.image_size in IMAGE_SIZES:
            self.size_combo.setCurrentIndex(IMAGE_SIZES.index(cfg.image_size))
        else:
            self.size_combo.addItem(f"{cfg.image_size} × {cfg.image_size} px", cfg.image_size)
            self.size_combo.setCurrentIndex(self.size_combo.count() - 1)
        i = self.channels_combo.findData(cfg.channels)
        self.channels_combo.setCurrentIndex(max(0, i))
        self.flip_check.setChecked(bool(cfg.flip))
        self.background_combo.setCurrentText(cfg.background)
        self.min_size_spin.setValue(int(cfg.min_size))
        self.dedup_check.setChecked(bool(cfg.exclude_duplicates))

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
        for w in (self.drop_zone, self.size_combo, self.channels_combo, self.flip_check, self.background_combo,
                  self.min_size_spin, self.dedup_check, self.builtin_button):
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
        cfg = self.data_config()
        s.setValue("dataset/image_size", cfg.image_size)
        s.setValue("dataset/channels", cfg.channels)
        s.setValue("dataset/flip", cfg.flip)
        s.setValue("dataset/background", cfg.background)
        s.setValue("dataset/min_size", cfg.min_size)
        s.setValue("dataset/exclude_duplicates", cfg.exclude_duplicates)
        s.setValue("dataset/sources", "\n".join(self.sources))

    def restore_settings(self, s) -> list[str]:
        """Restore the options; return the sources to reopen ([] = built-in)."""
        from ..settings import get

        d = DataConfig()
        try:
            cfg = DataConfig(None, get(s, "dataset/image_size", d.image_size), get(s, "dataset/channels", d.channels),
                             get(s, "dataset/flip", d.flip), get(s, "dataset/background", d.background),
                             get(s, "dataset/min_size", d.min_size),
                             get(s, "dataset/exclude_duplicates", d.exclude_duplicates))
            cfg.validate()
        except ValueError:
            cfg = d
        self.set_data_config(cfg)
        sources = [p for p in get(s, "dataset/sources", "").split("\n") if p]
        return [p for p in sources if os.path.exists(p)]

    def shutdown(self) -> None:
        self.cancel()
        self.doctor.shutdown()
