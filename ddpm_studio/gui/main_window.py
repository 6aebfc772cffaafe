"""The DDPM Studio main window: four tabs, menus, status bar, settings, errors, safe closing."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtCore import QByteArray, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import QApplication, QLabel, QMainWindow, QMessageBox, QTabWidget

from .. import paths
from ..logs import logger
from . import jobs, settings as settings_mod
from .panels.dataset_panel import DatasetPanel
from .panels.evaluate_panel import EvaluatePanel
from .panels.forward_panel import ForwardPanel
from .panels.lab_panel import LabPanel
from .panels.sampling_panel import SamplingPanel
from .panels.training_panel import TrainingPanel
from .state import StudioState
from .widgets.drop_zone import local_paths
from .workers import Task, running_tasks

APP_TITLE = "DDPM Studio"
# Every panel is laid out to be usable at this size (tests/test_gui_firsthour.py grabs each one there);
# it fits a 1280 x 720 or 1366 x 768 laptop screen beside a task bar.
MIN_SIZE = (1024, 640)


class MainWindow(QMainWindow):
    """``load_on_start``: open the last dataset (or the built-in one) as soon as the window shows."""

    def __init__(self, settings=None, *, load_on_start: bool = True, probe_device: bool = True):
        super().__init__()
        self.settings = settings if settings is not None else settings_mod.open_settings()
        self.state = StudioState(self)
        self.errors: list[tuple[str, str]] = []  # every error shown (tests read this)
        self.error_box: QMessageBox | None = None
        # Replaceable in tests: (question) -> bool. Default asks with a modal dialog.
        self.confirm: Callable[[str], bool] = self._confirm_dialog
        self.device_task: Task | None = None

        self.setWindowTitle(APP_TITLE)
        self.setAcceptDrops(True)
        self.setMinimumSize(*MIN_SIZE)
        self.resize(1280, 820)

        self._build_tabs()
        self._build_status_bar()

        self._build_menus()
        self.state.error.connect(self.show_error)
        self.state.activity_changed.connect(self._update_activity)
        self.state.message.connect(lambda m: self.statusBar().showMessage(m, 6000))
        self.state.device_changed.connect(lambda d: self.device_label.setText(f"Device: {d}"))
        self.training_panel.training_finished.connect(lambda _: self._update_actions())
        self.sampling_panel.generation_finished.connect(lambda _: self._update_actions())

        self._sources = self.restore_settings()
        if load_on_start:
            QTimer.singleShot(0, lambda: self.dataset_panel.load_paths(self._sources))
        if probe_device:
            QTimer.singleShot(0, self._probe_device)

    def _build_tabs(self) -> None:
        self.dataset_panel = DatasetPanel(self.state)
        self.training_panel = TrainingPanel(self.state)
        self.sampling_panel = SamplingPanel(self.state)
        self.forward_panel = ForwardPanel(self.state)
        self.lab_panel = LabPanel(self.state)
        self.evaluate_panel = EvaluatePanel(self.state)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.dataset_panel, "Dataset")
        self.tabs.addTab(self.training_panel, "Training")
        self.tabs.addTab(self.sampling_panel, "Sampling")
        self.tabs.addTab(self.forward_panel, "Forward Process")
        self.tabs.addTab(self.lab_panel, "Lab")
        self.tabs.addTab(self.evaluate_panel, "Evaluate")
        self.tabs.setTabToolTip(self.tabs.indexOf(self.evaluate_panel),
                                "Score samples against the training images, find copies, make a time-lapse.")
        self.training_panel.training_finished.connect(self._show_finished_run_in_evaluate)
        self.tabs.setTabToolTip(0, "Choose the images to learn from.")
        self.tabs.setTabToolTip(1, "Train a denoising network and watch the loss fall.")
        self.tabs.setTabToolTip(2, "Generate images and watch the reverse chain.")
        self.tabs.setTabToolTip(3, "See how noise destroys an image step by step.")
        self.tabs.setTabToolTip(4, "Compare samplers, branch a chain, interpolate: see how a sample is made.")
        self.setCentralWidget(self.tabs)

    def _show_finished_run_in_evaluate(self, result) -> None:
        """The Evaluate tab opens the run that just finished: the run its last checkpoint is in (not
        the Training panel's current run, which may already be a new one by the time this arrives)."""
        if result is not None and result.checkpoint:
            self.evaluate_panel.open_run(str(Path(result.checkpoint).parent.parent))

    def _build_status_bar(self) -> None:
        self.activity_label = QLabel("Ready")
        from .widgets.plotting import quiet_label

        quiet_label(self.activity_label)
        self.device_label = QLabel("Device: detecting…")
        self.device_label.setToolTip("The compute device training and sampling use when set to Automatic. On a CPU "
                                     "training and sampling run on every core, below the window's priority, so "
                                     "that it stays responsive (set OMP_NUM_THREADS to choose).")
        sb = self.statusBar()
        sb.addWidget(self.activity_label, 1)
        sb.addPermanentWidget(self.device_label)

    # -- menus ------------------------------------------------------------------------------------
    def _action(self, text: str, slot, shortcut=None, tip: str = "") -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
        if tip:
            a.setStatusTip(tip)
            a.setToolTip(tip)
        a.triggered.connect(slot)
        return a

    def _build_menus(self) -> None:
        mb = self.menuBar()
        f = mb.addMenu("&File")
        self.open_folder_action = self._action("Open &Folder…", self.dataset_panel.open_folder, "Ctrl+O",
                                               "Open a folder of images to train on.")
        self.open_run_action = self._action("Open &Run…", self._open_run, "Ctrl+Shift+O",
                                            "Continue a training run saved earlier.")
        self.open_model_action = self._action("Open &Model…", self._open_model, "Ctrl+Shift+M",
                                              "Sample from a run folder, checkpoint or model folder.")
        self.export_frame_action = self._action("&Export Frame as PNG…", lambda: self.sampling_panel.export_frame(),
                                                "Ctrl+E", "Save the reverse-chain frame on screen.")
        self.export_samples_action = self._action("Export &Samples as PNG…",
                                                  lambda: self.sampling_panel.export_samples(),
                                                  "Ctrl+Alt+E", "Save the final samples.")
        self.export_gif_action = self._action("Export Chain as &GIF…", lambda: self.sampling_panel.export_gif(),
                                              "Ctrl+Shift+E", "Save the reverse chain as an animated GIF.")
        self.quit_action = self._action("&Quit", self.close, "Ctrl+Q", "Close DDPM Studio.")
        self.quit_action.setMenuRole(QAction.MenuRole.QuitRole)
        for a in (self.open_folder_action, self.open_run_action, self.open_model_action):
            f.addAction(a)
        f.addSeparator()
        exp = f.addMenu("E&xport")
        for a in (self.export_frame_action, self.export_samples_action, self.export_gif_action):
            exp.addAction(a)
        f.addSeparator()
        f.addAction(self.quit_action)

        r = mb.addMenu("&Run")
        self.start_action = self._action("&Start Training", self._start_training, "Ctrl+T",
                                         "Start or continue training.")
        self.pause_action = self._action("&Pause / Resume Training", self.training_panel.pause_button.toggle, "Ctrl+P")
        self.stop_action = self._action("S&top Training", self.training_panel.stop, "Ctrl+.")
        self.new_run_action = self._action("&New Run", self.training_panel.new_run, None,
                                           "Forget the opened run: the next Start begins a new one.")
        self.generate_action = self._action("&Generate", self._generate, "Ctrl+G",
                                            "Generate images with the chosen sampler.")
        self.cancel_action = self._action("&Cancel Generation", self.sampling_panel.cancel, "Ctrl+Shift+G")
        for a in (self.start_action, self.pause_action, self.stop_action, self.new_run_action):
            r.addAction(a)
        r.addSeparator()
        r.addAction(self.generate_action)
        r.addAction(self.cancel_action)

        v = mb.addMenu("&View")
        for i, name in enumerate(("Dataset", "Training", "Sampling", "Forward Process")):
            v.addAction(self._action(f"&{name}", lambda _=False, i=i: self.tabs.setCurrentIndex(i), f"Ctrl+{i + 1}"))
        v.addSeparator()
        self.log_action = self._action("&Log-scale Loss", lambda on: self.training_panel.loss_plot.set_log_scale(on),
                                       "Ctrl+L")
        self.log_action.setCheckable(True)
        self.training_panel.loss_plot.log_scale_changed.connect(self.log_action.setChecked)
        v.addAction(self.log_action)

        h = mb.addMenu("&Help")
        h.addAction(self._action("&About DDPM Studio", self._about))
        self._update_actions()

    def _open_run(self) -> None:
        self.tabs.setCurrentWidget(self.training_panel)
        self.training_panel.open_run()

    def _open_model(self) -> None:
        self.tabs.setCurrentWidget(self.sampling_panel)
        self.sampling_panel.open_model()

    def _start_training(self) -> None:
        self.tabs.setCurrentWidget(self.training_panel)
        self.training_panel.start()

    def _generate(self) -> None:
        self.tabs.setCurrentWidget(self.sampling_panel)
        self.sampling_panel.generate()

    def about_text(self) -> str:
        import sys

        import PySide6
        from PySide6.QtCore import qVersion

        from .. import __version__

        torch = sys.modules.get("torch")  # imported by the device probe; never imported here
        versions = (f"PySide6 {PySide6.__version__} · Qt {qVersion()}"
                    + (f" · torch {torch.__version__}" if torch else ""))
        return (f"<b>DDPM Studio {__version__}</b><p>Train denoising diffusion probabilistic models "
                "(Ho et al. 2020) on your own images and watch them work.</p>"
                f"<p>{versions}</p>"
                f"<p>Settings: {settings_mod.settings_path()}<br>Runs: {paths.default_runs_dir()}</p>")

    def _about(self) -> None:
        QMessageBox.about(self, "About DDPM Studio", self.about_text())

    def _update_actions(self) -> None:
        self.pause_action.setEnabled(self.state.is_busy("training"))
        self.stop_action.setEnabled(self.state.is_busy("training"))
        self.cancel_action.setEnabled(self.state.is_busy("sampling"))

    def _update_activity(self) -> None:
        self.activity_label.setText(self.state.activity_text())
        self._update_actions()

    # -- drops anywhere on the window -----------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:
        if local_paths(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        p = local_paths(event.mimeData())
        if p:
            event.acceptProposedAction()
            self.tabs.setCurrentWidget(self.dataset_panel)
            self.dataset_panel.load_paths(p)

    # -- device -----------------------------------------------------------------------------------
    def _probe_device(self) -> None:
        task = Task(jobs.make_probe_device("auto"), name="device")
        task.succeeded.connect(self._on_device)
        task.failed.connect(lambda m, d: self.device_label.setText("Device: unknown"))
        self.device_task = task
        task.start()

    def _on_device(self, result) -> None:
        text, available, precision_note = result
        if precision_note:
            self.device_label.setToolTip(f"{self.device_label.toolTip()} {precision_note}")
        self.state.set_device(text)
        self.training_panel.set_available_devices(available)

    # -- errors -----------------------------------------------------------------------------------
    def show_error(self, message: str, details: str = "") -> None:
        """Plain words in a dialog, the technical details behind "Show Details…". Never blocks."""
        self.errors.append((message, details))
        logger.error("%s%s", message, f"\n{details}" if details else "")
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle(APP_TITLE)
        box.setText(message)
        if details:
            box.setDetailedText(details)
        box.setStandardButtons(QMessageBox.StandardButton.Ok)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.error_box = box
        box.open()  # window-modal, returns at once
        self.statusBar().showMessage(message, 8000)

    # -- settings ---------------------------------------------------------------------------------
    def restore_settings(self) -> list[str]:
        s = self.settings
        geo = s.value("window/geometry")
        if isinstance(geo, QByteArray) and not geo.isEmpty():
            self.restoreGeometry(geo)
        st = s.value("window/state")
        if isinstance(st, QByteArray) and not st.isEmpty():
            self.restoreState(st)
        sources = self.dataset_panel.restore_settings(s)
        self.training_panel.restore_settings(s)
        self.sampling_panel.restore_settings(s)
        self.tabs.setCurrentIndex(settings_mod.get(s, "window/tab", 0))
        return sources

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("window/tab", self.tabs.currentIndex())
        self.dataset_panel.save_settings(s)
        self.training_panel.save_settings(s)
        self.sampling_panel.save_settings(s)
        s.sync()

    # -- closing ----------------------------------------------------------------------------------
    def _confirm_dialog(self, question: str) -> bool:
        answer = QMessageBox.question(self, APP_TITLE, question,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                                      QMessageBox.StandardButton.Cancel)
        return answer == QMessageBox.StandardButton.Yes

    def busy_work(self) -> list[str]:
        work = []
        if self.training_panel.is_running():
            work.append("training")
        if self.sampling_panel.is_running():
            work.append("generating images")
        return work

    def closeEvent(self, event: QCloseEvent) -> None:
        work = self.busy_work()
        if work:
            what = " and ".join(work)
            question = (f"DDPM Studio is {what}. Stop and quit?\n\n"
                        + ("Training stops after the current step and saves a checkpoint you can continue from."
                           if "training" in work else ""))
            if not self.confirm(question):
                event.ignore()
                return
        self.shutdown()
        self.save_settings()
        event.accept()

    def shutdown(self, timeout_ms: int = 60000) -> None:
        """Ask every worker to stop, then wait for their threads (training saves its checkpoint first)."""
        for panel in (self.dataset_panel, self.training_panel, self.sampling_panel):
            panel.shutdown()
        if self.device_task is not None:
            self.device_task.cancel()
        for task in running_tasks():
            task.cancel()
        waiting = running_tasks()
        if waiting:  # say what closing waits for (training saves its checkpoint first)
            self.closing_message = waiting_message([t.name for t in waiting])
            self.activity_label.setText(self.closing_message)
            self.setWindowTitle(f"{self.windowTitle().split(' — ')[0]} — {self.closing_message}")
            QApplication.processEvents()
        for task in waiting:
            task.wait(timeout_ms)


def waiting_message(names: list[str]) -> str:
    """'Closing: waiting for training to save its checkpoint and sampling to stop…'"""
    words = {"training": "training to save its checkpoint", "sampling": "sampling to stop",
             "dataset": "the image load to stop", "export": "the export to finish",
             "device": "the device check", "history": "the run's history to load",
             "open-run": "the opened run to be read", "quality-cost": "the quality estimate",
             "quality-history": "the run's scores to load"}
    what = [words.get(n, f"{n} to stop") for n in dict.fromkeys(names)]
    return "Closing: waiting for " + " and ".join(what) + "…"
