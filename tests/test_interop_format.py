"""diffusers-format import/export without diffusers installed: layout, refusals, safety, round trips.

The oracle tests against diffusers itself are in test_interop_diffusers.py.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch

from ddpm_studio.config import RunConfig
from ddpm_studio.engine.unet import build_model
from ddpm_studio.artifacts.diffusers_format import DiffusersFormatError, load_diffusers_folder, unet_config_for
from ddpm_studio.artifacts.loading import export_diffusers, load_model
from ddpm_studio.artifacts.checkpoints import CheckpointError, save_checkpoint




def small_config(**diffusion) -> RunConfig:
    """16 px, base 16, two levels with attention at 8 px: milliseconds per forward pass."""
    return RunConfig.from_preset("tiny", data={"image_size": 16},
                                 model={"base_channels": 16, "channel_mult": (1, 2), "attention_resolutions": (8,)},
                                 diffusion=diffusion)


def randomised_state(cfg: RunConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights with every entry random (the paper's init zeroes the output layers, which would make
    output comparisons trivially pass)."""
    model = build_model(cfg.model)
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in model.state_dict().items()}


def make_run(tmp_path, cfg: RunConfig, name: str = "run"):
    run = tmp_path / name
    state = randomised_state(cfg)
    ema = {k: v * 0.5 for k, v in state.items()}  # distinct from the raw weights: the export must take these
    path = save_checkpoint(run, 7, cfg, state, ema, {"format_version": 1})
    return run, path, ema


# -- Hub ids and missing paths --------------------------------------------------------------------


def test_hub_id_gets_download_instructions_and_no_network(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ValueError) as e:
        load_diffusers_folder("google/ddpm-cifar10-32")
    msg = str(e.value)
    assert "huggingface-cli download google/ddpm-cifar10-32 --local-dir ./ddpm-cifar10-32" in msg
    assert "never downloads" in msg
    # The same advice through the sampling service (CLI `sample --model`, GUI File > Open Model...).
    with pytest.raises(CheckpointError, match="huggingface-cli download google/ddpm-cifar10-32"):
        load_model("google/ddpm-cifar10-32", device="cpu")
    # A missing path that is not shaped like a Hub id just says it does not exist.
    with pytest.raises(CheckpointError) as e:
        load_model(str(tmp_path / "nowhere" / "model"), device="cpu")
    assert "does not exist" in str(e.value) and "huggingface" not in str(e.value)


# -- refusals ---------------------------------------------------------------------------------------


def _pipeline_folder(tmp_path, unet: dict, scheduler: dict | None = None, index: dict | None = None):
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps(unet))
    if scheduler is not None:
        (folder / "scheduler").mkdir()
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    if index is not None:
        (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def _valid_unet_config() -> dict:
    return unet_config_for(build_model(small_config().model).spec)


# Only block types and embeddings DDPM Studio does not implement are refused (issue 15); numbers
# and switches inside the blocks (norm_eps, add_attention, act_fn, scale_shift, ...) are fields.
UNSUPPORTED_UNET = [
    ("time_embedding_type", "fourier"),
    ("time_embedding_type", "learned"),
    ("resnet_time_scale_shift", "spatial"),
    ("mid_block_type", "UNetMidBlock2DCrossAttn"),
    ("class_embed_type", "timestep"),
    ("num_class_embeds", 10),
    ("out_channels", 6),
    ("act_fn", "tanh"),
    ("down_block_types", ["DownBlock2D", "SkipDownBlock2D"]),
    ("down_block_types", ["DownBlock2D", "ResnetDownsampleBlock2D"]),
    ("up_block_types", ["AttnUpBlock2D", "ResnetUpsampleBlock2D"]),
    ("up_block_types", ["AttnUpBlock2D", "AttnSkipUpBlock2D"]),
    ("up_block_types", ["UpBlock2D", "UpBlock2D"]),  # attention going up does not mirror going down
    ("attention_head_dim", 24),  # does not divide the widths
    ("block_out_channels", [16, 24]),  # not base x integer multipliers
    ("_class_name", "UNet2DConditionModel"),
    ("norm_eps", "1e-5"),  # a string, not a number
    ("add_attention", "no"),  # a string, not a boolean
]


@pytest.mark.parametrize("key,value", UNSUPPORTED_UNET)
def test_unsupported_unet_setting_is_refused_naming_it(tmp_path, key, value):
    cfg = _valid_unet_config()
    cfg[key] = value
    folder = _pipeline_folder(tmp_path, cfg)
    with pytest.raises(ValueError) as e:
        load_diffusers_folder(folder, device="cpu")
    msg = str(e.value)
    shown = repr(value[-1]) if isinstance(value, list) and key.endswith("block_types") else repr(value)
    assert key in msg and shown in msg, msg


def test_valid_config_without_weights_fails_on_the_weights(tmp_path):
    """The refusals above come from the setting changed, not from the missing weights."""
    folder = _pipeline_folder(tmp_path, _valid_unet_config())
    with pytest.raises(ValueError, match="holds no weights"):
        load_diffusers_folder(folder, device="cpu")


def test_a_diffusers_network_too_large_for_this_machine_is_refused_before_building(tmp_path, monkeypatch):
    """block_out_channels that validation allows but memory does not: refused from the config alone."""
    from ddpm_studio import footprint
    from ddpm_studio.engine import unet

    monkeypatch.setattr(footprint, "system_memory_bytes", lambda: 2**30)  # a 1 GB machine
    built = []
    monkeypatch.setattr(unet, "build_model", lambda *a, **k: built.append(1))
    cfg = _valid_unet_config()
    cfg["block_out_channels"] = [512, 2048]  # some 10^8 parameters: allowed, but not in 1 GB
    folder = _pipeline_folder(tmp_path, cfg)
    with pytest.raises(ValueError) as e:
        load_diffusers_folder(folder, device="cpu")
    assert "too large for this machine's 1.0 GB of memory" in str(e.value) and "config.json" in str(e.value)
    assert not built


UNSUPPORTED_SCHEDULER = [
    ("beta_schedule", "laplace"),
    ("variance_type", "learned_range"),
    ("variance_type", "fixed_large_log"),  # diffusers itself gives NaN noise for it
    ("timestep_spacing", "karras"),
    ("timestep_spacing", "logsnr"),  # our own spacings, not diffusers' names
    ("timestep_spacing", "auto"),
    ("prediction_type", "flow_prediction"),
    ("rescale_betas_zero_snr", True),
    ("_class_name", "EulerDiscreteScheduler"),
    ("num_train_timesteps", 5),
]


@pytest.mark.parametrize("key,value", UNSUPPORTED_SCHEDULER)
def test_unsupported_scheduler_setting_is_refused_naming_it(tmp_path, key, value):
    folder = _pipeline_folder(tmp_path, _valid_unet_config(), {"_class_name": "DDPMScheduler", key: value})
    with pytest.raises(ValueError) as e:
        load_diffusers_folder(folder, device="cpu")
    msg = str(e.value)
    assert key in msg and repr(value) in msg, msg


def test_other_pipelines_are_refused(tmp_path):
    folder = _pipeline_folder(tmp_path, _valid_unet_config(), None,
                              {"_class_name": "LDMPipeline", "unet": ["diffusers", "UNet2DModel"]})
    with pytest.raises(ValueError, match="_class_name='LDMPipeline'"):
        load_diffusers_folder(folder, device="cpu")


# -- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule,T,prediction", [("cosine", 1000, "v"), ("linear", 20, "x0"), ("sigmoid", 100,
                                                                                                 "epsilon")])
def test_export_then_import_gives_identical_weights_and_config(tmp_path, schedule, T, prediction):
    cfg = small_config(schedule=schedule, timesteps=T, prediction=prediction)
    cfg.sampling.variance = "fixed_large"
    cfg.sampling.clip_denoised = False
    run, ckpt, ema = make_run(tmp_path, cfg)
    out = export_diffusers(run, tmp_path / "exported")
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == {
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json"}
    loaded = load_diffusers_folder(out, device="cpu")
    state = loaded.model.state_dict()
    assert state.keys() == ema.keys()
    assert all(torch.equal(state[k], ema[k]) for k in ema)  # the EMA weights, bit for bit
    # The same config, with the GroupNorm count (None = our default rule) written out explicitly.
    resolved_groups = build_model(cfg.model).spec.norm_groups
    mine = cfg.model.__dict__ | {"preset": None, "norm_groups": resolved_groups}
    theirs = loaded.config.model.__dict__ | {"preset": None}
    assert mine == theirs
    assert build_model(loaded.config.model).spec == loaded.model.spec
    d = loaded.config.diffusion
    assert (d.schedule, d.timesteps, d.prediction) == (schedule, T, prediction)
    assert loaded.config.sampling.variance == "fixed_large" and loaded.config.sampling.clip_denoised is False
    np.testing.assert_array_equal(loaded.diffusion.schedule.betas, build_schedule(schedule, T))
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    # T=20 linear hits the 0.999 cap, which diffusers' formula does not have: exact betas are written.
    assert (sched["trained_betas"] is not None) == (schedule == "linear" and T == 20)
    # Exporting the checkpoint file itself, or the loaded model, writes the same weights.
    out2 = export_diffusers(ckpt, tmp_path / "exported2")
    out3 = export_diffusers(loaded, tmp_path / "exported3")
    for o in (out2, out3):
        assert (o / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == \
            (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()


def build_schedule(kind, T):
    from ddpm_studio.engine.schedules import get_betas

    return get_betas(kind, T)


def test_export_refuses_a_non_empty_folder_and_heads_diffusers_cannot_express(tmp_path):
    run, _, _ = make_run(tmp_path, small_config())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        export_diffusers(run, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    # Two heads at widths 16 and 32: diffusers has one head width (attention_head_dim) for all.
    cfg = RunConfig.from_preset("tiny", data={"image_size": 16}, model={"base_channels": 16, "channel_mult": (1, 2),
                                                                        "attention_resolutions": (16,), "num_heads": 2})
    run2, _, _ = make_run(tmp_path, cfg, "run2")
    with pytest.raises(ValueError, match="num_heads=2"):
        export_diffusers(run2, tmp_path / "out2")


def test_explicit_betas_are_used_faithfully_and_written_back(tmp_path):
    """diffusers' linear betas 1e-4..0.02 at T=500 are not our linear (whose ends scale by 1000/T)."""
    run, _, _ = make_run(tmp_path, small_config())
    out = export_diffusers(run, tmp_path / "exported")
    sched_path = out / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_path.read_text())
    sched.update(num_train_timesteps=500, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", trained_betas=None)
    sched_path.write_text(json.dumps(sched))
    loaded = load_diffusers_folder(out, device="cpu")
    np.testing.assert_allclose(loaded.diffusion.schedule.betas, np.linspace(1e-4, 0.02, 500), rtol=0, atol=1e-15)
    assert loaded.diffusion.T == 500 and loaded.config.diffusion.timesteps == 500
    assert any("not one of DDPM Studio's named schedules" in n for n in loaded.notes)
    again = export_diffusers(loaded, tmp_path / "again")
    written = json.loads((again / "scheduler" / "scheduler_config.json").read_text())["trained_betas"]
    np.testing.assert_array_equal(np.array(written), loaded.diffusion.schedule.betas)


def test_bare_unet_folder_and_unet_subfolder_open(tmp_path):
    run, _, ema = make_run(tmp_path, small_config(schedule="cosine"))
    out = export_diffusers(run, tmp_path / "exported")
    # Pointing at the unet/ subfolder of a pipeline finds the sibling scheduler.
    sub = load_diffusers_folder(out / "unet", device="cpu")
    assert sub.config.diffusion.schedule == "cosine" and not sub.notes
    # A bare UNet folder (config.json + weights only) gets diffusers' scheduler defaults and a note.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (bare / name).write_bytes((out / "unet" / name).read_bytes())
    loaded = load_model(bare, device="cpu")  # through the sampling service's hook
    assert loaded.config.diffusion.schedule == "linear" and loaded.config.diffusion.timesteps == 1000
    assert any("no scheduler config" in n for n in loaded.notes)
    assert all(torch.equal(loaded.model.state_dict()[k], ema[k]) for k in ema)


# -- .bin weights -----------------------------------------------------------------------------------


def test_bin_weights_load_through_weights_only_with_legacy_attention_names(tmp_path, monkeypatch):
    run, _, ema = make_run(tmp_path, small_config())
    out = export_diffusers(run, tmp_path / "exported")
    (out / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    legacy = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
    state = {}
    for k, v in ema.items():
        for old, new in legacy.items():
            k = k.replace(f".{new}.", f".{old}.")  # diffusers < 0.14 names
        state[k] = v
    assert any(".query." in k for k in state)
    torch.save(state, out / "unet" / "diffusion_pytorch_model.bin")

    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_diffusers_folder(out, device="cpu")
    assert calls == [True]
    assert all(torch.equal(loaded.model.state_dict()[k], ema[k]) for k in ema)


class _Payload:
    """Pickles as a call to exec(...): what a malicious .bin looks like."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def test_malicious_pickle_bin_is_refused_without_running_code(tmp_path):
    run, _, _ = make_run(tmp_path, small_config())
    out = export_diffusers(run, tmp_path / "exported")
    (out / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "pwned.txt"
    torch.save({"conv_in.weight": _Payload(marker)}, out / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(DiffusersFormatError, match="refused"):
        load_diffusers_folder(out, device="cpu")
    assert not marker.exists()
    # The payload is live: an unrestricted unpickler would have run it.
    torch.load(out / "unet" / "diffusion_pytorch_model.bin", weights_only=False)
    assert marker.read_text() == "code ran"


def test_grayscale_model_round_trips(tmp_path):
    cfg = small_config()
    cfg.data.channels = "1"
    cfg.sync()
    run, _, ema = make_run(tmp_path, cfg)
    out = export_diffusers(run, tmp_path / "exported")
    unet = json.loads((out / "unet" / "config.json").read_text())
    assert unet["in_channels"] == unet["out_channels"] == 1
    loaded = load_diffusers_folder(out, device="cpu")
    assert loaded.config.model.in_channels == 1 and loaded.config.data.channels == "1"
    assert loaded.image_shape == (1, 16, 16)
    assert all(torch.equal(loaded.model.state_dict()[k], ema[k]) for k in ema)
    with torch.no_grad():
        assert loaded.model(torch.zeros(2, 1, 16, 16), torch.tensor([0, 5])).shape == (2, 1, 16, 16)


def test_folders_that_are_not_diffusers_models_are_refused_plainly(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    small_config().save(plain / "config.json")  # a DDPM Studio config.json is not a UNet2DModel config
    with pytest.raises(ValueError, match="is not a diffusers model folder"):
        load_diffusers_folder(plain, device="cpu")
    sneaky = _pipeline_folder(tmp_path, _valid_unet_config(), None,
                              {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
                               "../../elsewhere": ["diffusers", "DDPMScheduler"]})
    with pytest.raises(ValueError, match="outside its folder"):
        load_diffusers_folder(sneaky, device="cpu")


@pytest.mark.parametrize("section,field,value", [
    ("model", "norm_eps", 0.0), ("model", "attn_norm_groups", 0), ("model", "add_attention", "no"),
    ("model", "mid_block_scale_factor", 0.0), ("model", "time_embedding_dim", 2.5), ("model", "center_input_sample", 1),
    ("model", "act_fn", "tanh"), ("model", "time_conditioning", "spatial"),
    ("sampling", "spacing", "karras"), ("sampling", "steps_offset", -1), ("sampling", "clip_range", 0.0),
    ("sampling", "dynamic_threshold", 1.5), ("sampling", "threshold_max", 0.5),
])
def test_new_config_fields_are_validated_by_name(section, field, value):
    cfg = small_config()
    setattr(getattr(cfg, section), field, value)
    with pytest.raises(ValueError, match=f"{section}.{field}"):
        cfg.validate()


def test_new_unet_fields_change_the_network_only_when_set():
    """Defaults are the paper's network (existing checkpoints unchanged); each field changes it."""
    import dataclasses

    base = small_config().model
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5])

    def out(model_cfg):
        torch.manual_seed(0)
        m = build_model(model_cfg).eval()
        with torch.no_grad():  # the paper's init zeroes the output layers; randomise everything
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
        with torch.no_grad():
            return m(x, t)

    ref = out(base)
    for change in (dict(norm_eps=1e-2), dict(attn_norm_groups=2), dict(add_attention=False),
                   dict(mid_block_scale_factor=2.0),
                   dict(center_input_sample=True), dict(act_fn="gelu"), dict(time_conditioning="scale_shift")):
        assert (out(dataclasses.replace(base, **change)) - ref).abs().max() > 1e-4, change
    assert build_model(dataclasses.replace(base, time_embedding_dim=96)).time_embedding.linear_1.out_features == 96


def test_export_writes_a_spacing_diffusers_knows():
    """auto and logsnr are ours: an exported scheduler gets trailing, which like them starts at t = T-1."""
    import numpy as np

    from ddpm_studio.artifacts.diffusers_format import scheduler_config_for
    from ddpm_studio.config import SamplingConfig

    betas = np.linspace(1e-4, 0.02, 1000)
    for spacing, written in (("auto", "trailing"), ("logsnr", "trailing"), ("linspace", "linspace"),
                             ("leading", "leading"), ("trailing", "trailing")):
        cfg = scheduler_config_for(betas, "linear", "v", SamplingConfig(spacing=spacing))
        assert cfg["timestep_spacing"] == written, spacing
