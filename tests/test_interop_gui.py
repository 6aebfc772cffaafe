"""The studio window opens a diffusers-format model folder and generates from it (issue 7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("PySide6")

from PySide6.QtCore import Qt  # noqa: E402

from ddpm_studio.config import RunConfig  # noqa: E402
from ddpm_studio.engine.unet import build_model  # noqa: E402
from ddpm_studio.artifacts.diffusers_format import load_diffusers_folder  # noqa: E402
from ddpm_studio.artifacts.loading import export_diffusers  # noqa: E402
from ddpm_studio.sampling.service import sample_images  # noqa: E402
from ddpm_studio.artifacts.checkpoints import save_checkpoint  # noqa: E402




@pytest.fixture
def diffusers_folder(tmp_path):
    """A diffusers DDPMPipeline folder (written by our exporter; no diffusers needed) of a random 16 px net."""
    cfg = RunConfig.from_preset("tiny", data={"image_size": 16},
                                model={"base_channels": 16, "channel_mult": (1, 2), "attention_resolutions": (8,)},
                                diffusion={"timesteps": 100})
    model = build_model(cfg.model)
    g = torch.Generator().manual_seed(3)
    state = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "run", 1, cfg, state, state, {"format_version": 1})
    return export_diffusers(tmp_path / "run", tmp_path / "pipeline")


def test_window_opens_a_diffusers_folder_and_generates(qtbot, window, diffusers_folder):
    errors = []
    window.state.error.connect(lambda message, details: errors.append(message))
    sp = window.sampling_panel
    sp._ask_model_path = lambda: str(diffusers_folder)  # the folder dialog's answer
    window.open_model_action.trigger()  # File > Open Model...
    assert window.tabs.currentWidget() is sp and sp.model_path == str(diffusers_folder)
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("ddim"))
    sp.steps_spin.setValue(4)
    sp.num_spin.setValue(2)
    sp.seed_spin.setValue(5)
    cfg = sp.sampling_config()
    with qtbot.waitSignal(sp.generation_finished, timeout=60_000) as blocker:
        qtbot.mouseClick(sp.generate_button, Qt.MouseButton.LeftButton)
    result = blocker.args[0]
    assert errors == [] and result is not None
    assert result.images.shape == (2, 16, 16, 3) and len(sp.frames) == 4
    # The window's images are the service's images for the same folder and settings.
    expected = sample_images(load_diffusers_folder(diffusers_folder, device="cpu"), cfg)
    assert expected.std() > 1.0
    # (one uint8 level of slack: the worker thread may split convolutions over other thread counts)
    assert np.abs(result.images.astype(int) - expected.astype(int)).max() <= 1
    qtbot.waitUntil(lambda: not sp.is_running(), timeout=10_000)


def test_imported_betas_and_sampling_settings_reach_the_plot_and_the_chain(qtbot, window, diffusers_folder):
    """Issue 15: an imported model's explicit betas are what the Sampling panel plots, and its
    scheduler's spacing and clip range (no widgets for them) are what the chain uses."""
    import dataclasses
    import json

    sched_path = diffusers_folder / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_path.read_text())
    betas = list(np.linspace(3e-4, 0.05, 100) ** 1.1)
    sched.update(trained_betas=betas, timestep_spacing="leading", steps_offset=1, clip_sample=True,
                 clip_sample_range=0.6)
    sched_path.write_text(json.dumps(sched))
    errors = []
    window.state.error.connect(lambda message, details: errors.append(message))
    sp = window.sampling_panel
    sp._ask_model_path = lambda: str(diffusers_folder)
    window.open_model_action.trigger()
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("ddim"))
    sp.steps_spin.setValue(4)
    sp.num_spin.setValue(2)
    sp.clip_check.setChecked(True)
    with qtbot.waitSignal(sp.generation_finished, timeout=60_000) as blocker:
        qtbot.mouseClick(sp.generate_button, Qt.MouseButton.LeftButton)
    result = blocker.args[0]
    assert errors == [] and result is not None
    np.testing.assert_allclose(sp.schedule_plot._betas, betas, rtol=1e-12)
    assert "explicit betas" in sp.schedule_plot.label
    assert [f.t for f in sp.frames][0] == 99  # the panel's trailing spacing for the first Generate...
    assert sp.spacing_combo.currentData() == "leading"  # ...then the chooser shows the model's own
    with qtbot.waitSignal(sp.generation_finished, timeout=60_000) as blocker:
        qtbot.mouseClick(sp.generate_button, Qt.MouseButton.LeftButton)
    result = blocker.args[0]
    assert [f.t for f in sp.frames] == [76, 51, 26, 1]  # leading spacing + the model's steps_offset 1
    loaded = load_diffusers_folder(diffusers_folder, device="cpu")
    assert (loaded.config.sampling.spacing, loaded.config.sampling.clip_range) == ("leading", 0.6)
    expected = sample_images(loaded, dataclasses.replace(sp.sampling_config(), spacing="leading", steps_offset=1,
                                                         clip_range=0.6))
    assert np.abs(result.images.astype(int) - expected.astype(int)).max() <= 1
    assert result.images.max() <= round((0.6 + 1) * 127.5) + 1  # x_0 clipped to [-0.6, 0.6] at the last step
    qtbot.waitUntil(lambda: not sp.is_running(), timeout=10_000)
