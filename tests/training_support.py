"""Tiny configs and image sets shared by the training, sampling and CLI tests (not a test file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_studio.config import RunConfig
from ddpm_studio.data import ImageSet


def tiny_images(n: int = 24, size: int = 8, channels: int = 3, seed: int = 0) -> ImageSet:
    """Random uint8 images: enough for the trainer's plumbing, no decoding involved."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    return ImageSet(images=images, paths=[f"img{i}.png" for i in range(n)], channels=channels,
                    image_size=size, source="test images", fingerprint=f"test-{n}-{size}-{channels}-{seed}")


def tiny_config(steps: int = 8, dropout: float = 0.0, **train) -> RunConfig:
    """A 8 px, base-8 U-Net with T=20: a training step takes a few milliseconds on CPU."""
    t = dict(steps=steps, batch_size=4, log_every=1, preview_every=0, checkpoint_every=0,
             checkpoint_minutes=0.0, device="cpu", warmup_steps=3, lr=1e-3)
    t.update(train)
    return RunConfig.from_preset(
        "tiny",
        data={"image_size": 8},
        model={"base_channels": 8, "channel_mult": (1, 2), "attention_resolutions": (4,), "dropout": dropout},
        diffusion={"timesteps": 20},
        train=t,
    )


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread; on a busy machine two threads can be 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_trained_run(tmp_path_factory, name: str = "run"):
    """A run folder of the tiny config trained for 2 steps on grayscale test images (one thread)."""
    from ddpm_studio.training.trainer import Trainer

    run = tmp_path_factory.mktemp(name)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(tiny_config(steps=2), run, images=tiny_images(channels=1)).run()
    finally:
        torch.set_num_threads(before)
    return run
