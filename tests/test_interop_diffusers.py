"""Oracle tests against diffusers itself: the same weights give the same network and the same chains.

A randomly initialised diffusers UNet2DModel (the paper's CIFAR-10 configuration, and a small
one) is saved with ``save_pretrained``, imported without diffusers' help, and compared output for
output; DDIM chains are compared with diffusers' DDIMPipeline; our export is opened by
``DDPMPipeline.from_pretrained`` and its ancestral chain compared with ours.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

diffusers = pytest.importorskip("diffusers")

from ddpm_studio.config import RunConfig  # noqa: E402
from ddpm_studio.engine.unet import build_model, count_parameters  # noqa: E402
from ddpm_studio.interop.diffusers_format import export_diffusers, load_diffusers_folder  # noqa: E402
from ddpm_studio.sampling.service import generate, load_model  # noqa: E402
from ddpm_studio.training.checkpoints import save_checkpoint  # noqa: E402




# The paper's CIFAR-10 network (google/ddpm-cifar10-32's config.json).
PAPER_CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=32, norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, dropout=0.1,
    attention_head_dim=None, act_fn="silu", time_embedding_type="positional", mid_block_scale_factor=1,
)
# Small, and different from the paper wherever diffusers allows: 4 heads, sin/cos flipped, no
# frequency shift, symmetric down-sampling padding, 8 groups, attention only at the lower level.
SMALL = dict(
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8, norm_eps=1e-6, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, dropout=0.0,
    attention_head_dim=16,
)


def _save_pipeline(folder, unet, **scheduler):
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(**scheduler)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def paper_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(**PAPER_CIFAR10).eval()


@pytest.fixture(scope="module")
def small_unet():
    torch.manual_seed(1)
    return diffusers.UNet2DModel(**SMALL).eval()


def test_paper_cifar10_unet_imports_with_equal_outputs(paper_unet, tmp_path):
    folder = _save_pipeline(tmp_path / "ddpm-cifar10", paper_unet, beta_schedule="linear", variance_type="fixed_large")
    loaded = load_model(folder, device="cpu")  # the sampling service's hook, as the CLI and GUI use it
    m, d = loaded.config.model, loaded.config.diffusion
    assert (m.image_size, m.base_channels, m.channel_mult, m.num_res_blocks, m.attention_resolutions, m.dropout,
            m.num_heads) == (32, 128, (1, 2, 2, 2), 2, (16,), 0.1, 1)
    spec = loaded.model.spec
    assert (spec.norm_groups, spec.downsample_padding, spec.flip_sin_to_cos, spec.freq_shift) == (32, 0, False, 1.0)
    assert (d.schedule, d.timesteps, d.prediction) == ("linear", 1000, "epsilon")
    assert loaded.config.sampling.variance == "fixed_large"
    assert count_parameters(loaded.model) == count_parameters(paper_unet) == 35_746_307  # the paper's 35.7M

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    t = torch.tensor([0, 999])
    with torch.no_grad():
        ours = loaded.model(x, t)
        theirs = paper_unet(x, t).sample
    assert theirs.abs().max() > 0.1  # a random network with a real output, not zeros
    assert (ours - theirs).abs().max().item() < 1e-4

    # Export: the same configuration and the same weights, bit for bit, as the original folder
    # (that diffusers' DDPMPipeline opens our exports is checked on the small model below).
    out = export_diffusers(loaded, tmp_path / "export")
    written = json.loads((out / "unet" / "config.json").read_text())
    for key in ("block_out_channels", "down_block_types", "up_block_types", "attention_head_dim", "norm_num_groups",
                "downsample_padding", "flip_sin_to_cos", "freq_shift", "layers_per_block", "dropout", "norm_eps",
                "sample_size", "in_channels", "out_channels", "mid_block_type", "time_embedding_type", "act_fn",
                "resnet_time_scale_shift", "add_attention", "center_input_sample"):
        assert _plain(written[key]) == _plain(paper_unet.config[key]), key
    original, exported = paper_unet.state_dict(), load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


SMALL_CASES = [
    # (scheduler settings, explicit betas expected)
    (dict(beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", clip_sample=True), False),
    (dict(beta_schedule="linear", num_train_timesteps=500, prediction_type="sample", clip_sample=True), True),
    (dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
          clip_sample=False), True),
]


@pytest.mark.parametrize("scheduler,explicit", SMALL_CASES, ids=["cosine-eps", "linear500-x0", "scaledlinear-v"])
def test_small_unet_ddim_chain_matches_diffusers_pipeline(small_unet, tmp_path, scheduler, explicit):
    folder = _save_pipeline(tmp_path / "small", small_unet, **scheduler)
    loaded = load_diffusers_folder(folder, device="cpu")
    assert loaded.config.model.num_heads == 4 and loaded.model.spec.norm_groups == 8
    assert any("named schedules" in n for n in loaded.notes) == explicit

    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0, 250, 499])
    with torch.no_grad():
        assert (loaded.model(x, t) - small_unet(x, t).sample).abs().max().item() < 1e-4

    # DDIM, 20 steps, eta 0, from the same seed: our service vs diffusers' DDIMPipeline. diffusers'
    # use_clipped_model_output=True is what our DDIM does when clipping (eps from the clipped x_0).
    sampling = loaded.config.sampling
    sampling.sampler, sampling.steps, sampling.eta, sampling.num_images, sampling.seed = "ddim", 20, 0.0, 3, 11
    sampling.spacing = "leading"  # DDIMScheduler's default timestep_spacing
    assert sampling.clip_denoised == scheduler["clip_sample"]
    steps = list(generate(loaded, sampling))
    assert len(steps) == 20
    ours = ((steps[-1].x_t + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()  # (N, H, W, C) in [0, 1]

    ddim = diffusers.DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    pipe = diffusers.DDIMPipeline(unet=small_unet, scheduler=ddim)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=3, generator=torch.Generator().manual_seed(11), eta=0.0, num_inference_steps=20,
                  use_clipped_model_output=True, output_type="np").images
    assert theirs.shape == ours.shape == (3, 16, 16, 3)
    assert theirs.std() > 0.05  # images, not a constant
    assert np.abs(ours - theirs).max() < 1e-3


@pytest.mark.parametrize("schedule,T,prediction,variance", [("linear", 20, "epsilon", "fixed_small"),
                                                             ("quadratic", 20, "v", "fixed_large")])
def test_export_opens_in_ddpm_pipeline_with_equal_outputs_and_chain(tmp_path, schedule, T, prediction, variance):
    cfg = RunConfig.from_preset("tiny", data={"image_size": 16},
                                model={"base_channels": 16, "channel_mult": (1, 2), "attention_resolutions": (8,)},
                                diffusion={"schedule": schedule, "timesteps": T, "prediction": prediction})
    cfg.sampling.variance = variance
    model = build_model(cfg.model)
    g = torch.Generator().manual_seed(2)
    ema = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "run", 3, cfg, ema, ema, {"format_version": 1})
    out = export_diffusers(tmp_path / "run", tmp_path / "export")

    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.unet, diffusers.UNet2DModel) and isinstance(pipe.scheduler, diffusers.DDPMScheduler)
    loaded = load_model(tmp_path / "run", device="cpu")
    np.testing.assert_allclose(pipe.scheduler.betas.double().numpy(), loaded.diffusion.schedule.betas, rtol=1e-6)
    assert pipe.scheduler.config.variance_type == variance
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([1, T - 1])
    with torch.no_grad():
        theirs = pipe.unet(x, t).sample
        ours = loaded.model(x, t)
    assert theirs.abs().max() > 0.1
    assert (ours - theirs).abs().max().item() < 1e-4
    # Ancestral sampling over all T steps: diffusers draws x_T, then one noise per step t > 0, as we do.
    sampling = loaded.config.sampling
    sampling.sampler, sampling.num_images, sampling.seed = "ddpm", 2, 9
    last = list(generate(loaded, sampling))[-1]
    ours_img = ((last.x_t + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    theirs_img = pipe(batch_size=2, generator=torch.Generator().manual_seed(9), num_inference_steps=T, output_type="np").images
    assert theirs_img.std() > 0.05
    assert np.abs(ours_img - theirs_img).max() < 1e-3

