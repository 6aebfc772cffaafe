"""The Sampling panel's exports: the frame on screen, the final samples and the chain as a GIF, each
written by a job on a worker thread (``jobs.make_export_*``), and their settings (upscale, layout, GIF).

``ExportActions`` is a mixin of ``SamplingPanel``: it reads the panel's ``frames``, ``result``,
``current_frame()``, ``state`` and ``_update_buttons()``, and owns ``export_task``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PySide6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QPushButton, QWidget

from .. import jobs
from .. import settings as settings_mod
from ..workers import Task
from .common import add_row, float_spin, int_spin, section


class ExportActions:
    """Export settings, buttons and jobs of the Sampling panel (mixed into it)."""

    export_task: Task | None = None

    def _build_export(self) -> QWidget:
        ebox, eform = section("Export")
        self.scale_spin = int_spin(1, 16, 4, 1, "×")
        add_row(eform, "Upscale", self.scale_spin, "Enlarge exported images by this factor with crisp, "
                                                   "nearest-neighbour pixels.")
        self.layout_combo = QComboBox()
        self.layout_combo.addItem("One grid image", "grid")
        self.layout_combo.addItem("One file per image", "each")
        add_row(eform, "Samples as", self.layout_combo, "Save the final samples tiled into one PNG or as separate PNG "
                                                        "files.")
        self.gif_stride_spin = int_spin(1, 1000, 1)
        add_row(eform, "GIF stride", self.gif_stride_spin, "Use every n-th recorded step in the GIF (the last step is "
                                                           "always kept).")
        self.gif_fps_spin = int_spin(1, 60, 20, 1, " fps")
        add_row(eform, "GIF speed", self.gif_fps_spin, "Frames per second of the animated GIF.")
        self.gif_hold_spin = float_spin(0.0, 30.0, 1.5, 1, 0.5)
        self.gif_hold_spin.setSuffix(" s")
        add_row(eform, "Hold last", self.gif_hold_spin, "How long the GIF lingers on the final samples before looping.")
        self.export_frame_button = QPushButton("Frame…")
        self.export_frame_button.setToolTip("Save the frame on screen (x_t and predicted x₀ side by side) as PNG "
                                            "(Ctrl+E).")
        self.export_samples_button = QPushButton("Samples…")
        self.export_samples_button.setToolTip("Save the final samples as PNG.")
        self.export_gif_button = QPushButton("GIF…")
        self.export_gif_button.setToolTip("Save the reverse chain as an animated GIF (Ctrl+Shift+E).")
        self.export_frame_button.clicked.connect(lambda: self.export_frame())
        self.export_samples_button.clicked.connect(lambda: self.export_samples())
        self.export_gif_button.clicked.connect(lambda: self.export_gif())
        erow = QHBoxLayout()
        erow.addWidget(self.export_frame_button)
        erow.addWidget(self.export_samples_button)
        erow.addWidget(self.export_gif_button)
        eform.addRow(erow)
        return ebox


    # -- jobs -------------------------------------------------------------------------------------
    def _ask_save_path(self, title: str, filt: str, default: str) -> str | None:
        start = settings_mod.last_dir("exports", os.path.expanduser("~"))
        path, _ = QFileDialog.getSaveFileName(self, title, os.path.join(start, default), filt)
        return path or None

    def _ask_folder(self, title: str) -> str | None:
        path = QFileDialog.getExistingDirectory(self, title, settings_mod.last_dir("exports", os.path.expanduser("~")))
        return path or None

    def _start_export(self, job, what: str, target: str | None = None) -> bool:
        if self.export_task is not None and self.export_task.is_running():
            self.state.report_error("An export is already running; wait for it to finish.", "")
            return False
        if target:
            settings_mod.remember_dir("exports", target)
        task = Task(job, name="export")
        task.progress.connect(lambda d, t, m: self.state.begin("export", f"{what}: {m} {d}/{t}"))
        task.succeeded.connect(self._on_exported)
        task.failed.connect(lambda m, d: self.state.report_error(f"Export failed: {m}", d))
        task.finished.connect(lambda t=task: self._on_export_finished(t))
        self.export_task = task
        self.state.begin("export", what)
        task.start()
        self._update_buttons()
        return True

    def _on_exported(self, written: list) -> None:
        where = str(written[0]) if len(written) == 1 else f"{len(written)} files in {Path(written[0]).parent}"
        self.state.message.emit(f"Saved {where}")
        self._exported = [str(p) for p in written]

    def _on_export_finished(self, task: Task) -> None:
        if self.export_task is task:
            self.export_task = None
            self.state.end("export")
            self._update_buttons()
        written, self._exported = getattr(self, "_exported", None), None
        if written is not None:
            self.export_finished.emit(written)  # after the buttons are usable again

    def export_frame(self, path: str | None = None) -> bool:
        """The frame on screen: x_t and predicted x_0 side by side, as one PNG."""
        f = self.current_frame()
        if f is None:
            self.state.report_error("There is no frame to export yet: press Generate first.", "")
            return False
        path = path or self.ask_save_path("Export Frame", "PNG image (*.png)", f"frame_t{f.t:04d}.png")
        if not path:
            return False
        gap = np.full((f.xt.shape[0], 4, f.xt.shape[2]), 255, dtype=np.uint8)  # (H, 4, C) white divider
        image = np.concatenate([f.xt, gap, f.x0], axis=1)  # (H, 2W + 4, C)
        return self._start_export(jobs.make_export_png(image, path, self.scale_spin.value()), "Exporting frame", path)

    def export_samples(self, path: str | None = None, per_image: bool | None = None) -> bool:
        if self.result is None:
            self.state.report_error("There are no finished samples to export yet: let a generation finish first.", "")
            return False
        per_image = self.layout_combo.currentData() == "each" if per_image is None else per_image
        if not path:
            path = self.ask_folder("Export Samples to Folder") if per_image else \
                self.ask_save_path("Export Samples", "PNG image (*.png)", "samples.png")
        if not path:
            return False
        return self._start_export(jobs.make_export_samples(self.result.images, path, per_image,
                                                           self.scale_spin.value()),
                                  "Exporting samples", path)

    def export_gif(self, path: str | None = None) -> bool:
        if not self.frames:
            self.state.report_error("There is no reverse chain to export yet: press Generate first.", "")
            return False
        path = path or self.ask_save_path("Export GIF", "Animated GIF (*.gif)", "reverse_chain.gif")
        if not path:
            return False
        frames = [f.xt for f in self.frames]
        job = jobs.make_export_gif(frames, path, stride=self.gif_stride_spin.value(), fps=self.gif_fps_spin.value(),
                                   hold_last_sec=self.gif_hold_spin.value(), scale=self.scale_spin.value())
        return self._start_export(job, "Exporting GIF", path)

    def _save_export_settings(self, s) -> None:
        s.setValue("sampling/scale", self.scale_spin.value())
        s.setValue("sampling/gif_fps", self.gif_fps_spin.value())
        s.setValue("sampling/gif_stride", self.gif_stride_spin.value())
        s.setValue("sampling/gif_hold", self.gif_hold_spin.value())
        s.setValue("sampling/layout", self.layout_combo.currentData())

    def _restore_export_settings(self, s) -> None:
        from ..settings import get

        self.scale_spin.setValue(get(s, "sampling/scale", 4))
        self.gif_fps_spin.setValue(get(s, "sampling/gif_fps", 20))
        self.gif_stride_spin.setValue(get(s, "sampling/gif_stride", 1))
        self.gif_hold_spin.setValue(get(s, "sampling/gif_hold", 1.5))
        self.layout_combo.setCurrentIndex(max(0, self.layout_combo.findData(get(s, "sampling/layout", "grid"))))
