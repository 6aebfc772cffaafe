"""One file dialog that opens a checkpoint file or a run / model folder (Qt's own dialogs pick one or the other).

It is Qt's file dialog (not the platform's, which cannot be taught this), choosing existing files;
pressing Open on a folder that is a run (``checkpoints/``, ``config.json``) or a diffusers model
(``model_index.json``, ``unet/``) chooses that folder instead of entering it, and so does Open with
nothing selected inside such a folder.
"""

from __future__ import annotations

import os

from PySide6.QtWidgets import QDialog, QFileDialog

MODEL_FILTER = "Checkpoints and model folders (*.safetensors);;All files (*)"


def is_model_folder(path: str) -> bool:
    """A DDPM Studio run folder or a diffusers model folder (cheap: a few stat calls)."""
    j = os.path.join
    return os.path.isdir(path) and (
        os.path.isdir(j(path, "checkpoints")) or os.path.isfile(j(path, "model_index.json"))
        or os.path.isfile(j(path, "unet", "config.json"))
        or (os.path.isfile(j(path, "config.json")) and (os.path.isfile(j(path, "diffusion_pytorch_model.safetensors"))
                                                        or os.path.isfile(j(path, "run.json")))))


class OpenModelDialog(QFileDialog):
    def __init__(self, parent=None, start_dir: str = ""):
        super().__init__(parent, "Open Run or Checkpoint: a .safetensors file, or a run or model folder", start_dir,
                         MODEL_FILTER)
        self.setOption(QFileDialog.Option.DontUseNativeDialog, True)
        self.setFileMode(QFileDialog.FileMode.ExistingFile)
        self.setAcceptMode(QFileDialog.AcceptMode.AcceptOpen)
        self.chosen: str | None = None

    def accept(self) -> None:
        picked = (self.selectedFiles() or [""])[0]
        if not (picked and os.path.isfile(picked)):
            here = self.directory().absolutePath()
            for candidate in (picked, here) if picked else (here,):
                if is_model_folder(candidate):
                    self.chosen = os.path.normpath(candidate)
                    QDialog.accept(self)  # a folder chosen as a whole, not entered
                    return
                if candidate and os.path.isdir(candidate):
                    break  # a plain folder: Qt enters it
        super().accept()  # a file (or a plain folder, which Qt enters)
        if self.result() == QDialog.DialogCode.Accepted:
            files = self.selectedFiles()
            self.chosen = files[0] if files else None


def ask_model_path(parent, start_dir: str) -> str | None:
    dialog = OpenModelDialog(parent, start_dir)
    return dialog.chosen if dialog.exec() == QDialog.DialogCode.Accepted else None
