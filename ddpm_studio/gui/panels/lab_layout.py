"""The Lab panel's widgets: the settings column and the three mode tabs, built and wired to the
panel's methods. :class:`.lab_panel.LabPanel` adds the behaviour (a view over
:class:`ddpm_studio.lab.session.LabSession`); tests and scripts reach the widgets as the panel's
attributes (``lab.specs_edit``, ``lab.weight_slider``, ...).
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
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

from ...config import SAMPLER_INFO, SAMPLERS, SamplingConfig
from ...lab.session import DEFAULT_SPECS, WEIGHT_STEPS
from ..widgets.chain_canvas import CaptionedView
from ..widgets.lab_views import BoardView, ThreeViews
from .common import ProgressRow, add_row, float_spin, int_spin, section, settings_column


def _hint(text: str) -> QLabel:
    lab = QLabel(text)
    lab.setWordWrap(True)
    lab.setStyleSheet("color: palette(mid);")
    return lab


class LabLayout(QWidget):
    """The widgets; the subclass provides the slots they are connected to (open_model, run_compare, ...)."""

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
                                   "ddim:50, ddim:50:1, dpmpp-2m:20, dpmpp-3m:10, dpmpp-2m-sde:20, ddpm; "
                                   "unipc:5:tuned walks the timesteps the Sampling panel's Tune found for this model.")
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
        self.weight_slider.setRange(0, WEIGHT_STEPS)
        self.weight_slider.setEnabled(False)
        self.weight_slider.setToolTip("The interpolation weight, 0.00 (A) to 1.00 (B): between the strip's frames "
                                      "the frame at exactly that weight is computed (the nearest is shown until then).")
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

