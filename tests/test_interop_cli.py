"""`ddpm-studio export --format diffusers` and `ddpm-studio sample --model FOLDER` (issue 7).

Both commands call interop.diffusers_format: export a run, then sample the exported folder.
"""

from __future__ import annotations

import torch

from ddpm_studio.cli import main
from ddpm_studio.config import RunConfig
from ddpm_studio.engine.unet import build_model
from ddpm_studio.interop.diffusers_format import load_diffusers_folder
from ddpm_studio.training.checkpoints import save_checkpoint




def test_cli_export_then_sample_the_diffusers_folder(tmp_path, capsys):
    cfg = RunConfig.from_preset("tiny", data={"image_size": 8},
                                model={"base_channels": 8, "channel_mult": (1, 2), "attention_resolutions": (4,)},
                                diffusion={"timesteps": 20})
    model = build_model(cfg.model)
    g = torch.Generator().manual_seed(0)
    ema = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in model.state_dict().items()}
    run = tmp_path / "run"
    save_checkpoint(run, 2, cfg, ema, ema, {"format_version": 1})

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
