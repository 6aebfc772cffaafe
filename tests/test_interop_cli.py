"""`ddpm-studio export --format diffusers` and `ddpm-studio sample --model FOLDER` (issue 7).

Both commands call interop.diffusers_format: export a run, then sample the exported folder.
"""

from __future__ import annotations

import torch

from ddpm_studio.cli import main
from ddpm_studio.config import RunConfig
from ddpm_studio.engine.unet import build_model
from ddpm_studio.artifacts.diffusers_format import load_diffusers_folder
from ddpm_studio.artifacts.checkpoints import save_checkpoint




def _saved_run(tmp_path, **model):
    """A run folder holding one checkpoint of a micro tiny network (8 px, T=20) with small random weights."""
    cfg = RunConfig.from_preset("tiny", data={"image_size": 8},
                                model={"base_channels": 8, "channel_mult": (1, 2), "attention_resolutions": (4,),
                                       **model},
                                diffusion={"timesteps": 20})
    net = build_model(cfg.model)
    g = torch.Generator().manual_seed(0)
    ema = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in net.state_dict().items()}
    run = tmp_path / "run"
    save_checkpoint(run, 2, cfg, ema, ema, {"format_version": 1})
    return run, net, ema


def test_cli_export_then_sample_the_diffusers_folder(tmp_path, capsys):
    run, _, ema = _saved_run(tmp_path)

    out = tmp_path / "pipeline"
    assert main(["export", "--run", str(run), "--format", "diffusers", "--out", str(out)]) == 0
    capsys.readouterr()
    loaded = load_diffusers_folder(out, device="cpu")
    assert all(torch.equal(loaded.model.state_dict()[k], ema[k]) for k in ema)

    samples = tmp_path / "samples"
    assert main(["sample", "--model", str(out), "--num", "2", "--out", str(samples), "--sampling-steps", "3",
                 "--device", "cpu", "--quiet"]) == 0
    assert len(list(samples.glob("*.png"))) == 2

    # Refusals are one line on stderr with a non-zero exit.
    assert main(["export", "--run", str(run), "--format", "diffusers", "--out", str(out)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["sample", "--model", "google/ddpm-cifar10-32", "--out", str(samples), "--device", "cpu"]) == 1
    assert "huggingface-cli download google/ddpm-cifar10-32" in capsys.readouterr().err


def test_info_names_the_explicit_betas_of_an_imported_config(tmp_path, capsys):
    """Issue 15: a run whose config came from an import (explicit betas, diffusers' U-Net options) is
    described by `info` from those betas, and `sample` uses the config's spacing."""
    import dataclasses
    import json

    import numpy as np

    cfg = RunConfig.from_preset("tiny", data={"image_size": 8},
                                model={"base_channels": 8, "channel_mult": (1, 2), "attention_resolutions": (4,)},
                                diffusion={"timesteps": 20})
    run = tmp_path / "run"
    model = build_model(cfg.model)
    g = torch.Generator().manual_seed(1)
    ema = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in model.state_dict().items()}
    save_checkpoint(run, 2, cfg, ema, ema, {"format_version": 1})
    out = tmp_path / "pipeline"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    sched_path = out / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_path.read_text())
    sched.update(trained_betas=list(np.linspace(5e-4, 0.2, 20)), timestep_spacing="leading")
    sched_path.write_text(json.dumps(sched))
    unet_path = out / "unet" / "config.json"
    unet_path.write_text(json.dumps({**json.loads(unet_path.read_text()), "norm_eps": 1e-5}))
    loaded = load_diffusers_folder(out, device="cpu")
    imported = dataclasses.replace(loaded.config, train=dataclasses.replace(loaded.config.train, steps=10))
    assert imported.model.norm_eps == 1e-5 and imported.diffusion.betas is not None
    save_checkpoint(tmp_path / "imported", 1, imported, loaded.model.state_dict(), loaded.model.state_dict(),
                    {"format_version": 1})
    capsys.readouterr()
    assert main(["info", str(tmp_path / "imported")]) == 0
    text = capsys.readouterr().out
    assert "explicit betas (0.0005 to 0.2; closest named schedule linear), T=20" in text


def test_a_patched_run_samples_but_is_refused_for_diffusers_with_the_reason(tmp_path, capsys):
    run, model, _ = _saved_run(tmp_path, attention_resolutions=(2,), patch_size=2)
    assert model.conv_in.in_channels == 12 and model.spec.feature_size == 4

    out = tmp_path / "pipeline"
    assert main(["export", "--run", str(run), "--format", "diffusers", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "patch_size=2 cannot be written for diffusers" in err and "Traceback" not in err
    assert not (out / "unet").exists()
    samples = tmp_path / "samples"
    assert main(["sample", "--run", str(run), "--num", "2", "--out", str(samples), "--sampling-steps", "3",
                 "--device", "cpu", "--quiet"]) == 0
    assert len(list(samples.glob("*.png"))) == 2
    capsys.readouterr()
    assert main(["info", str(run)]) == 0
    assert "8 px on 2x2 patches (4 px inside)" in capsys.readouterr().out
