"""The Sampling panel's decisions, without Qt: which model Generate samples from, what the model
line says, and the noise schedule a model's config describes.

The panel (gui/panels/sampling_panel.py) is a view over a :class:`SamplingSession`; tests drive the
session directly.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from ddpm_studio.config import RunConfig


class SamplingSession:
    """The model to sample from: one opened from disk, or a snapshot of the one training."""

    def __init__(self) -> None:
        self.model_path: str | None = None  # a run folder, checkpoint or diffusers folder
        self.loaded: Any = None  # the LoadedModel of model_path, once a Generate has loaded it

    def open(self, path: str) -> None:
        """Use ``path`` for the next Generate; ValueError when it does not exist."""
        if not os.path.exists(path):
            raise ValueError(f"{path} does not exist")
        self.model_path, self.loaded = str(path), None

    def model_getter(self, from_disk: bool, trainer: Any) -> Callable[[], Any]:
        """What the sampling job calls (on its thread) for the model; ValueError when there is none."""
        if from_disk:
            if not self.model_path:
                raise ValueError("no model is opened: choose a run folder or checkpoint first")
            if self.loaded is not None:
                loaded = self.loaded
                return lambda: loaded
            path = self.model_path

            def load():
                from ddpm_studio.artifacts.loading import load_model

                return load_model(path)

            return load
        if trainer is None:
            raise ValueError("nothing is training yet: start training first, or open a run from disk")
        return trainer.snapshot

    def model_loaded(self, loaded: Any) -> bool:
        """The job loaded the opened model; True the first time (the panel then shows its own spacing)."""
        first = self.loaded is None
        self.loaded = loaded
        return first

    def describe(self, from_disk: bool, training: bool) -> str:
        """The model line under the source choice."""
        if not from_disk:
            return ("Training is running or has run in this window." if training
                    else "Nothing is training yet: start training, or open a run from disk.")
        if not self.model_path:
            return "No model opened yet."
        text = self.model_path
        if self.loaded is not None:
            m = self.loaded.config.model
            kind = "RGB" if m.in_channels == 3 else "grayscale"
            text += f"\nstep {self.loaded.step:,} · {m.image_size} px · {kind}"
        return text


def schedule_of(config: RunConfig):
    """(NoiseSchedule, label) of a model's config: an imported model's exact betas, else its named schedule."""
    import numpy as np

    from ddpm_studio.engine.schedules import NoiseSchedule

    d = config.diffusion
    if d.betas is not None:  # an imported model's exact betas (issue 15), not the family it is closest to
        return NoiseSchedule(np.asarray(d.betas, dtype=np.float64), kind="custom"), \
            f"explicit betas (closest: {d.schedule})"
    return NoiseSchedule.from_config(d.schedule, d.timesteps), d.schedule
