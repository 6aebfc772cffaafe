"""The Training panel's settings column: the preset, and the Diffusion, Optimisation, Run and "More
settings" forms generated from the config schema (``gui.forms``), read and written as one binding.

``TrainingForms`` is a mixin of ``TrainingPanel``: it builds the column's boxes, turns the forms into
a ``RunConfig`` (``build_config``) and back (``set_config``), applies presets, keeps the forms in the
settings file by field name, and keeps the schedule plot and the state's schedule in step with the
Diffusion form. It reads the panel's ``state``, ``resume_config``, ``overrides``, ``schedule_plot``
and ``_steps_changed``.
"""

from __future__ import annotations

import dataclasses

from PySide6.QtWidgets import QComboBox, QLabel, QWidget

from ...config import PRESETS, DiffusionConfig, RunConfig, TrainConfig, default_preset, settings_of
from ..forms import SchemaForm, fields, name_items
from .common import add_row, schema_section, section

DEVICE_LABELS = {"auto": "Automatic (best available)", "cpu": "CPU", "cuda": "CUDA GPU", "mps": "Apple GPU (MPS)"}


def schedule_arrays(kind: str, T: int):
    """The schedule preview: computed with the engine's own (numpy-only) schedule code."""
    from ...engine.schedules import NoiseSchedule

    return NoiseSchedule.from_config(kind, T)


# The main forms' rows, by field name, as the panel groups them; each row (widget, label, range or
# choices, tooltip) comes from the field's knob() in config.py. Every other TrainConfig field (a new
# one too) is a row of "More settings". Fields that may be None are set from the command line or a
# config file (train.minutes), or by an imported model (diffusion.betas); train.steps shows None as
# the Steps box at its maximum ("no step limit").
DIFFUSION_FIELDS = ("schedule", "timesteps", "prediction", "loss_weighting", "min_snr_gamma")
OPTIMISATION_FIELDS = ("steps", "batch_size", "lr", "warmup_steps", "lr_cooldown", "ema_decay", "grad_clip", "seed")
RUN_FIELDS = ("device", "precision", "preview_every", "checkpoint_every")
MAIN_TRAIN_FIELDS = OPTIMISATION_FIELDS + RUN_FIELDS
ADVANCED_TRAIN_FIELDS = tuple(s.name for s in settings_of(TrainConfig)
                              if s.name not in MAIN_TRAIN_FIELDS and not s.nullable)


class TrainingForms:
    """The settings column of the Training panel (mixed into ``TrainingPanel``)."""

    def _build_preset(self) -> QWidget:
        pbox, pform = section("Preset")
        self.preset_combo = QComboBox()
        for name in PRESETS:
            self.preset_combo.addItem(name, name)
        add_row(pform, "Model", self.preset_combo, "The network's size; each preset also sets sensible training "
                                                   "values below.")
        self.preset_desc = QLabel("")
        self.preset_desc.setWordWrap(True)
        self.preset_desc.setStyleSheet("color: palette(mid);")
        pform.addRow(self.preset_desc)
        self.preset_combo.currentIndexChanged.connect(lambda _: self.apply_preset(self.preset_combo.currentData()))
        return pbox

    def _build_diffusion(self) -> QWidget:
        box, self.diffusion_form = schema_section("Diffusion", fields(DiffusionConfig, DIFFUSION_FIELDS))
        w = self.diffusion_form.widgets
        self.schedule_combo, self.timesteps_spin = w["schedule"], w["timesteps"]
        self.weighting_combo = w["loss_weighting"]
        self.diffusion_form.changed.connect(self._schedule_changed)
        return box

    def _build_optimisation(self) -> QWidget:
        box, self.optim_form = schema_section("Optimisation", fields(TrainConfig, OPTIMISATION_FIELDS))
        w = self.optim_form.widgets
        self.steps_spin, self.batch_spin, self.lr_spin, self.warmup_spin = (w["steps"], w["batch_size"], w["lr"],
                                                                            w["warmup_steps"])
        return box

    def _build_run(self) -> QWidget:
        box, self.run_form = schema_section("Run", fields(TrainConfig, RUN_FIELDS))
        w = self.run_form.widgets
        self.device_combo, self.preview_spin, self.ckpt_spin = w["device"], w["preview_every"], w["checkpoint_every"]
        name_items(self.device_combo, DEVICE_LABELS)
        self.preview_spin.setSpecialValueText("off")
        self.ckpt_spin.setSpecialValueText("by time only")
        self.images_label = QLabel("")
        self.images_label.setWordWrap(True)
        add_row(self.run_form.form, "Images", self.images_label,
                "What the Dataset tab loaded: the size and channels the network is built for.")
        return box

    def _build_more(self) -> QWidget:
        box, self.advanced = schema_section("More settings", fields(TrainConfig, ADVANCED_TRAIN_FIELDS))
        self.advanced.changed.connect(self._show_quality_plan)  # the cost of train.eval_every, before Start
        return box

    def _train_forms(self) -> tuple[SchemaForm, ...]:
        return self.optim_form, self.run_form, self.advanced

    # -- configuration ----------------------------------------------------------------------------
    def apply_preset(self, name: str) -> None:
        if name not in PRESETS:
            return
        if self.preset_combo.currentData() != name:
            self.preset_combo.setCurrentIndex(self.preset_combo.findData(name))
            return
        p = PRESETS[name]
        self._show_images_info()
        self.diffusion_form.set_values({**dataclasses.asdict(DiffusionConfig()), **p.get("diffusion", {})})
        # the preset's training values; what it leaves out keeps what is shown (previews: the default)
        self._show_train({**self._train_fields(), "preview_every": TrainConfig().preview_every, **p["train"]})
        self._shown()
        self._show_preset_tooltip(name)

    def _show_preset_tooltip(self, name: str) -> None:
        p = PRESETS[name]
        m = p["model"]
        patch = m.get("patch_size", 1)
        self.preset_combo.setToolTip(
            f"{p['description']}\nbase channels {m['base_channels']}, levels "
            f"×{', ×'.join(map(str, m['channel_mult']))}, "
            f"{m['num_res_blocks']} residual block(s) per level, attention at "
            f"{', '.join(map(str, m['attention_resolutions']))} px"
            + (f" of the feature map, on {patch} × {patch} pixel patches." if patch > 1 else ".")
        )

    def follow_image_size(self) -> None:
        """While the preset is tiny or tiny-32, it follows the Dataset tab's image size (config.default_preset:
        tiny-32 from 32 px up). The two share every training and diffusion value, so the switch changes the
        network alone and keeps whatever was typed into the forms. A run being resumed keeps its own model."""
        name = self.preset_combo.currentData()
        if self.resume_config is not None or name not in ("tiny", "tiny-32"):
            return
        images, data = self.state.images, self.state.data_config
        want = default_preset(int(images.image_size) if images is not None else int(data.image_size))
        if want != name:
            self.preset_combo.blockSignals(True)
            self.preset_combo.setCurrentIndex(self.preset_combo.findData(want))
            self.preset_combo.blockSignals(False)
            self._show_preset_tooltip(want)
            self._show_images_info()

    def _show_images_info(self) -> None:
        """The preset's description and, beside it, the image size this run really uses (the Dataset tab's)."""
        name = self.preset_combo.currentData()
        if name not in PRESETS:
            return
        p = PRESETS[name]
        images, data = self.state.images, self.state.data_config
        size = int(images.image_size) if images is not None else int(data.image_size)
        tuned = int(p.get("data", {}).get("image_size", size))
        text = p["description"]
        if tuned != size:
            text += f" This run uses {size} px, set on the Dataset tab."
        self.preset_desc.setText(text)
        if images is None:
            self.images_label.setText(f"{size} × {size} px · none loaded yet (Dataset tab)")
        else:
            ch = {1: "grayscale", 3: "RGB"}.get(int(images.channels), f"{images.channels} channels")
            self.images_label.setText(f"{size} × {size} px · {ch} · {len(images):,} images (Dataset tab)")

    def build_config(self) -> RunConfig:
        """The RunConfig the widgets describe, validated (raises ValueError naming the field)."""
        data = self.state.data_config
        if self.resume_config is not None:
            cfg = RunConfig.from_dict(self.resume_config.to_dict())
            cfg.train = dataclasses.replace(cfg.train, **self._train_fields())
        else:
            cfg = RunConfig.from_preset(self.preset_combo.currentData(), data=dataclasses.asdict(data),
                                        diffusion=self.diffusion_form.values(), train=self._train_fields())
            images = self.state.images
            if images is not None and data.channels == "auto":
                cfg.model.in_channels = int(images.channels)
        for section_name, values in self.overrides.items():
            setattr(cfg, section_name, dataclasses.replace(getattr(cfg, section_name), **values))
        cfg.sync()
        return cfg.validate()

    def _train_fields(self) -> dict:
        values = {name: v for form in self._train_forms() for name, v in form.values().items()}
        if values["steps"] >= self.steps_spin.maximum():
            values["steps"] = None  # the box at its maximum: no step limit
        return values

    def _show_train(self, values: dict) -> None:
        for form in self._train_forms():
            form.set_values(values)
        if values.get("steps", 0) is None:
            self.steps_spin.setValue(self.steps_spin.maximum())  # no step limit

    def set_config(self, cfg: RunConfig) -> None:
        """Show ``cfg`` in the widgets (used by Open Run)."""
        if cfg.model.preset in PRESETS:
            self.preset_combo.blockSignals(True)
            self.preset_combo.setCurrentIndex(self.preset_combo.findData(cfg.model.preset))
            self.preset_combo.blockSignals(False)
            self._show_images_info()
        self.diffusion_form.set_values(cfg.diffusion)
        self._show_train(dataclasses.asdict(cfg.train))
        self._shown()
        self._show_quality_plan()

    def _show_quality_plan(self) -> None:
        self.quality_plot.show_plan(self.build_config)

    def _shown(self) -> None:
        """After the forms were filled (which emits no change signals): the plot and the bar follow them."""
        self._schedule_changed()
        self._steps_changed(self.steps_spin.value())

    def _schedule_changed(self, *_) -> None:
        self.diffusion_form.widgets["min_snr_gamma"].setEnabled(self.weighting_combo.currentData() != "none")
        kind, T = self.schedule_combo.currentData(), int(self.timesteps_spin.value())
        try:
            s = schedule_arrays(kind, T)
        except ValueError as e:
            self.schedule_plot.readout.setText(str(e))
            return
        self.schedule_plot.set_schedule(s.betas, s.alphas_cumprod, s.snr, label=kind)
        self.state.set_schedule(kind, T)

    def set_available_devices(self, available: list[str]) -> None:
        model = self.device_combo.model()
        for i in range(self.device_combo.count()):
            d = self.device_combo.itemData(i)
            item = model.item(i)
            ok = d in available
            item.setEnabled(ok)
            item.setToolTip("" if ok else f"{DEVICE_LABELS[d]} is not available on this computer.")

    # -- settings ---------------------------------------------------------------------------------
    # Saved by field name (diffusion under training/diffusion/, train under training/fields/); the keys
    # of older versions are ignored (the preset's values show) and removed at the next save.
    _OLD_KEYS = ("training/schedule", "training/timesteps", "training/prediction", "training/weighting",
                 "training/train")

    def save_settings(self, s) -> None:
        for key in self._OLD_KEYS:
            s.remove(key)
        s.setValue("training/preset", self.preset_combo.currentData())
        self.diffusion_form.save(s, "training/diffusion")
        for form in self._train_forms():
            form.save(s, "training/fields")
        s.setValue("training/log_scale", self.loss_plot.log_scale)

    def restore_settings(self, s) -> None:
        from ..settings import get

        self.apply_preset(get(s, "training/preset", "tiny"))  # what was never saved keeps the preset's value
        self.diffusion_form.restore(s, "training/diffusion")
        for form in self._train_forms():
            form.restore(s, "training/fields")
        self._shown()
        self.loss_plot.set_log_scale(get(s, "training/log_scale", False))
