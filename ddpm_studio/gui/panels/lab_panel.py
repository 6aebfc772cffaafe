"""The Lab: see how a sample is made (issue 16). Three modes, each running on worker threads
(:mod:`..lab_jobs`), each exportable:

- **Compare**: the same x_T through several samplers / step counts / η, one row each, labelled
  with its settings and seconds per image, filling in live;
- **Chain & Branch**: one chain as x_t, x̂0 and ε̂ (v̂) side by side under one scrubber; a contact
  sheet, GIF or APNG of it; from the step on screen, branch: rerun the rest with new noise, or
  re-noise x̂0 to a chosen t with q(x_t | x_0) and denoise again (one strip per branch point);
- **Interpolate**: slerp between two seeds' x_T (deterministic sampler: the ends are the seeds' own
  samples), or two images noised to t and mixed (Ho et al. 2020, §4.4); the weight on a slider.

Length (over 500 lines, on purpose): one module per panel (STYLE.md), and this panel is three modes'
widgets, wiring and exports; the work itself is Qt-free in ``ddpm_studio/lab/`` and runs through
``gui/lab_jobs.py``, so what is left here is only the view.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ...config import SAMPLER_INFO, SAMPLERS, SamplingConfig, sampler_default_steps
from .. import lab_jobs
from ..state import StudioState
from ..widgets.chain_canvas import CaptionedView
from ..widgets.lab_views import BoardView, ThreeViews
from ..workers import Task
from .common import ProgressRow, add_row, float_spin, int_spin, section, settings_column

DEFAULT_SPECS = "ddim:50,dpmpp-2m:20,ddpm"


def _hint(text: str) -> QLabel:
    lab = QLabel(text)
    lab.setWordWrap(True)
    lab.setStyleSheet("color: palette(mid);")
    return lab


class LabPanel(QWidget):
    compare_finished = Signal(object)  # lab_jobs.BoardUpdate | None
    chain_finished = Signal(object)  # lab_jobs.LabChain | None
    branch_finished = Signal(object)  # lab_jobs.BranchRow | None
    interpolate_finished = Signal(object)  # lab_jobs.InterpResult | None
    export_finished = Signal(list)  # paths written

    def __init__(self, state: StudioState, parent=None):
        super().__init__(parent)
        self.state = state
        self.task: Task | None = None
        self.export_task: Task | None = None
        self.model_path: str | None = None
        self._loaded = None
        self.board: np.ndarray | None = None  # the compare board on screen
        self.board_updates = 0
        self.frames: list[lab_jobs.LabFrame] = []
        self.chain: lab_jobs.LabChain | None = None
        self.branch_rows: list[lab_jobs.BranchRow] = []
        self.branch_board: np.ndarray | None = None
        self.interp: lab_jobs.InterpResult = lab_jobs.InterpResult()
        self.image_files: list = [None, None]  # per image: a file path, a generated uint8 image, or None (dataset)
        self.ask_save_path = self._ask_save_path  # replaceable in tests: (title, filter, default) -> path
        self.ask_open_path = self._ask_open_path
        self._build()
        self._sampler_changed()
        self._update_buttons()

    # -- layout -------------------------------------------------------------------------------
    def _build(self) -> None:
        sd = SamplingConfig()
        mbox, mform = section("Model")
        self.open_button = QPushButton("Open Run or Checkpoint…")
        self.open_button.setToolTip("Pick a run folder, a .safetensors checkpoint or a diffusers model folder.")
        self.open_button.clicked.connect(lambda: self.open_model())
        self.model_label = _hint("No model yet: open a run folder or a checkpoint.")
        mform.addRow(self.open_button)
        mform.addRow(self.model_label)

        sbox, sform = section("Sampler (chain, branch, interpolation)")
        self.sampler_combo = QComboBox()
        for name in SAMPLERS:
            self.sampler_combo.addItem(SAMPLER_INFO[name]["label"], name)
        self.sampler_combo.setCurrentIndex(self.sampler_combo.findData("ddim"))
        add_row(sform, "Sampler", self.sampler_combo, "The sampler of the chain, its branches and the interpolation.")
        self.steps_spin = int_spin(1, 4000, 50, 5)
        add_row(sform, "Steps", self.steps_spin, "Network calls from x_T to x_0 (DDPM always takes all T).")
        self.eta_spin = float_spin(0.0, 1.0, 0.0, 2, 0.1)
        add_row(sform, "η (eta)", self.eta_spin, "DDIM only: 0 = deterministic, 1 = as much noise as DDPM.")
        self.num_spin = int_spin(1, 64, 4)
        add_row(sform, "Images", self.num_spin, "Images per chain and per compare row.")
        self.seed_spin = int_spin(0, 2**31 - 1, sd.seed)
        add_row(sform, "Seed", self.seed_spin, "The seed of x_T: same seed, same starting noise in every mode.")
        self.sampler_combo.currentIndexChanged.connect(self._sampler_changed)

        self.progress_row = ProgressRow()
        self.progress_row.cancel_clicked.connect(self.cancel)

        self.modes = QTabWidget()
        self.modes.addTab(self._build_compare(), "Compare")
        self.modes.addTab(self._build_chain(), "Chain && Branch")
        self.modes.addTab(self._build_interpolate(), "Interpolate")
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.modes, 1)
        rl.addWidget(self.progress_row)
        split = QSplitter()
        split.addWidget(settings_column([mbox, sbox]))
        split.addWidget(right)
        split.setStretchFactor(1, 1)
        split.setSizes([300, 1000])
        lay = QHBoxLayout(self)
        lay.addWidget(split)

    def _build_compare(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        row = QHBoxLayout()
        self.specs_edit = QLineEdit(DEFAULT_SPECS)
        self.specs_edit.setToolTip("Comma-separated sampler[:steps[:eta]], one row each: "
                                   "ddim:50, ddim:50:1, dpmpp-2m:20, dpmpp-3m:10, dpmpp-2m-sde:20, ddpm.")
        self.compare_button = QPushButton("Run Compare")
        self.compare_button.setToolTip("Run the same x_T through every sampler of the list, one row each.")
        self.compare_button.clicked.connect(self.run_compare)
        self.export_board_button = QPushButton("Export Board…")
        self.export_board_button.clicked.connect(lambda: self.export_board())
        row.addWidget(QLabel("Rows"))
        row.addWidget(self.specs_edit, 1)
        row.addWidget(self.compare_button)
        row.addWidget(self.export_board_button)
        lay.addLayout(row)
        lay.addWidget(_hint("Every row starts from the same noise x_T (the seed); each shows what that sampler makes "
                            "of it and how long it took per image."))
        self.board_view = BoardView("Press Run Compare")
        lay.addWidget(self.board_view, 1)
        return w

    def _build_chain(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        top = QHBoxLayout()
        self.chain_button = QPushButton("Run Chain")
        self.chain_button.setToolTip("Run one chain from the seed's x_T and record x_t, x̂0 and ε̂ at every step.")
        self.chain_button.clicked.connect(self.run_chain)
        top.addWidget(self.chain_button)
        self.every_spin = int_spin(1, 1000, 5)
        self.every_spin.setPrefix("every ")
        self.every_spin.setToolTip("The contact sheet and the animations use every k-th recorded step (and the last).")
        self.overlay_check = QCheckBox("t on frames")
        self.overlay_check.setChecked(True)
        self.overlay_check.setToolTip("Write t on every frame of the GIF / APNG.")
        self.sheet_button = QPushButton("Contact Sheet…")
        self.sheet_button.clicked.connect(lambda: self.export_sheet())
        self.gif_button = QPushButton("GIF / APNG…")
        self.gif_button.setToolTip("The three views as an animation: .gif, or .png for a lossless APNG.")
        self.gif_button.clicked.connect(lambda: self.export_chain_animation())
        for x in (self.every_spin, self.overlay_check, self.sheet_button, self.gif_button):
            top.addWidget(x)
        top.addStretch(1)
        lay.addLayout(top)
        self.three = ThreeViews()
        lay.addWidget(self.three, 3)
        srow = QHBoxLayout()
        self.chain_slider = QSlider(Qt.Orientation.Horizontal)
        self.chain_slider.setRange(0, 0)
        self.chain_slider.setEnabled(False)
        self.chain_slider.setToolTip("Scrub the chain: all three views follow.")
        self.chain_slider.valueChanged.connect(self._show_chain_frame)
        self.chain_label = QLabel("no chain yet")
        self.chain_label.setMinimumWidth(160)
        srow.addWidget(self.chain_slider, 1)
        srow.addWidget(self.chain_label)
        lay.addLayout(srow)
        lay.addLayout(self._build_branch_row())
        self.branch_view = BoardView("Scrub to a step and press Branch Here: which features are already decided?")
        lay.addWidget(self.branch_view, 2)
        return w

    def _build_branch_row(self) -> QHBoxLayout:
        """How to branch the chain at the step on screen, and the strips' export."""
        brow = QHBoxLayout()
        self.branch_mode = QComboBox()
        self.branch_mode.addItem("Rerun the rest with new noise", "rest")
        self.branch_mode.addItem("Re-noise x̂0 to t and denoise", "renoise")
        self.branch_mode.currentIndexChanged.connect(lambda _: self._update_buttons())
        self.branch_mode.setToolTip("New noise: needs a stochastic sampler (DDPM, DDIM with η > 0, "
                                    "DPM-Solver++ 2M SDE). Re-noise: x_t ~ q(x_t | x̂0) at the chosen t, then the "
                                    "sampler's remaining steps.")
        self.branch_count = int_spin(1, 16, 6)
        self.branch_count.setPrefix("× ")
        self.branch_t = int_spin(0, 4000, 500)
        self.branch_t.setPrefix("t = ")
        self.branch_t.setToolTip("Re-noise to this t (moved to the nearest timestep the sampler visits).")
        self.branch_button = QPushButton("Branch Here")
        self.branch_button.setToolTip("Branch the chain at the step on screen; each branch point adds a strip.")
        self.branch_button.clicked.connect(self.branch_here)
        self.export_strips_button = QPushButton("Export Strips…")
        self.export_strips_button.clicked.connect(lambda: self.export_strips())
        for x in (self.branch_mode, self.branch_count, self.branch_t, self.branch_button, self.export_strips_button):
            brow.addWidget(x)
        brow.addStretch(1)
        return brow

    def _build_interpolate(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        row = QHBoxLayout()
        self.interp_mode = QComboBox()
        self.interp_mode.addItem("Two seeds (slerp of x_T)", "seeds")
        self.interp_mode.addItem("Two images noised to t (§4.4)", "images")
        self.interp_mode.currentIndexChanged.connect(lambda _: self._update_buttons())
        self.seed_a = int_spin(0, 2**31 - 1, 0)
        self.seed_a.setPrefix("A: ")
        self.seed_b = int_spin(0, 2**31 - 1, 1)
        self.seed_b.setPrefix("B: ")
        self.frames_spin = int_spin(2, 64, 8)
        self.frames_spin.setSuffix(" frames")
        self.interp_t = int_spin(0, 4000, 500)
        self.interp_t.setPrefix("t = ")
        self.interp_button = QPushButton("Interpolate")
        self.interp_button.clicked.connect(self.run_interpolate)
        for x in (self.interp_mode, self.seed_a, self.seed_b, self.frames_spin, self.interp_t, self.interp_button):
            row.addWidget(x)
        row.addStretch(1)
        lay.addLayout(row)
        lay.addLayout(self._build_interp_images())
        self.interp_view = CaptionedView("weight 0.00", "Press Interpolate")
        lay.addWidget(self.interp_view, 3)
        wrow = QHBoxLayout()
        self.weight_slider = QSlider(Qt.Orientation.Horizontal)
        self.weight_slider.setRange(0, 0)
        self.weight_slider.setEnabled(False)
        self.weight_slider.setToolTip("The interpolation weight: 0 is A, 1 is B.")
        self.weight_slider.valueChanged.connect(self._show_interp_frame)
        self.export_strip_button = QPushButton("Strip PNG…")
        self.export_strip_button.clicked.connect(lambda: self.export_interp_strip())
        self.export_walk_button = QPushButton("GIF…")
        self.export_walk_button.clicked.connect(lambda: self.export_interp_gif())
        wrow.addWidget(QLabel("weight"))
        wrow.addWidget(self.weight_slider, 1)
        wrow.addWidget(self.export_strip_button)
        wrow.addWidget(self.export_walk_button)
        lay.addLayout(wrow)
        self.strip_view = BoardView("")
        self.strip_view.setMinimumHeight(90)
        lay.addWidget(self.strip_view, 1)
        return w

    def _build_interp_images(self) -> QHBoxLayout:
        """The row choosing image interpolation's two ends: files, dataset numbers or the chain's result."""
        irow = QHBoxLayout()
        self.image_a_button = QPushButton("Image A…")
        self.image_b_button = QPushButton("Image B…")
        self.image_a_button.clicked.connect(lambda: self.choose_image(0))
        self.image_b_button.clicked.connect(lambda: self.choose_image(1))
        self.generated_button = QPushButton("A, B ← Chain Result")
        self.generated_button.setToolTip("Use the first two images the Chain & Branch mode generated (run a chain "
                                         "with 2 or more images first).")
        self.generated_button.clicked.connect(self.use_generated)
        self.data_a = int_spin(0, 10**7, 0)
        self.data_a.setPrefix("dataset #")
        self.data_b = int_spin(0, 10**7, 1)
        self.data_b.setPrefix("dataset #")
        self.images_label = _hint("Images: dataset pictures by number, or files chosen with Image A… / B….")
        for x in (self.image_a_button, self.data_a, self.image_b_button, self.data_b, self.generated_button):
            irow.addWidget(x)
        irow.addWidget(self.images_label, 1)
        return irow

    # -- settings -------------------------------------------------------------------------------
    def _sampler_changed(self) -> None:
        name = self.sampler_combo.currentData()
        self.steps_spin.setEnabled(name != "ddpm")
        self.eta_spin.setEnabled(name == "ddim")
        T = self._loaded.diffusion.T if self._loaded is not None else 1000
        self.steps_spin.setValue(min(sampler_default_steps(name, T), T))  # the job lowers it to a new model's T
        self.sampler_combo.setToolTip(SAMPLER_INFO[name]["hint"])

    def sampling(self) -> SamplingConfig:
        name = self.sampler_combo.currentData()
        T = self._loaded.diffusion.T if self._loaded is not None else 1000
        return SamplingConfig(sampler=name, steps=T if name == "ddpm" else self.steps_spin.value(),
                              eta=self.eta_spin.value() if name == "ddim" else 0.0, seed=self.seed_spin.value(),
                              num_images=self.num_spin.value())

    # -- model ----------------------------------------------------------------------------------
    def open_model(self, path: str | None = None) -> bool:
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Open a run folder or a model folder")
        if not path:
            return False
        if not os.path.exists(path):
            self.state.report_error(f"{path} does not exist.")
            return False
        self.model_path = str(path)
        self._loaded = None
        self.model_label.setText(f"{Path(path).name} (opened when a mode first runs)")
        self._update_buttons()
        return True

    def _get_model(self):
        cached, path = self._loaded, self.model_path

        def get():
            if cached is not None:
                return cached
            from ...artifacts.loading import load_model

            return load_model(path)

        return get

    def _on_model(self, loaded) -> None:
        first = self._loaded is None
        self._loaded = loaded
        T = loaded.diffusion.T
        _, h, w = loaded.image_shape
        self.model_label.setText(f"{Path(loaded.source).name}: step {loaded.step:,}, {w}×{h} px, T = {T}, "
                                 f"predicts {loaded.diffusion.prediction}")
        if self.steps_spin.value() > T:
            self.steps_spin.setValue(min(T, sampler_default_steps(self.sampler_combo.currentData(), T)))
        self.steps_spin.setMaximum(T)
        self.branch_t.setMaximum(T - 1)
        self.interp_t.setMaximum(T - 1)
        if first:
            self.branch_t.setValue(min(self.branch_t.value(), T // 2))
            self.interp_t.setValue(min(self.interp_t.value(), T // 2))

    # -- running --------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.task is not None and self.task.is_running()

    def _start(self, fn, name: str, message: str, on_item, on_done, finished_signal) -> bool:
        if self.is_running():
            return False
        if self.model_path is None and self._loaded is None:
            self.state.report_error("Open a run or a checkpoint first (Open Run or Checkpoint…).")
            return False
        task = Task(fn, name=name)
        outcome: dict = {"result": None}  # what the finished signal carries, once the thread has ended
        task.items.connect(lambda items: self._on_items(items, on_item))
        task.progress.connect(self.progress_row.report)
        task.succeeded.connect(on_done)
        task.succeeded.connect(lambda r: outcome.update(result=r))
        task.failed.connect(lambda m, d: self.state.report_error(m, d))
        task.cancelled.connect(lambda: self.progress_row.finish("Cancelled."))
        task.finished.connect(lambda: (self._task_done(), finished_signal.emit(outcome["result"])))
        self.task = task
        self.progress_row.start(message)
        self.state.begin("lab", message)
        task.start()
        self._update_buttons()
        return True

    def _on_items(self, items, on_item) -> None:
        for it in items:
            if isinstance(it, lab_jobs.LabModelReady):
                self._on_model(it.loaded)
            else:
                on_item(it)

    def _task_done(self) -> None:
        self.state.end("lab")
        if self.progress_row.bar.isVisible():
            self.progress_row.finish("")
        self._update_buttons()

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def shutdown(self) -> None:
        for t in (self.task, self.export_task):
            if t is not None:
                t.cancel()

    def _update_buttons(self) -> None:
        busy = self.is_running()
        for b in (self.compare_button, self.chain_button, self.interp_button):
            b.setEnabled(not busy)
        self.branch_button.setEnabled(not busy and self.chain is not None)
        self.branch_t.setEnabled(self.branch_mode.currentData() == "renoise")
        self.export_board_button.setEnabled(self.board is not None)
        for b in (self.sheet_button, self.gif_button):
            b.setEnabled(self.chain is not None and not busy)
        self.export_strips_button.setEnabled(bool(self.branch_rows))
        done = self.interp.strip is not None
        self.export_strip_button.setEnabled(done)
        self.export_walk_button.setEnabled(done)
        images = self.interp_mode.currentData() == "images"
        for x in (self.interp_t, self.image_a_button, self.image_b_button, self.data_a, self.data_b, self.images_label,
                  self.generated_button):
            x.setVisible(images)
        self.generated_button.setEnabled(self.chain is not None and self.chain.images is not None
                                         and len(self.chain.images) >= 2)
        self.seed_a.setVisible(not images)
        self.seed_b.setVisible(not images)

    # -- compare ----------------------------------------------------------------------------------
    def run_compare(self) -> bool:
        specs = self.specs_edit.text().strip()
        if not specs:
            self.state.report_error("List at least one sampler, e.g. ddim:50,dpmpp-2m:20,ddpm.")
            return False
        self.board_updates = 0
        fn = lab_jobs.make_compare(self._get_model(), specs, self.sampling(), self.num_spin.value(),
                                   self.seed_spin.value())
        return self._start(fn, "lab-compare", "Comparing samplers…", self._on_board, self._on_board,
                           self.compare_finished)

    def _on_board(self, update: lab_jobs.BoardUpdate) -> None:
        self.board = update.board
        self.board_updates += 1
        self.board_view.set_image(update.board)
        self._update_buttons()

    # -- chain and branch ---------------------------------------------------------------------------
    def run_chain(self) -> bool:
        self.frames = []
        self.chain = None
        self.three.show_views(None)
        self.chain_slider.setRange(0, 0)
        fn = lab_jobs.make_chain(self._get_model(), self.sampling(), self.num_spin.value(), self.seed_spin.value())
        return self._start(fn, "lab-chain", "Running the chain…", self._on_lab_frame, self._on_chain,
                           self.chain_finished)

    def _on_lab_frame(self, frame: lab_jobs.LabFrame) -> None:
        follow = self.chain_slider.value() == self.chain_slider.maximum()
        self.frames.append(frame)
        self.chain_slider.setEnabled(True)
        self.chain_slider.setRange(0, len(self.frames) - 1)
        if follow:
            self.chain_slider.setValue(len(self.frames) - 1)
            self._show_chain_frame(len(self.frames) - 1)

    def _on_chain(self, result: lab_jobs.LabChain) -> None:
        self.chain = result
        self.three.set_noise_label(result.noise_label)
        self.progress_row.finish(f"Chain done: {len(self.frames)} steps recorded (every {result.stride}).")
        self._update_buttons()

    def _show_chain_frame(self, i: int) -> None:
        if not 0 <= i < len(self.frames):
            return
        f = self.frames[i]
        self.three.show_views(f.views)
        self.chain_label.setText(f"step {f.index + 1} / {f.total} · t = {f.t}")

    def current_step(self) -> lab_jobs.LabFrame | None:
        i = self.chain_slider.value()
        return self.frames[i] if 0 <= i < len(self.frames) else None

    def branch_here(self) -> bool:
        frame = self.current_step()
        if self.chain is None or frame is None:
            self.state.report_error("Run a chain first, then scrub to the step to branch from.")
            return False
        mode = self.branch_mode.currentData()
        from ...lab.chain import is_stochastic

        if mode == "rest" and not is_stochastic(self.chain.sampling):
            self.state.report_error(f"{self.chain.sampling.sampler} adds no noise after x_T, so every rerun "
                                    "would be the same image: run the chain with DDPM, DDIM with η > 0 or "
                                    "DPM-Solver++ 2M SDE, or choose \u201cRe-noise x̂0 to t\u201d.")
            return False
        seed = self.seed_spin.value() + 1 + len(self.branch_rows)
        fn = lab_jobs.make_branch(self._get_model(), self.chain, frame.index, mode=mode,
                                  count=self.branch_count.value(), t=self.branch_t.value(), seed=seed,
                                  previous=list(self.branch_rows))
        return self._start(fn, "lab-branch", f"Branching at t = {frame.t}…", lambda _: None, self._on_branch,
                           self.branch_finished)

    def _on_branch(self, row: lab_jobs.BranchRow) -> None:
        self.branch_rows.append(row)
        self.branch_board = row.board  # this strip under the earlier ones, composed by the job
        self.branch_view.set_image(self.branch_board)
        self._update_buttons()

    # -- interpolation ------------------------------------------------------------------------------
    def choose_image(self, which: int) -> None:
        path = self.ask_open_path("Choose an image", "Images (*.png *.jpg *.jpeg *.bmp *.webp *.tif *.tiff)")
        if path:
            self.image_files[which] = path
            self._images_label()

    def use_generated(self) -> bool:
        """Images A and B are the first two x_0 of the last chain (generated images, §4.4)."""
        if self.chain is None or self.chain.images is None or len(self.chain.images) < 2:
            self.state.report_error("Run a chain of 2 or more images first (Chain & Branch).")
            return False
        self.image_files = [self.chain.images[0], self.chain.images[1]]
        self._images_label()
        return True

    def _images_label(self) -> None:
        def name(i, p):
            if isinstance(p, np.ndarray):
                return f"generated #{i + 1}"
            return Path(p).name if p else "dataset #" + str((self.data_a, self.data_b)[i].value())

        names = [name(i, p) for i, p in enumerate(self.image_files)]
        self.images_label.setText(f"A: {names[0]} · B: {names[1]}")

    def _interp_images(self):
        out = []
        for i, p in enumerate(self.image_files):
            if p is not None and (isinstance(p, np.ndarray) or p):
                out.append(p)  # a file (decoded in the worker) or a generated image
                continue
            imgs = self.state.images
            if imgs is None or len(imgs) == 0:
                raise ValueError("Load a dataset (Dataset tab) or choose the images with Image A… / Image B….")
            k = (self.data_a, self.data_b)[i].value()
            if k >= len(imgs):
                raise ValueError(f"The dataset has {len(imgs)} images (numbers 0 to {len(imgs) - 1}); got {k}.")
            out.append(imgs.images[k])
        return tuple(out)

    def run_interpolate(self) -> bool:
        mode = self.interp_mode.currentData()
        images = None
        if mode == "images":
            try:
                images = self._interp_images()
            except ValueError as e:
                self.state.report_error(str(e))
                return False
        elif self.seed_a.value() == self.seed_b.value():
            self.state.report_error("Choose two different seeds to interpolate between.")
            return False
        self.interp = lab_jobs.InterpResult()
        self.weight_slider.setRange(0, 0)
        fn = lab_jobs.make_interpolate(self._get_model(), self.sampling(), mode=mode,
                                       seeds=(self.seed_a.value(), self.seed_b.value()), images=images,
                                       t=self.interp_t.value(), frames=self.frames_spin.value(),
                                       seed=self.seed_spin.value())
        return self._start(fn, "lab-interpolate", "Interpolating…", self._on_interp_frame, self._on_interp,
                           self.interpolate_finished)

    def _on_interp_frame(self, frame: lab_jobs.InterpFrame) -> None:
        follow = self.weight_slider.value() == self.weight_slider.maximum()
        self.interp.frames.append(frame)
        self.weight_slider.setEnabled(True)
        self.weight_slider.setRange(0, len(self.interp.frames) - 1)
        if follow:
            self.weight_slider.setValue(len(self.interp.frames) - 1)
            self._show_interp_frame(len(self.interp.frames) - 1)

    def _on_interp(self, result: lab_jobs.InterpResult) -> None:
        self.interp = result
        self.strip_view.set_image(result.strip)
        self._update_buttons()

    def _show_interp_frame(self, i: int) -> None:
        if 0 <= i < len(self.interp.frames):
            f = self.interp.frames[i]
            self.interp_view.set_image(f.image)
            self.interp_view.caption.setText(f"weight {f.weight:.2f}")

    # -- exports ----------------------------------------------------------------------------------
    def _ask_save_path(self, title: str, filt: str, default: str) -> str:
        path, _ = QFileDialog.getSaveFileName(self, title, default, filt)
        return path

    def _ask_open_path(self, title: str, filt: str) -> str:
        path, _ = QFileDialog.getOpenFileName(self, title, "", filt)
        return path

    def _export(self, fn, what: str) -> bool:
        if self.export_task is not None and self.export_task.is_running():
            return False
        task = Task(fn, name="lab-export")
        written: list = []  # export_finished carries it once the thread has ended (the next export may start)
        task.succeeded.connect(lambda paths: (self.state.message.emit(f"Saved {what}: {paths[0]}"),
                                              written.extend(paths)))
        task.failed.connect(lambda m, d: self.state.report_error(m, d))
        task.finished.connect(lambda: self.export_finished.emit(list(written)))
        self.export_task = task
        task.start()
        return True

    def _path(self, title: str, filt: str, name: str, exts: tuple[str, ...]) -> str | None:
        path = self.ask_save_path(title, filt, name)
        if not path:
            return None
        if Path(path).suffix.lower() not in exts:
            path += exts[0]
        return path

    def export_board(self, path: str | None = None) -> bool:
        if self.board is None:
            return False
        path = path or self._path("Export the compare board", "PNG (*.png)", "compare.png", (".png",))
        return bool(path) and self._export(lab_jobs.make_save_png(self.board, path), "the compare board")

    def _chain_frames(self):
        """(t, views) of every recorded step, then the result x_0 (ε̂ mid-grey: no noise is left)."""
        frames = [(f.t, f.views) for f in self.frames]
        if self.chain is not None:
            x0 = self.chain.final
            frames.append(("result", (x0, x0, np.full_like(x0, 128))))
        return frames

    def _names(self) -> list[str]:
        return ["x_t", "x̂0", self.chain.noise_label.replace("predicted ", "") if self.chain else "ε̂"]

    def export_sheet(self, path: str | None = None) -> bool:
        if self.chain is None:
            return False
        path = path or self._path("Export a contact sheet", "PNG (*.png)", "chain_sheet.png", (".png",))
        if not path:
            return False
        s = self.chain.sampling
        fn = lab_jobs.make_contact_sheet(self._chain_frames(), self.every_spin.value(), self._names(), path,
                                         f"{s.sampler} · seed {self.seed_spin.value()}")
        return self._export(fn, "the contact sheet")

    def export_chain_animation(self, path: str | None = None) -> bool:
        if self.chain is None:
            return False
        path = path or self._path("Export the chain as an animation", "GIF (*.gif);;Animated PNG (*.png)",
                                  "chain.gif", (".gif", ".png", ".apng"))
        if not path:
            return False
        fn = lab_jobs.make_save_animation(self._chain_frames(), path, overlay_t=self.overlay_check.isChecked(),
                                          every=self.every_spin.value())
        return self._export(fn, "the chain animation")

    def export_strips(self, path: str | None = None) -> bool:
        if self.branch_board is None:
            return False
        path = path or self._path("Export the branch strips", "PNG (*.png)", "branches.png", (".png",))
        return bool(path) and self._export(lab_jobs.make_save_png(self.branch_board, path), "the branch strips")

    def export_interp_strip(self, path: str | None = None) -> bool:
        if self.interp.strip is None:
            return False
        path = path or self._path("Export the interpolation strip", "PNG (*.png)", "interpolation.png", (".png",))
        return bool(path) and self._export(lab_jobs.make_save_png(self.interp.strip, path), "the interpolation strip")

    def export_interp_gif(self, path: str | None = None) -> bool:
        if self.interp.strip is None:
            return False
        path = path or self._path("Export the walk as an animation", "GIF (*.gif);;Animated PNG (*.png)",
                                  "walk.gif", (".gif", ".png", ".apng"))
        if not path:
            return False
        frames = [(None, f.image) for f in self.interp.frames]
        return self._export(lab_jobs.make_save_animation(frames, path, overlay_t=False, fps=8, bounce=True), "the walk")
