"""What the panels share, as one small QObject with signals.

Panels receive this in ``__init__`` and subscribe; no panel reaches into another. The dataset panel
publishes the image set, the training panel the schedule and the trainer it runs, everyone
publishes activity for the status bar and errors for the dialog.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from ..config import DataConfig


class StudioState(QObject):
    images_changed = Signal(object)  # ImageSet | None
    data_config_changed = Signal(object)  # DataConfig
    schedule_changed = Signal(str, int)  # (kind, T) chosen in the training panel
    trainer_changed = Signal(object)  # the running Trainer (for snapshots) or None
    activity_changed = Signal()  # something started or finished: status bar text / actions
    device_changed = Signal(str)  # a human description of the compute device
    error = Signal(str, str)  # (plain message, details)
    message = Signal(str)  # a transient status-bar message

    def __init__(self, parent=None):
        super().__init__(parent)
        self.images = None
        self.data_config = DataConfig()
        self.schedule: tuple[str, int] = ("linear", 1000)
        self.trainer = None
        self.device = "…"
        self._activities: dict[str, str] = {}

    # -- publishers -------------------------------------------------------------------------------
    def set_images(self, images) -> None:
        self.images = images
        self.images_changed.emit(images)

    def set_data_config(self, cfg: DataConfig) -> None:
        self.data_config = cfg
        self.data_config_changed.emit(cfg)

    def set_schedule(self, kind: str, timesteps: int) -> None:
        if (kind, timesteps) != self.schedule:
            self.schedule = (kind, timesteps)
            self.schedule_changed.emit(kind, timesteps)

    def set_trainer(self, trainer) -> None:
        self.trainer = trainer
        self.trainer_changed.emit(trainer)

    def set_device(self, text: str) -> None:
        self.device = text
        self.device_changed.emit(text)

    def report_error(self, message: str, details: str = "") -> None:
        self.error.emit(message, details)

    # -- activity ---------------------------------------------------------------------------------
    def begin(self, key: str, text: str) -> None:
        """Mark work ``key`` (e.g. "training") as running, described by ``text``."""
        self._activities[key] = text
        self.activity_changed.emit()

    def end(self, key: str) -> None:
        if self._activities.pop(key, None) is not None:
            self.activity_changed.emit()

    def is_busy(self, key: str) -> bool:
        return key in self._activities

    def activity_text(self) -> str:
        return " · ".join(self._activities.values()) if self._activities else "Ready"
