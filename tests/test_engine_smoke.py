"""Smoke test: the engine's pieces fit together (build, train a step, sample, EMA, devices)."""

import threading

import pytest
import torch

from ddpm_studio.config import RunConfig, SamplingConfig
from ddpm_studio.engine.devices import autocast, describe_device, select_device
from ddpm_studio.engine.diffusion import GaussianDiffusion
from ddpm_studio.engine.ema import EMA
from ddpm_studio.engine.types import StepResult
from ddpm_studio.engine.unet import build_model, count_parameters





def test_train_step_sample_and_ema_fit_together():
    torch.manual_seed(0)
    cfg = RunConfig.from_preset("tiny", data={"image_size": 8}, diffusion={"timesteps": 20})
    model = build_model(cfg.model)
    assert count_parameters(model) > 0
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    ema = EMA(model, decay=0.9)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    g = torch.Generator().manual_seed(0)
    loss, t = diffusion.training_losses(model, x0, generator=g)
    assert loss.shape == (4,) and t.shape == (4,) and torch.isfinite(loss).all()
    loss.mean().backward()
    opt.step()
    ema.update(model, step=0)
    steps = list(diffusion.sample_progressive(ema.module, (2, 3, 8, 8), SamplingConfig(sampler="ddim", steps=5)))
    assert [s.t for s in steps] == [19, 15, 11, 7, 3]  # trailing spacing (the default): from t = T-1
    assert all(isinstance(s, StepResult) and s.x_t.shape == (2, 3, 8, 8) for s in steps)
    assert steps[-1].index == 4 and steps[-1].total == 5


def test_stopped_chain_ends_without_error():
    cfg = RunConfig.from_preset("tiny", data={"image_size": 8}, diffusion={"timesteps": 50})
    model = build_model(cfg.model).eval()
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    stop = threading.Event()
    seen = []
    for step in diffusion.p_sample_loop_progressive(model, (1, 3, 8, 8), should_stop=stop.is_set,
                                                    generator=torch.Generator().manual_seed(0)):
        seen.append(step.t)
        stop.set()
    assert seen == [49]


def test_devices_cpu_and_clear_errors():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    assert describe_device("cpu").startswith("CPU (")
    with autocast("cpu", "bf16"):
        assert torch.ones(2).dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        autocast("cpu", "fp8")
    with pytest.raises(ValueError, match="device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")
