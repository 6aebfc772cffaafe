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
from ddpm_studio.artifacts.diffusers_format import load_diffusers_folder  # noqa: E402
from ddpm_studio.artifacts.loading import export_diffusers  # noqa: E402
from ddpm_studio.artifacts.loading import load_model  # noqa: E402
from ddpm_studio.sampling.service import generate  # noqa: E402
from ddpm_studio.artifacts.checkpoints import save_checkpoint  # noqa: E402




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
    theirs_img = pipe(batch_size=2, generator=torch.Generator().manual_seed(9), num_inference_steps=T,
                      output_type="np").images
    assert theirs_img.std() > 0.05
    assert np.abs(ours_img - theirs_img).max() < 1e-3



# -- every UNet2DModel option that is a number or a switch (issue 15) ---------------------------------

BASE_OPTIONS = dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                    down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D",
                                                                                             "AttnUpBlock2D"),
                    norm_num_groups=8)
OPTIONS = [
    dict(),  # diffusers' own defaults for everything not in BASE_OPTIONS (norm_eps 1e-5, 8-channel heads, ...)
    dict(norm_eps=1e-3),
    dict(attention_head_dim=16),  # 2 heads at width 32, 4 at 64: not one head count for the network
    dict(attention_head_dim=None),
    dict(attn_norm_num_groups=4),
    dict(add_attention=False),
    dict(mid_block_scale_factor=1.414),
    dict(time_embedding_dim=96),
    dict(center_input_sample=True),
    dict(act_fn="mish"), dict(act_fn="gelu"), dict(act_fn="relu"), dict(act_fn="swish"),
    dict(resnet_time_scale_shift="scale_shift"),
    dict(resnet_time_scale_shift="scale_shift", attn_norm_num_groups=8),
    dict(downsample_padding=0, flip_sin_to_cos=False, freq_shift=1),
    dict(dropout=0.2),
    dict(down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")),  # middle only
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_every_unet_option_is_honoured_and_written_back(tmp_path, options):
    torch.manual_seed(3)
    theirs = diffusers.UNet2DModel(**{**BASE_OPTIONS, **options}).eval().to(torch.float64)
    with torch.no_grad():  # diffusers' init leaves no output layer at zero, but make every weight matter
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    theirs.to(torch.float32).save_pretrained(tmp_path / "unet")
    loaded = load_diffusers_folder(tmp_path / "unet", device="cpu")
    # The config alone rebuilds it: no keyword side channel.
    ours = build_model(loaded.config.model)
    ours.load_state_dict(loaded.model.state_dict())
    ours.to(torch.float64).eval()
    theirs.to(torch.float64)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    t = torch.tensor([7, 999])
    with torch.no_grad():
        a, b = ours(x, t), theirs(x, t).sample
    assert b.abs().max() > 0.1
    assert (a - b).abs().max().item() < 1e-10
    # Training sees the same function: the same gradients for every weight (in-place activations included).
    (ours(x, t) ** 2).mean().backward()
    (theirs(x, t).sample ** 2).mean().backward()
    grads = dict(theirs.named_parameters())
    scale = max(p.grad.abs().max().item() for p in grads.values())
    worst = max((p.grad - grads[k].grad).abs().max().item() for k, p in ours.named_parameters())
    assert scale > 1e-3 and worst < 1e-10 * scale
    if "dropout" in options:
        assert loaded.config.model.dropout == options["dropout"]
    # Export writes every option back: diffusers builds the same network from our config.json.
    out = export_diffusers(loaded, tmp_path / "export")
    written = json.loads((out / "unet" / "config.json").read_text())
    for key, value in theirs.config.items():
        if key.startswith("_") or key == "act_fn":
            continue
        assert _plain(written[key]) == _plain(value), key
    assert written["act_fn"] == ("silu" if options.get("act_fn", "silu") == "swish" else options.get("act_fn", "silu"))
    again = diffusers.UNet2DModel.from_pretrained(out / "unet").to(torch.float64).eval()
    with torch.no_grad():
        assert (again(x, t).sample - b).abs().max().item() == 0.0


# -- scheduler settings, step for step (issue 15) ------------------------------------------------------


def _in_float64(scheduler):
    """diffusers keeps alpha-bar in float32 (relative error ~1e-7, amplified ~100x by
    eps = (x - ...) / sqrt(1 - alpha-bar) at small t); the step logic is compared with alpha-bar
    recomputed in float64 from its own (float32) betas."""
    scheduler.betas = scheduler.betas.double()
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    return scheduler


def _ours_from_scheduler(scheduler):
    """Our process and sampling settings for a diffusers scheduler, through the importer's mapping."""
    from ddpm_studio.config import SamplingConfig
    from ddpm_studio.engine.diffusion import GaussianDiffusion
    from ddpm_studio.artifacts.diffusers_format import diffusion_from_scheduler_config

    cfg = {"_class_name": type(scheduler).__name__, **dict(scheduler.config)}
    diffusion_cfg, sampling, notes = diffusion_from_scheduler_config(json.loads(json.dumps(cfg)), "test")
    return GaussianDiffusion.from_config(diffusion_cfg), SamplingConfig(**sampling), notes


SCHEDULER_SETTINGS = [
    dict(clip_sample_range=0.5),
    dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.6),
    dict(prediction_type="sample", clip_sample=False),
    dict(prediction_type="v_prediction", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(timestep_spacing="trailing"),
    dict(steps_offset=1),
    dict(trained_betas=list(np.linspace(2e-4, 0.03, 1000))),
]


@pytest.mark.parametrize("settings", SCHEDULER_SETTINGS, ids=lambda s: ",".join(f"{k}" for k in s))
def test_ddim_scheduler_settings_match_diffusers_step_for_step(settings):
    theirs = diffusers.DDIMScheduler(**settings)
    diffusion, sampling, _ = _ours_from_scheduler(theirs)
    _in_float64(theirs)
    steps = 20
    theirs.set_timesteps(steps)
    ts = diffusion.ddim_timesteps(steps, sampling.spacing, sampling.steps_offset)
    assert [int(t) for t in theirs.timesteps] == ts
    g = torch.Generator().manual_seed(0)
    for i, t in enumerate(ts):
        x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) * 1.5
        out = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) * 2.0  # large: clipping and thresholding act
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        ours, ours_x0 = diffusion.ddim_step(out, x, t, t_prev, eta=0.0, clip_denoised=sampling.clip_denoised,
                                            clip_range=sampling.clip_range,
                                            dynamic_threshold=sampling.dynamic_threshold,
                                            threshold_max=sampling.threshold_max)
        step = theirs.step(out, t, x, eta=0.0, use_clipped_model_output=True)
        assert (ours_x0 - step.pred_original_sample).abs().max().item() < 1e-6, t
        assert (ours - step.prev_sample).abs().max().item() < 1e-6, t


@pytest.mark.parametrize("settings", [dict(variance_type="fixed_small_log"), dict(variance_type="fixed_large"),
                                      dict(thresholding=True, dynamic_thresholding_ratio=0.8, sample_max_value=2.0),
                                      dict(clip_sample_range=0.7, prediction_type="v_prediction")],
                         ids=lambda s: ",".join(s))
def test_ddpm_scheduler_settings_match_diffusers_step_for_step(settings):
    theirs = diffusers.DDPMScheduler(num_train_timesteps=100, **settings)
    diffusion, sampling, _ = _ours_from_scheduler(theirs)
    _in_float64(theirs)
    theirs.set_timesteps(100)
    g = torch.Generator().manual_seed(1)
    for t in (99, 50, 1, 0):
        x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) * 1.5
        out = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) * 2.0
        # diffusers draws the step's noise with randn_tensor(shape, generator, dtype): the same as torch.randn
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        ours, ours_x0 = diffusion.p_sample_step(out, x, t, variance=sampling.variance,
                                                clip_denoised=sampling.clip_denoised,
                                                noise=noise if t > 0 else None, clip_range=sampling.clip_range,
                                                dynamic_threshold=sampling.dynamic_threshold,
                                                threshold_max=sampling.threshold_max)
        step = theirs.step(out, t, x, generator=torch.Generator().manual_seed(t))
        assert (ours_x0 - step.pred_original_sample).abs().max().item() < 1e-6, t
        assert (ours - step.prev_sample).abs().max().item() < 1e-6, t


def test_dpm_solver_scheduler_folder_opens_and_its_refusals_name_the_key(small_unet, tmp_path):
    scheduler = diffusers.DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                                                      solver_order=3, thresholding=True)
    diffusers.DDPMPipeline(unet=small_unet, scheduler=scheduler).save_pretrained(tmp_path / "dpm")
    loaded = load_diffusers_folder(tmp_path / "dpm", device="cpu")
    d, s = loaded.config.diffusion, loaded.config.sampling
    assert (d.schedule, d.prediction, d.betas) == ("cosine", "v", None)
    assert (s.spacing, s.clip_denoised, s.dynamic_threshold) == ("linspace", False, 0.995)  # DPM-Solver's defaults
    assert any("DPMSolverMultistepScheduler: solver_order=3" in n for n in loaded.notes)
    sched_path = tmp_path / "dpm" / "scheduler" / "scheduler_config.json"
    original = sched_path.read_text()
    for key, value in (("prediction_type", "flow_prediction"), ("use_flow_sigmas", True), ("variance_type",
                                                                                           "learned_range"),
                       ("rescale_betas_zero_snr", True), ("timestep_spacing", "karras")):
        sched_path.write_text(json.dumps({**json.loads(original), key: value}))
        with pytest.raises(ValueError) as e:
            load_diffusers_folder(tmp_path / "dpm", device="cpu")
        assert key in str(e.value) and repr(value) in str(e.value), str(e.value)


@pytest.mark.parametrize("T", [50, 100, 1000])
def test_our_timesteps_are_diffusers_ddim_timesteps_for_every_spacing(T):
    """leading (+ steps_offset), trailing and linspace: the same timesteps as DDIMScheduler.set_timesteps
    (diffusers' trailing float overshoot, which adds a timestep -1 for some step counts, is left out)."""
    from ddpm_studio.engine.diffusion import GaussianDiffusion
    from ddpm_studio.engine.schedules import NoiseSchedule

    ours = GaussianDiffusion(NoiseSchedule.from_config("linear", T))
    checked = 0
    for spacing, offset in (("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)):
        theirs = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
        for steps in range(1, T + 1, max(1, T // 97)):
            if offset and (steps - 1) * (T // steps) + offset > T - 1:
                with pytest.raises(ValueError, match="steps_offset"):
                    ours.ddim_timesteps(steps, spacing, offset)
                continue
            if spacing == "linspace" and steps == 1:  # ours starts from noise, diffusers' one step is t = 0
                assert ours.ddim_timesteps(1, spacing) == [T - 1]
                continue
            theirs.set_timesteps(steps)
            assert ours.ddim_timesteps(steps, spacing, offset) == [int(t) for t in theirs.timesteps][:steps], (spacing,
                                                                                                               steps)
            checked += 1
    assert checked > 150
