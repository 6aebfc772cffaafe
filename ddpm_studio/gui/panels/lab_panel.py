"""The Lab: see how a sample is made (issue 16). Three modes, each running on worker threads
(:mod:`..lab_jobs`), each exportable:

- **Compare**: the same x_T through several samplers / step counts / η, one row each, labelled
  with its settings and seconds per image, filling in live;
- **Chain & Branch**: one chain as x_t, x̂0 and ε̂ (v̂) side by side under one scrubber; a contact
  sheet, GIF or APNG of it; from the step on screen, branch: rerun the rest with new noise, or
  re-noise x̂0 to a chosen t with q(x_t | x_0) and denoise again (one strip per branch point);
- **Interpolate**: slerp between two seeds' x_T (deterministic sampler: the ends are the seeds' own
  samples), or two images noised to t and mixed (Ho et al. 2020, §4.4); the weight on a slider from
  0.00 to 1.00, the frame at any weight between the strip's computed on a worker.

A view: every decision and every piece of state lives in :class:`ddpm_studio.lab.session.LabSession`
(Qt-free, tested without Qt); :mod:`.lab_layout` builds the widgets; this module forwards clicks and
the workers' results to the session and renders what it says.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFileDialog, QSlider

from ...config import SAMPLER_INFO, SamplingConfig
from ...lab.session import Job, LabSession, weight_at
from .. import lab_jobs
from ..state import StudioState
from ..workers import Task
from .lab_layout import LabLayout


def _move(slider: QSlider, value: int) -> None:
    """Set a slider without its valueChanged (the caller renders)."""
    slider.blockSignals(True)
    slider.setValue(value)
    slider.blockSignals(False)


class LabPanel(LabLayout):
    """Signals fire once the worker's thread has ended, carrying the result, or None (refused, cancelled,
    failed; a refused request fires at once)."""

    compare_finished = Signal(object)  # lab_jobs.BoardUpdate | None
    chain_finished = Signal(object)  # lab_jobs.LabChain | None
    branch_finished = Signal(object)  # lab_jobs.BranchRow | None
    interpolate_finished = Signal(object)  # lab_jobs.InterpResult | None
    weight_finished = Signal(object)  # lab_jobs.ExactFrame | None: one weight's frame computed
    export_finished = Signal(list)  # paths written

    def __init__(self, state: StudioState, parent=None):
        super().__init__(parent)
        self.state = state
        self.session = LabSession()  # every decision and result; this panel shows it
        self.task: Task | None = None
        self.export_task: Task | None = None
        self.weight_task: Task | None = None
        self.ask_save_path = self._ask_save_path  # replaceable in tests: (title, filter, default) -> path
        self.ask_open_path = self._ask_open_path
        self._build()
        self._sampler_changed()
        self._update_buttons()

    # -- settings -------------------------------------------------------------------------------
    def _sampler_changed(self) -> None:
        name = self.sampler_combo.currentData()
        self.steps_spin.setEnabled(name != "ddpm")
        self.eta_spin.setEnabled(name == "ddim")
        self.steps_spin.setValue(self.session.default_steps(name))  # the job lowers it to a new model's T
        self.sampler_combo.setToolTip(SAMPLER_INFO[name]["hint"])

    def sampling(self) -> SamplingConfig:
        return self.session.sampling(self.sampler_combo.currentData(), self.steps_spin.value(), self.eta_spin.value(),
                                     self.seed_spin.value(), self.num_spin.value())

    # -- model ----------------------------------------------------------------------------------
    def open_model(self, path: str | None = None) -> bool:
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Open a run folder or a model folder")
        if not path:
            return False
        try:
            self.model_label.setText(self.session.open(path))
        except ValueError as e:
            self.state.report_error(str(e))
            return False
        self._update_buttons()
        return True

    def _on_model(self, loaded) -> None:
        first = self.session.model_loaded(loaded)
        T = self.session.T
        self.model_label.setText(self.session.model_text())
        self.steps_spin.setValue(self.session.fitted_steps(self.sampler_combo.currentData(), self.steps_spin.value()))
        self.steps_spin.setMaximum(T)
        for spin in (self.branch_t, self.interp_t):
            spin.setMaximum(T - 1)
            if first:
                spin.setValue(min(spin.value(), T // 2))

    # -- running --------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.session.running is not None

    def _refuse(self, message: str, finished_signal) -> bool:
        self.session.refuse(message)
        self.state.report_error(message)
        finished_signal.emit(None)
        return False

    def _start(self, job: Job, fn_of, finished_signal, seed: int | None = None, message: str | None = None) -> bool:
        """Run ``fn_of()`` (the job function, made once the session has agreed) as ``job``."""
        if self.is_running():
            return False
        try:
            message = self.session.begin(job, seed=seed, message=message)
        except ValueError as e:
            return self._refuse(str(e), finished_signal)
        task = Task(fn_of(), name=f"lab-{job}")
        task.items.connect(self._on_items)
        task.progress.connect(self.progress_row.report)
        task.succeeded.connect(self._on_succeeded)
        task.failed.connect(lambda m, d: (self.session.failed(m), self.state.report_error(m, d)))
        task.cancelled.connect(lambda: self.progress_row.finish(self.session.cancelled()))
        task.finished.connect(lambda: self._task_done(finished_signal))
        self.task = task
        self.progress_row.start(message)
        self.state.begin("lab", message)
        task.start()
        self._update_buttons()
        return True

    def _on_items(self, items) -> None:
        for it in items:
            if isinstance(it, lab_jobs.LabModelReady):
                self._on_model(it.loaded)
                continue
            slider = self.weight_slider if isinstance(it, lab_jobs.InterpFrame) else self.chain_slider
            pos = self.session.item(it, shown=slider.value())
            if isinstance(it, lab_jobs.BoardUpdate):
                self.board_view.set_image(self.session.board)
            elif isinstance(it, lab_jobs.LabFrame):
                self.chain_slider.setRange(0, len(self.session.frames) - 1)
            if pos is not None:
                _move(slider, pos)
                (self._show_interp_frame if slider is self.weight_slider else self._show_chain_frame)(pos)
        self._update_buttons()

    def _on_succeeded(self, result) -> None:
        job = self.session.running
        self.progress_row.finish(self.session.succeeded(result))
        if job == Job.COMPARE:
            self.board_view.set_image(self.session.board)
        elif job == Job.CHAIN:
            self.three.set_noise_label(result.noise_label)
        elif job == Job.BRANCH:
            self.branch_view.set_image(self.session.branch_board)
        elif job == Job.INTERPOLATE:
            self.strip_view.set_image(result.strip)

    def _task_done(self, finished_signal) -> None:
        job = self.session.running
        result = self.session.finish()
        self.state.end("lab")
        if self.progress_row.bar.isVisible():
            self.progress_row.finish("")
        self._update_buttons()
        if job == Job.INTERPOLATE and result is not None:
            self._show_interp_frame(self.weight_slider.value())  # a weight chosen during the run: computed now
        finished_signal.emit(result)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def shutdown(self) -> None:
        for t in (self.task, self.export_task, self.weight_task):
            if t is not None:
                t.cancel()

    def _update_buttons(self) -> None:
        b = self.session.buttons(self.branch_mode.currentData(), self.interp_mode.currentData())
        for widget, on in ((self.compare_button, b.compare), (self.chain_button, b.chain),
                           (self.interp_button, b.interpolate), (self.branch_button, b.branch),
                           (self.branch_t, b.branch_t), (self.export_board_button, b.export_board),
                           (self.sheet_button, b.sheet), (self.gif_button, b.animation),
                           (self.export_strips_button, b.export_strips), (self.export_strip_button, b.export_strip),
                           (self.export_walk_button, b.export_walk), (self.generated_button, b.generated),
                           (self.chain_slider, b.chain_slider), (self.weight_slider, b.weight_slider)):
            widget.setEnabled(on)
        for x in (self.interp_t, self.image_a_button, self.image_b_button, self.data_a, self.data_b, self.images_label,
                  self.generated_button):
            x.setVisible(b.images_mode)
        self.seed_a.setVisible(not b.images_mode)
        self.seed_b.setVisible(not b.images_mode)

    # -- compare ----------------------------------------------------------------------------------
    def run_compare(self) -> bool:
        try:
            specs = self.session.plan_compare(self.specs_edit.text())
        except ValueError as e:
            return self._refuse(str(e), self.compare_finished)
        seed = self.seed_spin.value()
        return self._start(Job.COMPARE, lambda: lab_jobs.make_compare(self.session.model_getter(), specs,
                                                                      self.sampling(), self.num_spin.value(), seed),
                           self.compare_finished, seed=seed)

    # -- chain and branch ---------------------------------------------------------------------------
    def run_chain(self) -> bool:
        seed = self.seed_spin.value()
        started = self._start(Job.CHAIN, lambda: lab_jobs.make_chain(self.session.model_getter(), self.sampling(),
                                                                     self.num_spin.value(), seed),
                              self.chain_finished, seed=seed)
        if started:
            self.three.show_views(None)
            self.chain_slider.setRange(0, 0)
        return started

    def _show_chain_frame(self, i: int) -> None:
        shown = self.session.scrub(i)
        if shown is not None:
            self.three.show_views(shown[0])
            self.chain_label.setText(shown[1])

    def current_step(self) -> lab_jobs.LabFrame | None:
        return self.session.frame_at(self.chain_slider.value())

    def branch_here(self) -> bool:
        if self.is_running():
            return False
        try:
            plan = self.session.plan_branch(self.chain_slider.value(), self.branch_mode.currentData(),
                                            self.branch_count.value(), self.branch_t.value())
        except ValueError as e:
            return self._refuse(str(e), self.branch_finished)
        s = self.session
        return self._start(Job.BRANCH, lambda: lab_jobs.make_branch(
            s.model_getter(), s.chain, plan.index, mode=plan.mode, count=plan.count, t=plan.renoise_t,
            seed=plan.seed, previous=list(s.branch_rows)), self.branch_finished, message=plan.message)

    # -- interpolation ------------------------------------------------------------------------------
    def choose_image(self, which: int) -> None:
        self.session.set_image_file(which, self.ask_open_path(
            "Choose an image", "Images (*.png *.jpg *.jpeg *.bmp *.webp *.tif *.tiff)"))
        self._images_label()

    def use_generated(self) -> bool:
        """Images A and B are the first two x_0 of the last chain (generated images, §4.4)."""
        try:
            self.session.use_generated()
        except ValueError as e:
            self.state.report_error(str(e))
            return False
        self._images_label()
        return True

    def _images_label(self) -> None:
        self.images_label.setText(self.session.images_text((self.data_a.value(), self.data_b.value())))

    def run_interpolate(self) -> bool:
        mode, seeds = self.interp_mode.currentData(), (self.seed_a.value(), self.seed_b.value())
        try:
            images = self.session.plan_interpolate(mode, seeds, self.state.images,
                                                   (self.data_a.value(), self.data_b.value()))
        except ValueError as e:
            return self._refuse(str(e), self.interpolate_finished)
        if self.weight_task is not None:
            self.weight_task.cancel()  # a frame of the old walk is of no use now
        started = self._start(Job.INTERPOLATE, lambda: lab_jobs.make_interpolate(
            self.session.model_getter(), self.sampling(), mode=mode, seeds=seeds, images=images,
            t=self.interp_t.value(), frames=self.frames_spin.value(), seed=self.seed_spin.value()),
            self.interpolate_finished, seed=self.seed_spin.value())
        if started:
            _move(self.weight_slider, 0)
        return started

    def _show_interp_frame(self, position: int) -> None:
        view = self.session.show_weight(position)
        if view.image is not None:
            self.interp_view.set_image(view.image)
        self.interp_view.caption.setText(view.caption)
        if view.compute is not None:
            self._compute_weight(view.compute)

    def _compute_weight(self, position: int) -> None:
        """The exact frame at a slider position, on a worker; the next waiting position starts after it."""
        s = self.session
        walk_id, landed = s.walk_id, {"frame": None, "next": None}
        task = Task(lab_jobs.make_weight_frame(s.walk_model_getter(), s.interp.recipe, position, weight_at(position),
                                               walk_id), name="lab-weight")

        def succeeded(frame) -> None:
            show, landed["next"] = s.exact_landed(frame)
            landed["frame"] = frame
            if show is not None:
                self.interp_view.set_image(show.image)
                self.interp_view.caption.setText(show.caption)

        def finished() -> None:
            if self.weight_task is task:
                self.weight_task = None
            nxt = landed["next"] if landed["frame"] is not None else s.exact_ended(walk_id)
            self.weight_finished.emit(landed["frame"])
            if nxt is not None:
                self._compute_weight(nxt)

        task.succeeded.connect(succeeded)
        task.failed.connect(lambda m, d: self.state.report_error(m, d))
        task.finished.connect(finished)
        self.weight_task = task
        task.start()

    # -- exports ----------------------------------------------------------------------------------
    def _ask_save_path(self, title: str, filt: str, default: str) -> str:
        path, _ = QFileDialog.getSaveFileName(self, title, default, filt)
        return path

    def _ask_open_path(self, title: str, filt: str) -> str:
        path, _ = QFileDialog.getOpenFileName(self, title, "", filt)
        return path

    def _export(self, what: str, path: str | None, make, words: str) -> bool:
        """Ask for the file (unless ``path`` is given) and write it on a worker with ``make(path)``."""
        if self.export_task is not None and self.export_task.is_running():
            return False
        if not path:
            target = self.session.export_target(what)
            chosen = self.ask_save_path(target.title, target.filter, target.name)
            if not chosen:
                return False
            path = target.path_for(chosen)
        task = Task(make(path), name="lab-export")
        written: list = []  # export_finished carries it once the thread has ended (the next export may start)
        task.succeeded.connect(lambda paths: (self.state.message.emit(f"Saved {words}: {paths[0]}"),
                                              written.extend(paths)))
        task.failed.connect(lambda m, d: self.state.report_error(m, d))
        task.finished.connect(lambda: self.export_finished.emit(list(written)))
        self.export_task = task
        task.start()
        return True

    def export_board(self, path: str | None = None) -> bool:
        board = self.session.board
        return board is not None and self._export("board", path, lambda p: lab_jobs.make_save_png(board, p),
                                                  "the compare board")

    def export_sheet(self, path: str | None = None) -> bool:
        s = self.session
        return s.chain is not None and self._export("sheet", path, lambda p: lab_jobs.make_contact_sheet(
            s.chain_frames(), self.every_spin.value(), s.view_names(), p, s.sheet_title()), "the contact sheet")

    def export_chain_animation(self, path: str | None = None) -> bool:
        s = self.session
        return s.chain is not None and self._export("animation", path, lambda p: lab_jobs.make_save_animation(
            s.chain_frames(), p, overlay_t=self.overlay_check.isChecked(), every=self.every_spin.value()),
            "the chain animation")

    def export_strips(self, path: str | None = None) -> bool:
        board = self.session.branch_board
        return board is not None and self._export("strips", path, lambda p: lab_jobs.make_save_png(board, p),
                                                  "the branch strips")

    def export_interp_strip(self, path: str | None = None) -> bool:
        strip = self.session.interp.strip
        return strip is not None and self._export("strip", path, lambda p: lab_jobs.make_save_png(strip, p),
                                                  "the interpolation strip")

    def export_interp_gif(self, path: str | None = None) -> bool:
        s = self.session
        return s.interp.strip is not None and self._export("walk", path, lambda p: lab_jobs.make_save_animation(
            s.walk_frames(), p, overlay_t=False, fps=8, bounce=True), "the walk")
