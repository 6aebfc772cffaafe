"""The Sampling panel's decisions without Qt: the model source, its description, its schedule."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ddpm_studio.config import DiffusionConfig, RunConfig
from ddpm_studio.engine.schedules import get_betas
from ddpm_studio.sampling.session import SamplingSession, schedule_of


def test_there_is_no_model_until_one_is_opened_or_training(tmp_path):
    s = SamplingSession()
    with pytest.raises(ValueError, match="no model is opened"):
        s.model_getter(True, None)
    with pytest.raises(ValueError, match="nothing is training yet"):
        s.model_getter(False, None)
    with pytest.raises(ValueError, match="does not exist"):
        s.open(str(tmp_path / "missing"))
    assert s.describe(True, False) == "No model opened yet."
    assert s.describe(False, False).startswith("Nothing is training yet")
    assert s.describe(False, True).startswith("Training is running")


def test_the_live_model_is_the_trainers_snapshot_and_a_loaded_one_is_reused(tmp_path):
    s = SamplingSession()
    trainer = SimpleNamespace(snapshot=lambda: "snapshot")
    assert s.model_getter(False, trainer)() == "snapshot"
    s.open(str(tmp_path))
    assert s.model_path == str(tmp_path) and s.describe(True, False) == str(tmp_path)
    loaded = SimpleNamespace(step=1234, config=RunConfig.from_preset("tiny"))
    assert s.model_loaded(loaded) is True and s.model_loaded(loaded) is False
    assert s.model_getter(True, None)() is loaded  # not loaded again
    assert s.describe(True, False) == f"{tmp_path}\nstep 1,234 · 16 px · RGB"
    s.open(str(tmp_path))  # opening again forgets the loaded copy
    assert s.loaded is None


def test_schedule_of_an_imported_model_is_its_own_betas():
    betas = tuple(np.linspace(1e-4, 0.03, 50).tolist())
    cfg = RunConfig(diffusion=DiffusionConfig(timesteps=50, betas=betas, schedule="linear"))
    sched, label = schedule_of(cfg)
    assert np.allclose(sched.betas, betas) and label == "explicit betas (closest: linear)"
    sched, label = schedule_of(RunConfig(diffusion=DiffusionConfig(schedule="cosine", timesteps=100)))
    assert label == "cosine" and np.allclose(sched.betas, get_betas("cosine", 100))
