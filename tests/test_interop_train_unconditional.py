"""A model trained by diffusers' own example opens, and samples exactly as diffusers samples it (issue 15).

``examples/unconditional_image_generation/train_unconditional.py`` builds a ``UNet2DModel`` with
every option at diffusers' default (norm_eps 1e-5, attention_head_dim 8, flip_sin_to_cos true,
freq_shift 0, downsample_padding 1, 32 groups) and the block layout DownBlock2D x4,
AttnDownBlock2D, DownBlock2D (mirrored going up); it trains with ``DDPMScheduler.add_noise``, an
MSE loss and AdamW, and saves a ``DDPMPipeline``. Here the same layout (narrower: widths
32, 32, 64, 64, 64, 64 at 32 px) is trained for a few steps by that loop, saved, opened by our
loader, and our DDIM chain is compared with diffusers' DDIMPipeline from the same x_T in float64.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

diffusers = pytest.importorskip("diffusers")

from ddpm_studio.config import RunConfig  # noqa: E402
from ddpm_studio.engine.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_studio.engine.unet import build_model  # noqa: E402
from ddpm_studio.artifacts.diffusers_format import load_diffusers_folder  # noqa: E402
from ddpm_studio.artifacts.loading import export_diffusers  # noqa: E402
from ddpm_studio.artifacts.loading import load_model  # noqa: E402
from ddpm_studio.artifacts.checkpoints import save_checkpoint  # noqa: E402
from ddpm_studio.artifacts.loaded import ready_for_sampling  # noqa: E402

F64 = torch.float64
SIZE = 32
# train_unconditional.py's layout; every other UNet2DModel option keeps diffusers' default.
LAYOUT = dict(
    sample_size=SIZE, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(32, 32, 64, 64, 64, 64),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
)


def _trained_pipeline(folder, seed: int, **scheduler) -> "diffusers.UNet2DModel":
    """Train LAYOUT for a few steps with the example's loop, save a DDPMPipeline, return the U-Net."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**LAYOUT)
    noise_scheduler = diffusers.DDPMScheduler(**scheduler)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    g = torch.Generator().manual_seed(seed)
    # Smooth random "images" in [-1, 1] (blurred noise), so the network has something to fit.
    clean = F.avg_pool2d(torch.rand(4, 3, SIZE + 3, SIZE + 3, generator=g) * 2 - 1, 4, stride=1)
    unet.train()
    for _ in range(3):
        noise = torch.randn(clean.shape, generator=g)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],), generator=g)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        output = unet(noisy, timesteps).sample
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(clean, noise, timesteps)
        else:
            target = noise
        loss = F.mse_loss(output.float(), target.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    unet.eval()
    diffusers.DDPMPipeline(unet=unet, scheduler=noise_scheduler).save_pretrained(folder)
    return unet


def _custom_betas(T: int) -> list[float]:
    """A schedule that is none of the named ones: linear in sqrt(beta) with a bump."""
    u = np.linspace(0, 1, T)
    return [float(b) for b in (1e-4 + 0.03 * u**1.5 + 0.002 * np.sin(6 * u) ** 2)]


CASES = {
    # the example's defaults: linear betas, epsilon, clip_sample, leading spacing
    "epsilon": dict(num_train_timesteps=1000, beta_schedule="linear"),
    # v-prediction, trailing spacing, no clipping
    "v_prediction": dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                         timestep_spacing="trailing", clip_sample=False),
    # an explicit trained_betas list at T=400, leading spacing with steps_offset 1, clip range 1.5
    "trained_betas": dict(num_train_timesteps=400, trained_betas=_custom_betas(400), steps_offset=1,
                          clip_sample_range=1.5),
}


@pytest.fixture(scope="module", params=list(CASES))
def trained(request, tmp_path_factory):
    name = request.param
    folder = tmp_path_factory.mktemp(f"train-unconditional-{name}") / "pipeline"
    unet = _trained_pipeline(folder, seed=len(name), **CASES[name])
    return name, folder, unet


def _ours_ddim(loaded, x_T: torch.Tensor, steps: int) -> torch.Tensor:
    """Our DDIM chain, through the same dispatch the app uses (SamplingConfig -> engine), in float64."""
    model = build_model(loaded.config.model).to(F64)
    model.load_state_dict({k: v.to(F64) for k, v in loaded.model.state_dict().items()})
    model.eval()
    sampling = dataclasses.replace(loaded.config.sampling, sampler="ddim", steps=steps, eta=0.0)
    last = None
    for last in loaded.diffusion.sample_progressive(model, x_T.shape, sampling, noise=x_T, dtype=F64):
        pass
    return last.x_t


def test_train_unconditional_model_opens_with_every_default(trained):
    _, folder, unet = trained
    loaded = load_diffusers_folder(folder, device="cpu")
    m = loaded.config.model
    assert (m.base_channels, m.channel_mult, m.num_res_blocks, m.attention_resolutions) == (32, (1, 1, 2, 2, 2, 2), 2,
                                                                                            (2,))
    # diffusers' defaults, carried by the config itself (no keyword side channel)
    assert (m.norm_eps, m.norm_groups, m.num_heads, m.flip_sin_to_cos, m.freq_shift, m.downsample_padding) == \
        (1e-5, 32, 8, True, 0.0, 1)
    assert loaded.model.spec == build_model(m).spec
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3), dtype=F64)
    t = torch.tensor([3, loaded.diffusion.T - 1])
    unet64 = unet.to(F64)
    model = build_model(m).to(F64)
    model.load_state_dict({k: v.to(F64) for k, v in loaded.model.state_dict().items()})
    with torch.no_grad():
        theirs_out = unet64(x, t).sample
        ours_out = model(x, t)
    unet.to(torch.float32)
    assert theirs_out.abs().max() > 0.1
    assert (ours_out - theirs_out).abs().max().item() < 1e-10


def test_ddim_chain_equals_diffusers_ddim_pipeline(trained):
    name, folder, unet = trained
    loaded = load_diffusers_folder(folder, device="cpu")
    s, d = loaded.config.sampling, loaded.config.diffusion
    if name == "epsilon":
        assert (s.spacing, s.steps_offset, s.clip_denoised, s.clip_range, d.prediction, d.betas) == \
            ("leading", 0, True, 1.0, "epsilon", None)
    elif name == "v_prediction":
        assert (s.spacing, s.clip_denoised, d.prediction, d.schedule) == ("trailing", False, "v", "cosine")
        assert d.betas is None
    else:
        assert (s.spacing, s.steps_offset, s.clip_range, d.timesteps) == ("leading", 1, 1.5, 400)
        np.testing.assert_array_equal(np.array(d.betas), np.array(CASES[name]["trained_betas"]))
    steps = 10
    seed = 21
    # diffusers' DDIMPipeline draws x_T with randn_tensor(shape, generator, dtype=unet.dtype): the same
    # numbers as torch.randn with that generator and dtype.
    x_T = torch.randn((2, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed), dtype=F64)
    ours = _ours_ddim(loaded, x_T, steps)

    unet64 = unet.to(F64)
    try:
        pipe = diffusers.DDIMPipeline.from_pretrained(folder)  # converts the DDPM scheduler config to DDIM's
        pipe.unet = unet64
        pipe.set_progress_bar_config(disable=True)
        image = pipe(batch_size=2, generator=torch.Generator().manual_seed(seed), eta=0.0, num_inference_steps=steps,
                     use_clipped_model_output=True, output_type="pt").images
        # diffusers' step loop itself, unclamped, from our x_T
        sched = diffusers.DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
        sched.set_timesteps(steps)
        assert [int(t) for t in sched.timesteps] == loaded.diffusion.ddim_timesteps(steps, s.spacing, s.steps_offset)
        x = x_T.clone()
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(unet64(x, t).sample, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    finally:
        unet.to(torch.float32)
    assert x.std() > 0.05  # an image, not a constant
    assert (ours - x).abs().max().item() < 1e-5
    assert (((ours / 2 + 0.5).clamp(0, 1)) - image).abs().max().item() < 1e-5


def test_imported_config_alone_rebuilds_the_model_and_the_process(trained, tmp_path):
    """config.json -> build_model + GaussianDiffusion.from_config: the same network and betas; a
    checkpoint written with that config opens through the ordinary run-folder path."""
    _, folder, _ = trained
    loaded = load_diffusers_folder(folder, device="cpu")
    cfg = RunConfig.from_json(loaded.config.to_json())  # through JSON: nothing rides along outside the config
    assert cfg.to_dict() == loaded.config.to_dict()
    rebuilt = build_model(cfg.model)
    rebuilt.load_state_dict(loaded.model.state_dict())
    ready_for_sampling(rebuilt, torch.device("cpu"))  # as every loader prepares a network (channels_last on a CPU)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    np.testing.assert_array_equal(diffusion.schedule.betas, loaded.diffusion.schedule.betas)
    theirs = diffusers.DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    np.testing.assert_allclose(diffusion.schedule.alphas_cumprod, theirs.alphas_cumprod.double().numpy(), rtol=2e-6,
                               atol=1e-12)  # diffusers keeps alpha-bar in float32
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0, diffusion.T - 1])
    with torch.no_grad():
        assert torch.equal(rebuilt(x, t), loaded.model(x, t))
    weights = loaded.model.state_dict()
    save_checkpoint(tmp_path / "run", 1, cfg, weights, weights, {"format_version": 1})
    again = load_model(tmp_path / "run", device="cpu")
    assert again.config.to_dict() == cfg.to_dict()
    np.testing.assert_array_equal(again.diffusion.schedule.betas, diffusion.schedule.betas)
    with torch.no_grad():
        assert torch.equal(again.model(x, t), loaded.model(x, t))


def test_export_round_trips_through_diffusers(trained, tmp_path):
    _, folder, unet = trained
    loaded = load_diffusers_folder(folder, device="cpu")
    out = export_diffusers(loaded, tmp_path / "export")
    original = json.loads((folder / "unet" / "config.json").read_text())
    written = json.loads((out / "unet" / "config.json").read_text())
    for key, value in original.items():
        if not key.startswith("_"):
            assert _plain(written[key]) == _plain(value), key
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    assert pipe.unet.state_dict().keys() == unet.state_dict().keys()
    assert all(torch.equal(pipe.unet.state_dict()[k], v) for k, v in unet.state_dict().items())
    theirs = diffusers.DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    np.testing.assert_allclose(pipe.scheduler.alphas_cumprod.numpy(), theirs.alphas_cumprod.numpy(), rtol=1e-6)
    for key in ("prediction_type", "clip_sample", "clip_sample_range", "timestep_spacing", "steps_offset",
                "thresholding"):
        assert pipe.scheduler.config[key] == theirs.config[key], key
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([5, loaded.diffusion.T - 1])
    # diffusers reads our export exactly as it reads the original folder. (Against the in-memory unet the output
    # can differ by float rounding: some safetensors versions hand out tensors at addresses that are not 64-byte
    # aligned, and oneDNN's sums then round differently.)
    original_unet = diffusers.UNet2DModel.from_pretrained(folder, subfolder="unet")
    with torch.no_grad():
        assert torch.equal(pipe.unet(x, t).sample, original_unet(x, t).sample)
        torch.testing.assert_close(pipe.unet(x, t).sample, unet(x, t).sample, rtol=0, atol=1e-5)
    # ... and our import of our export is the model we started from
    back = load_diffusers_folder(out, device="cpu")
    assert back.config.model == loaded.config.model
    assert back.config.sampling == loaded.config.sampling
    assert back.config.diffusion == loaded.config.diffusion


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("sampler,order", [("dpmpp-2m", 2), ("dpmpp-3m", 3)])
def test_dpm_solver_chain_equals_diffusers_dpm_solver(trained, sampler, order):
    """Our DPM-Solver++ on the imported model equals diffusers' DPMSolverMultistepScheduler built
    from the same scheduler folder (dpmsolver++, trailing spacing, lower-order final steps, the
    last step onto x_0), from the same x_T, for each trained case's prediction type and betas."""
    name, folder, unet = trained
    loaded = load_diffusers_folder(folder, device="cpu")
    steps = 10
    x_T = torch.randn((2, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(31), dtype=F64)
    model = build_model(loaded.config.model).to(F64)
    model.load_state_dict({k: v.to(F64) for k, v in loaded.model.state_dict().items()})
    model.eval()
    sampling = dataclasses.replace(loaded.config.sampling, sampler=sampler, steps=steps, spacing="trailing",
                                   clip_denoised=False, dynamic_threshold=None)
    ours = list(loaded.diffusion.sample_progressive(model, x_T.shape, sampling, noise=x_T, dtype=F64))
    sched = diffusers.DPMSolverMultistepScheduler.from_pretrained(
        folder, subfolder="scheduler", algorithm_type="dpmsolver++", solver_order=order, timestep_spacing="trailing",
        lower_order_final=True, final_sigmas_type="zero", thresholding=False)
    sched.set_timesteps(steps)
    assert [int(t) for t in sched.timesteps] == [r.t for r in ours]
    unet64 = unet.to(F64)
    try:
        x = x_T.clone()
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(unet64(x, t).sample, t, x).prev_sample
    finally:
        unet.to(torch.float32)
    assert x.std() > 0.05
    # diffusers keeps alpha-bar in float32 (relative error ~1e-7), which is all that separates the
    # chains; a model trained 3 steps and left unclipped reaches |x| ~ 250, so compare relative to it
    assert (ours[-1].x_t - x).abs().max().item() < 1e-5 * max(1.0, x.abs().max().item())
