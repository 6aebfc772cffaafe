"""The Sampling panel's Tune: fit a few-step chain's timesteps to the model on a worker thread
(``jobs.make_tune`` over ``sampling.tuning.tune_timesteps``) and put them in the "Tuned timesteps" field.

``TuningActions`` is a mixin of ``SamplingPanel``: it reads the panel's ``sampler_form``, ``steps_spin``,
``progress``, ``state``, ``sampling_config()``, ``_model_getter()`` and ``is_running()``, and owns ``tune_task``.
Tuned timesteps belong to one model and one sampler: opening another model, choosing another sampler or
another step count clears them (with a note saying so), and they are not kept in the settings file. A Tune of a
model from disk is remembered for its weights (``sampling.tuning_store``, written on the worker thread); when
that model, sampler and step count come back, the remembered list is put back in the field (``restore_tuned``),
from what the model-reading worker read (``RememberedTunings``), without touching the disk on the UI thread.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from PySide6.QtWidgets import QPushButton

from ...config import TUNABLE_SAMPLERS
from .. import jobs
from ..workers import Task
from .common import note

TUNE_TIP = ("Find the timesteps at which this sampler, at this step count, best reproduces a 50-step chain on "
            "this model (at 5 steps for the tiny preset on two CPU cores: 1 to 1.5 minutes with AVX-512, 3 to 4 with "
            "AVX2 only; done once, it is remembered for this model). With the run's training "
            "images at hand (or, for a model without a run, the images open in the Dataset panel), the last step "
            "then goes to 0 if that brings the images closer to them (it sharpens text and fine grain). Worth it "
            "at 5 steps.")


FEW_STEPS = 10  # the hint's limit: Tune's gains were measured at 5 steps (BENCHMARKS.md)
UNTUNED_HINT = "Not tuned for this model yet: Tune fits these steps to it (minutes, once; it is remembered)."


@dataclass
class RememberedTunings:
    """What ``sampling.tuning_store`` holds for the model opened from ``path``."""

    path: str
    entries: list = field(default_factory=list)


class TuningActions:
    """The Tune button, its note and its job (mixed into the Sampling panel)."""

    tune_task: Task | None = None
    tune_images: int | None = None  # chains the error is measured on (None: the tuning's own; tests use fewer)
    remembered: RememberedTunings | None = None  # for the model from disk, once its worker has read it

    def _make_tune_button(self) -> QPushButton:
        self.tune_button = QPushButton("Tune")
        self.tune_button.setToolTip(TUNE_TIP)
        self.tune_button.clicked.connect(lambda: self.tune_steps())
        return self.tune_button

    def _build_tuning(self) -> None:
        """After the Sampler form exists: the note under the field, and clearing on a new step count."""
        self.timesteps_edit = self.sampler_form.widgets["timesteps"]
        self.timesteps_edit.setPlaceholderText("the spacing's own")
        self.tune_note = note()
        self.sampler_form.form.addRow(self.tune_note)
        self.steps_spin.valueChanged.connect(self._steps_changed)

    def tune_running(self) -> bool:
        return self.tune_task is not None and self.tune_task.is_running()

    def _show_tuning(self, sampler: str) -> None:
        """Tuning is offered for deterministic samplers only."""
        ok = sampler in TUNABLE_SAMPLERS
        self.timesteps_edit.setEnabled(ok)
        self.tune_button.setEnabled(ok and not self.tune_running() and not self.is_running()
                                    and self.source_ready())

    def clear_tuned(self, why: str = "") -> None:
        if self.timesteps_edit.text().strip():
            self.timesteps_edit.clear()
            self.tune_note.setText(f"Tuned timesteps cleared: {why}." if why else "")
            self.tune_note.setToolTip("")

    def _steps_changed(self, steps: int) -> None:
        text = self.timesteps_edit.text().replace(",", " ").split()
        if text and len(text) != steps:
            self.clear_tuned(f"they were tuned for {len(text)} steps")
        self.restore_tuned()

    def _remembered_here(self) -> RememberedTunings | None:
        """The remembered tunings of the model that the next Generate uses (None: the model being trained)."""
        r = self.remembered
        return r if r is not None and self.src_disk.isChecked() and r.path == self.model_path else None

    def _matching_config(self):
        from ..jobs import model_sampling

        cfg = self.sampling_config()
        model = getattr(self, "_model_config", None)
        return model_sampling(cfg, model.sampling) if model is not None else cfg

    def restore_tuned(self) -> bool:
        """Fill an empty "Tuned timesteps" field with the list remembered for this model, sampler, step count
        and clipping; True if it did."""
        from ...sampling.tuning_store import find

        r = self._remembered_here()
        if r is None or self.timesteps_edit.text().strip() or not self.timesteps_edit.isEnabled():
            return False
        try:
            found = find(r.entries, self._matching_config())
        except ValueError:
            return False
        if found is None:
            self._hint_untuned()
            return False
        self.set_sampling_config(dataclasses.replace(self.sampling_config(), timesteps=tuple(found["timesteps"])))
        self.tune_note.setText(f"Restored from this model's Tune of {found['tuned_at']}.")
        self.tune_note.setToolTip(str(found.get("note", "")))
        return True

    def _hint_untuned(self) -> None:
        """Where Tune pays most (a few steps) and this model has none for them, say so under the field; the note
        is left alone when it says something else (e.g. why tuned timesteps were cleared)."""
        if self.tune_note.text() not in ("", UNTUNED_HINT):
            return
        few = self.steps_spin.value() <= FEW_STEPS
        self.tune_note.setText(UNTUNED_HINT if few else "")

    def tune_steps(self) -> bool:
        """Start tuning; False, with a message and no thread, if the settings cannot be tuned."""
        if self.is_running() or self.tune_running():
            return False
        from ...sampling.tuning import check_tunable

        try:
            self.timesteps_edit.clear()  # tune from the spacing's own steps
            cfg = self.sampling_config()
            check_tunable(cfg)
            get_model = self._model_getter()
        except ValueError as e:
            self.state.report_error(f"Cannot tune: {e}", "")
            return False
        source = self._tuned_source()
        task = Task(jobs.make_tune(get_model, cfg, self.tune_images, self.state.images, remember=source[0]),
                    name="tuning")
        task.progress.connect(lambda done, total, msg: self.progress.report(done, total, msg))
        task.succeeded.connect(lambda result, c=cfg, m=source: self._on_tuned(c, result, m))
        task.failed.connect(self._on_tune_failed)
        task.cancelled.connect(lambda: self.progress.finish("Tuning cancelled; the spacing's steps are used."))
        task.finished.connect(lambda t=task: self._on_tune_finished(t))
        self.tune_task = task
        self.progress.start(f"Tuning {cfg.steps} {cfg.sampler} steps to this model…")
        self.state.begin("sampling", "Tuning steps")
        task.start()
        self._update_buttons()
        return True

    def _tuned_source(self) -> tuple[bool, str | None]:
        """Which model a Tune started now is for: (from disk, its path)."""
        disk = self.src_disk.isChecked()
        return disk, (self.model_path if disk else None)

    def _on_tuned(self, cfg, result, source: tuple[bool, str | None]) -> None:
        now = self.sampling_config()
        if source != self._tuned_source():
            self.progress.finish("Tuning finished for a model no longer chosen; not applied.")
            return
        if (now.sampler, now.steps) != (cfg.sampler, cfg.steps):
            self.progress.finish("Tuning finished for settings no longer chosen; not applied.")
            return
        self.set_sampling_config(dataclasses.replace(now, timesteps=result.timesteps))
        self.tune_note.setText(result.note())
        self.tune_note.setToolTip("")
        r = self._remembered_here()
        if r is not None:  # the worker wrote it to disk; keep the panel's copy in step
            from ...sampling import tuning_store

            r.entries = tuning_store.with_entry(r.entries, tuning_store.entry(self._matching_config(), result))
        self.progress.finish(f"Tuned {len(result.timesteps)} steps: {', '.join(map(str, result.timesteps))}.")

    def _on_tune_failed(self, message: str, details: str) -> None:
        self.progress.finish("Tuning failed.")
        self.state.report_error(message, details)

    def _on_tune_finished(self, task: Task) -> None:
        if self.tune_task is task:
            self.tune_task = None
            self.state.end("sampling")
            self._update_buttons()
