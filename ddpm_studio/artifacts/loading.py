"""Open any model this program can sample from, and write one as a diffusers folder.

``load_model`` takes a run folder (its newest good checkpoint), one checkpoint file or a diffusers
model folder and returns a :class:`LoadedModel` with the EMA network. ``export_diffusers`` writes
any of those as a diffusers DDPMPipeline folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ddpm_studio.artifacts.checkpoints import CheckpointError, load_checkpoint, load_latest
from ddpm_studio.artifacts.diffusers_format import (DiffusersFormatError, load_diffusers_folder, missing_path_message,
                                                    write_diffusers_folder)
from ddpm_studio.artifacts.loaded import LoadedModel, build_loaded


def _is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (
        (path / "config.json").is_file() and (path / "diffusion_pytorch_model.safetensors").is_file()
    ) or (path / "unet" / "config.json").is_file()


def load_model(source: str | os.PathLike, device: str | torch.device | None = None) -> LoadedModel:
    """Open a run folder (newest good checkpoint) or a ``.safetensors`` checkpoint for sampling.

    ``device``: "auto"/None (CUDA, then MPS, then CPU), "cpu", "cuda", "mps" or a torch.device.
    Raises CheckpointError (a ValueError) saying why when ``source`` cannot be used.
    """
    from ddpm_studio.engine.devices import select_device

    path = Path(source).expanduser()
    dev = device if isinstance(device, torch.device) else select_device(device or "auto")
    if not path.exists():
        raise CheckpointError(missing_path_message(source))
    if path.is_dir():
        if (path / "checkpoints").is_dir():
            ckpt, notes = load_latest(path, with_state=False)
        elif _is_diffusers_folder(path):
            return load_diffusers_folder(path, dev)
        else:
            raise CheckpointError(f"{path} is neither a DDPM Studio run folder (no checkpoints/) nor a diffusers "
                                  f"model folder")
    else:
        ckpt, notes = load_checkpoint(path, with_state=False), []
    weights = ckpt.ema_state or ckpt.model_state
    if not ckpt.ema_state:
        notes.append("this checkpoint has no EMA weights; sampling from the raw model weights")
    return build_loaded(ckpt.config, weights, step=ckpt.step, source=str(path), device=dev, notes=notes)


def export_diffusers(source: "str | os.PathLike | LoadedModel", out_folder: str | os.PathLike, *,
                     overwrite: bool = False) -> Path:
    """Write ``source`` (a run folder, a checkpoint, a diffusers folder or a LoadedModel) as a
    diffusers DDPMPipeline folder; the EMA weights are exported. Returns the folder.

    Refuses a non-empty ``out_folder`` unless ``overwrite`` (then only our four files are replaced).
    """
    out = Path(out_folder).expanduser()
    if isinstance(source, LoadedModel):
        loaded = source
    else:
        src = Path(source).expanduser()
        if src.exists() and out.exists() and out.resolve() == src.resolve():
            raise DiffusersFormatError(f"the export folder {out} is the source itself; choose another folder")
        loaded = load_model(source, device=torch.device("cpu"))
    return write_diffusers_folder(loaded, out, overwrite=overwrite)
