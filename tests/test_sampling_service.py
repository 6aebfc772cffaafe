"""The sampling service: open a run or a checkpoint, generate step by step, refuse the rest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddpm_studio.config import SamplingConfig
from ddpm_studio.artifacts.checkpoints import CheckpointError, latest_checkpoint
from ddpm_studio.artifacts.loading import load_model
from ddpm_studio.sampling.service import generate, sample_images, to_uint8
from training_support import one_thread, tiny_trained_run  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return tiny_trained_run(tmp_path_factory)


def test_a_model_loaded_on_a_cpu_is_channels_last_and_computes_what_the_plain_one_does(trained_run):
    """Loaders put conv weights in channels_last on a CPU (faster chains); the network is the same function."""
    from ddpm_studio.engine.unet import build_model

    loaded = load_model(trained_run, device="cpu")
    convs = [m for m in loaded.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    # (a 1x1 kernel or one input channel is laid out the same either way)
    assert all(not c.weight.is_contiguous() for c in convs if c.kernel_size == (3, 3) and c.in_channels > 1)
    plain = build_model(loaded.config.model).eval()
    plain.load_state_dict(loaded.model.state_dict())
    x = torch.randn(3, *loaded.image_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 500, loaded.diffusion.T - 1])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x, t), plain(x, t), rtol=1e-4, atol=1e-5)


def test_load_run_and_checkpoint_file_give_the_same_ema_model(trained_run):
    a = load_model(trained_run, device="cpu")
    b = load_model(latest_checkpoint(trained_run), device="cpu")
    assert a.step == b.step == 2 and a.image_shape == (1, 8, 8)
    assert not a.model.training
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_generate_yields_every_step_and_is_seeded(trained_run):
    loaded = load_model(trained_run, device="cpu")
    sampling = SamplingConfig(sampler="ddim", steps=5, num_images=3, seed=7)
    steps = list(generate(loaded, sampling))
    assert [s.index for s in steps] == [0, 1, 2, 3, 4] and steps[-1].total == 5
    assert steps[0].t == loaded.diffusion.T - 1 > steps[-1].t  # trailing spacing: from pure noise
    assert steps[-1].x_t.shape == (3, 1, 8, 8)
    again = sample_images(loaded, sampling)
    other = sample_images(loaded, SamplingConfig(sampler="ddim", steps=5, num_images=3, seed=8))
    assert again.shape == (3, 8, 8, 1) and again.dtype == np.uint8
    assert np.array_equal(again, to_uint8(steps[-1].x_t))
    assert not np.array_equal(again, other)
    ddpm = list(generate(loaded, SamplingConfig(sampler="ddpm", num_images=2)))
    assert len(ddpm) == 20  # all T steps


def test_generate_stops_when_asked(trained_run):
    loaded = load_model(trained_run, device="cpu")
    seen = []
    for step in generate(loaded, SamplingConfig(sampler="ddpm", num_images=1), should_stop=lambda: len(seen) >= 3):
        seen.append(step)
    assert len(seen) == 3


def test_to_uint8_maps_the_range():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0, -3.0]).reshape(1, 1, 1, 5)
    assert to_uint8(x).reshape(-1).tolist() == [0, 128, 255, 255, 0]
    assert to_uint8(torch.zeros(2, 3, 4, 5)).shape == (2, 4, 5, 3)


def test_refuses_what_it_cannot_open(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing", device="cpu")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match="neither a DDPM Studio run folder"):
        load_model(tmp_path / "plain", device="cpu")
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="has no checkpoints"):
        load_model(tmp_path / "empty_run", device="cpu")
    diff = tmp_path / "diffusers"
    diff.mkdir()
    (diff / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    with pytest.raises(CheckpointError, match="diffusers"):
        load_model(diff, device="cpu")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"\.safetensors"):
        load_model(tmp_path / "notes.txt", device="cpu")
