"""The Sampling panel's Tune: fit a few-step chain's timesteps to the model on a worker thread
(``jobs.make_tune`` over ``sampling.tuning.tune_timesteps``) and put them in the "Tuned timesteps" field.

``TuningActions`` is a mixin of ``SamplingPanel``: it reads the panel's ``sampler_form``, ``steps_spin``,
``progress``, ``state``, ``sampling_config()``, ``_model_getter()`` and ``is_running()``, and owns ``tune_task``.
Tuned timesteps belong to one model and one sampler: opening another model, choosing another sampler or
another step count clears them (with a note saying so), and they are not kept in the settings file.
"""

from __future__ import annotations

import dataclasses

from PySide6.QtWidgets import QPushButton

from ...config import TUNABLE_SAMPLERS
from .. import jobs
from ..workers import Task
from .common import note

TUNE_TIP = ("Find the timesteps at which this sampler, at this step count, best reproduces a 50-step chain on "
            "this model (one to three minutes at 5 steps for a small model on a CPU). With the run's training "
            "images at hand (or, for a model without a run, the images open in the Dataset panel), the last step "
            "then goes to 0 if that brings the images closer to them (it sharpens text and fine grain). Worth it "
            "at 5 steps.")


class TuningActions:
    """The Tune button, its note and its job (mixed into the Sampling panel)."""

    tune_task: Task | None = None
    tune_images: int | None = None  # chains the error is measured on (None: the tuning's own; tests use fewer)

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

    def _steps_changed(self, steps: int) -> None:
        text = self.timesteps_edit.text().replace(",", " ").split()
        if text and len(text) != steps:
            self.clear_tuned(f"they were tuned for {len(text)} steps")

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
        task = Task(jobs.make_tune(get_model, cfg, self.tune_images, self.state.images), name="tuning")
        task.progress.connect(lambda done, total, msg: self.progress.report(done, total, msg))
        task.succeeded.connect(lambda result, c=cfg: self._on_tuned(c, result))
        task.failed.connect(self._on_tune_failed)
        task.cancelled.connect(lambda: self.progress.finish("Tuning cancelled; the spacing's steps are used."))
        task.finished.connect(lambda t=task: self._on_tune_finished(t))
        self.tune_task = task
        self.progress.start(f"Tuning {cfg.steps} {cfg.sampler} steps to this model…")
        self.state.begin("sampling", "Tuning steps")
        task.start()
        self._update_buttons()
        return True

    def _on_tuned(self, cfg, result) -> None:
        now = self.sampling_config()
        if (now.sampler, now.steps) != (cfg.sampler, cfg.steps):
            self.progress.finish("Tuning finished for settings no longer chosen; not applied.")
            return
        self.set_sampling_config(dataclasses.replace(now, timesteps=result.timesteps))
        self.tune_note.setText(result.note())
        self.progress.finish(f"Tuned {len(result.timesteps)} steps: {', '.join(map(str, result.timesteps))}.")

    def _on_tune_failed(self, message: str, details: str) -> None:
        self.progress.finish("Tuning failed.")
        self.state.report_error(message, details)

    def _on_tune_finished(self, task: Task) -> None:
        if self.tune_task is task:
            self.tune_task = None
            self.state.end("sampling")
            self._update_buttons()
