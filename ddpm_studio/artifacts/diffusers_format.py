"""Open diffusers-format DDPM models, and write ours in that format (issue 7).

Length (over 500 lines, on purpose): one file format, read and written here, with the table of every
UNet2DModel and scheduler key it honours or refuses by name; split, the two directions would drift.

The DDPM paper's released models (google/ddpm-cifar10-32, -celebahq-256, -church-256, ...) are
folders in Hugging Face diffusers' layout::

    model_index.json                    {"_class_name": "DDPMPipeline", "unet": [...], "scheduler": [...]}
    unet/config.json                    UNet2DModel settings
    unet/diffusion_pytorch_model.safetensors   (or .bin)
    scheduler/scheduler_config.json     DDPMScheduler / DDIMScheduler / DPMSolverMultistepScheduler settings

:func:`load_diffusers_folder` reads such a folder WITHOUT diffusers: the U-Net config becomes a
:class:`ModelConfig` (every UNet2DModel number and switch is a field of it, issue 15), the scheduler
config a :class:`DiffusionConfig` (with explicit ``betas`` when they are not one of our named
schedules) and a :class:`SamplingConfig` (clipping, thresholding, timestep spacing), so the run
config alone rebuilds the model; the weights load key for key (our U-Net has diffusers' module
names). Weights come from ``.safetensors`` when present; a ``.bin`` is read only through
``torch.load(weights_only=True)``, which refuses any pickle that would run code. Anything our
network or sampler cannot reproduce is refused with a ValueError naming the setting and its value.
No network access, ever: a missing path that looks like a Hub id gets a message saying how to
download it first.

:func:`export_diffusers` writes a run, a checkpoint or a loaded model as a folder that
``diffusers.DDPMPipeline.from_pretrained`` opens: the EMA weights, a UNet2DModel config and a
DDPMScheduler config (named ``beta_schedule`` when diffusers' formula gives our betas, else the
exact ``trained_betas``).

Missing keys in a diffusers config mean diffusers' defaults (diffusers 0.42, listed below), exactly
as ``from_pretrained`` reads them; e.g. a UNet2DModel config without ``attention_head_dim`` has
8-channel heads, not one head.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ddpm_studio.artifacts.checkpoints import CheckpointError
from ddpm_studio.config import (DIFFUSERS_SPACINGS, DataConfig, DiffusionConfig, ModelConfig, RunConfig, SamplingConfig,
                                atomic_write_bytes, atomic_write_text)

if TYPE_CHECKING:  # torch-heavy modules are imported inside the functions that use them
    import torch

    from ddpm_studio.artifacts.loaded import LoadedModel

DIFFUSERS_VERSION_WRITTEN = "0.42.1"  # the diffusers release our export is tested against
WEIGHTS_NAME = "diffusion_pytorch_model"
UNET_CLASS = "UNet2DModel"
PIPELINES = ("DDPMPipeline", "DDIMPipeline")
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler")

# UNet2DModel.__init__ defaults (diffusers 0.42): what a key missing from config.json means.
UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
    "act_fn": "silu", "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None,
    "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "add_attention": True,
    "class_embed_type": None, "num_class_embeds": None, "num_train_timesteps": None,
}
# DDPMScheduler / DDIMScheduler / DPMSolverMultistepScheduler.__init__ defaults (diffusers 0.42), the
# keys DDPM Studio reads. DPM-Solver has no clip_sample (it never clips) and spaces its steps by linspace.
_COMMON_SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "prediction_type": "epsilon", "thresholding": False, "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0, "timestep_spacing": "leading", "steps_offset": 0, "rescale_betas_zero_snr": False,
}
SCHEDULER_DEFAULTS: dict[str, dict[str, Any]] = {
    "DDPMScheduler": {**_COMMON_SCHEDULER_DEFAULTS, "variance_type": "fixed_small", "clip_sample": True,
                      "clip_sample_range": 1.0},
    "DDIMScheduler": {**_COMMON_SCHEDULER_DEFAULTS, "clip_sample": True, "clip_sample_range": 1.0,
                      "set_alpha_to_one": True},
    "DPMSolverMultistepScheduler": {**_COMMON_SCHEDULER_DEFAULTS, "timestep_spacing": "linspace", "variance_type": None,
                                    "clip_sample": False, "clip_sample_range": 1.0, "solver_order": 2,
                                    "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
                                    "lower_order_final": True,
                                    "euler_at_final": False, "use_karras_sigmas": False,
                                    "use_exponential_sigmas": False,
                                    "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
                                    "final_sigmas_type": "zero", "lambda_min_clipped": -math.inf,
                                    "use_dynamic_shifting": False},
}
# DPM-Solver settings that choose how it samples, not what the network learned: listed in a note
# (nothing in this module samples with DPM-Solver; its sampler lives in engine/dpm_solver.py).
_DPM_SAMPLING_KEYS = ("solver_order", "algorithm_type", "solver_type", "lower_order_final", "euler_at_final",
                      "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas",
                      "final_sigmas_type", "lambda_min_clipped")

# Settings that select a block type or an embedding DDPM Studio does not implement: (key, the only
# value we build, what that value means). Everything else UNet2DModel has is a ModelConfig field.
_UNET_FIXED = (
    ("time_embedding_type", "positional", "the sinusoidal time embedding; Fourier and learned embeddings are not "
                                          "implemented"),
    ("mid_block_type", "UNetMidBlock2D", "the resnet-attention-resnet middle block"),
    ("class_embed_type", None, "an unconditional network; class embeddings are not implemented"),
    ("num_class_embeds", None, "an unconditional network; class embeddings are not implemented"),
)
_ACT_FROM_DIFFUSERS = {"silu": "silu", "swish": "silu", "mish": "mish", "gelu": "gelu", "relu": "relu"}
_TIME_COND_FROM_DIFFUSERS = {"default": "default", "scale_shift": "scale_shift"}
_PREDICTION_FROM_DIFFUSERS = {"epsilon": "epsilon", "sample": "x0", "v_prediction": "v"}
_PREDICTION_TO_DIFFUSERS = {v: k for k, v in _PREDICTION_FROM_DIFFUSERS.items()}
# fixed_small_log is fixed_small (diffusers takes exp(0.5 log beta-tilde) as the standard deviation).
_VARIANCE_FROM_DIFFUSERS = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
                            "fixed_large": "fixed_large"}
# Our schedule kind <-> diffusers' beta_schedule name (same formula, see engine/schedules.py).
_SCHEDULE_TO_DIFFUSERS = {"linear": "linear", "quadratic": "scaled_linear", "cosine": "squaredcos_cap_v2",
                          "sigmoid": "sigmoid"}
_SCHEDULE_FROM_DIFFUSERS = {v: k for k, v in _SCHEDULE_TO_DIFFUSERS.items()}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class DiffusersFormatError(CheckpointError):
    """A diffusers folder that cannot be opened or a model that cannot be written as one (a ValueError)."""


# -- small helpers ------------------------------------------------------------------------------


def looks_like_hub_id(text: str) -> bool:
    """True for strings shaped like ``owner/name`` (e.g. ``google/ddpm-cifar10-32``)."""
    return bool(_HUB_ID.match(str(text))) and not str(text).startswith((".", "~"))


def missing_path_message(source: str | os.PathLike) -> str:
    """Why ``source`` cannot be opened when it does not exist; says how to download Hub ids."""
    text = os.fspath(source)
    if looks_like_hub_id(text):
        local = "./" + text.split("/")[1]
        return (f"{text} is not a folder on this computer. It looks like a Hugging Face Hub model id; "
                f"DDPM Studio never downloads anything itself. Download it first, e.g. with "
                f"`huggingface-cli download {text} --local-dir {local}` (or `hf download {text} --local-dir {local}`), "
                f"then open the folder {local}")
    return f"{Path(text).expanduser()} does not exist"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DiffusersFormatError(f"{path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffusersFormatError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise DiffusersFormatError(f"{path} must hold a JSON object; got {type(d).__name__}")
    return d


def _refuse(where: str, key: str, value: Any, why: str) -> DiffusersFormatError:
    return DiffusersFormatError(f"{where}: {key}={value!r} is not supported ({why})")


def _as_bool(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise DiffusersFormatError(f"{where}: {key} must be true or false; got {value!r}")
    return value


def _as_float(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise DiffusersFormatError(f"{where}: {key} must be a number; got {value!r}")
    return float(value)


def _as_int(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise DiffusersFormatError(f"{where}: {key} must be a whole number; got {value!r}")
    return int(value)


# -- folder layout ------------------------------------------------------------------------------


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    """A folder holding a diffusers pipeline (model_index.json or unet/config.json) or a bare UNet."""
    p = Path(path)
    if (p / "model_index.json").is_file() or (p / "unet" / "config.json").is_file():
        return True
    if (p / "config.json").is_file():
        try:
            return json.loads((p / "config.json").read_text(encoding="utf-8")).get("_class_name") == UNET_CLASS
        except (OSError, ValueError, AttributeError):
            return False
    return False


def _locate(folder: Path) -> tuple[Path, Path | None, list[str]]:
    """(unet folder, scheduler_config.json or None, notes) for a pipeline folder or a bare UNet folder."""
    notes: list[str] = []
    if folder.is_file():  # a config or weights file inside the folder
        folder = folder.parent
    index = folder / "model_index.json"
    if index.is_file():
        info = _read_json(index)
        cls = info.get("_class_name")
        if cls not in PIPELINES:
            raise _refuse(str(index), "_class_name", cls, f"DDPM Studio opens {' and '.join(PIPELINES)} folders: "
                          "an unconditional U-Net with a DDPM/DDIM scheduler")
        unets = [k for k, v in info.items() if isinstance(v, list) and len(v) == 2 and v[1] == UNET_CLASS]
        unet_name = unets[0] if unets else None
        if unet_name is None:
            raise DiffusersFormatError(f"{index} names no {UNET_CLASS} component")
        sched_name = next((k for k, v in info.items() if isinstance(v, list) and len(v) == 2 and k != unet_name
                           and isinstance(v[1], str) and v[1].endswith("Scheduler")), None)
        for name in (unet_name, sched_name):
            if name is not None and (Path(name).name != name or name in (".", "..")):
                raise DiffusersFormatError(f"{index} names a component outside its folder: {name!r}")
        sched = folder / sched_name / "scheduler_config.json" if sched_name else None
        return folder / unet_name, sched, notes
    if (folder / "unet" / "config.json").is_file():
        sched = folder / "scheduler" / "scheduler_config.json"
        return folder / "unet", sched if sched.is_file() else None, notes
    config = folder / "config.json"
    if config.is_file() and ({"_class_name", "block_out_channels"} & set(_read_json(config))):
        for sched in (folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"):
            if sched.is_file():
                return folder, sched, notes
        return folder, None, notes
    raise DiffusersFormatError(
        f"{folder} is not a diffusers model folder: expected model_index.json, unet/config.json or a "
        f"{UNET_CLASS} config.json with {WEIGHTS_NAME}.safetensors")


# -- the network --------------------------------------------------------------------------------


def model_from_unet_config(cfg: dict[str, Any], where: str = "unet/config.json") -> tuple[ModelConfig, list[str]]:
    """(ModelConfig, notes) equivalent to a UNet2DModel config: ``build_model(model)`` is that network.

    Every numeric option and switch becomes a ModelConfig field; block types and embeddings DDPM
    Studio does not implement raise DiffusersFormatError naming the key and its value.
    """
    cls = cfg.get("_class_name", UNET_CLASS)
    if cls != UNET_CLASS:
        raise _refuse(where, "_class_name", cls, f"DDPM Studio opens unconditional {UNET_CLASS} networks")
    c = {**UNET_DEFAULTS, **cfg}
    notes: list[str] = []
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in UNET_DEFAULTS)
    if unknown:  # as diffusers itself does; a setting that changed the layout would fail the weight check
        notes.append(f"{where}: ignored setting(s) unknown to DDPM Studio: {', '.join(unknown)}")
    act, cond = _unet_kinds(c, where)
    size, in_ch = _unet_size_and_channels(c, where)
    chans, attn_levels = _unet_levels(c, where)
    base = chans[0]
    time_dim = _optional_int(c, where, "time_embedding_dim")
    if time_dim == 4 * base:
        time_dim = None  # our default
    add_attention = _as_bool(where, "add_attention", c["add_attention"])
    attn_widths = sorted({chans[i] for i in attn_levels} | ({chans[-1]} if add_attention else set()))
    heads, model_head_dim = _unet_heads(c, where, attn_widths)
    attn_groups = _optional_int(c, where, "attn_norm_num_groups")
    pad = c["downsample_padding"]
    if pad not in (0, 1) or isinstance(pad, bool):
        raise _refuse(where, "downsample_padding", pad, "only 0 (the paper's TensorFlow SAME) and 1 exist")

    def number(key: str) -> float:
        return _as_float(where, key, c[key])

    def switch(key: str) -> bool:
        return _as_bool(where, key, c[key])

    model = ModelConfig(
        preset="custom", image_size=size, in_channels=in_ch, base_channels=base,
        channel_mult=tuple(w // base for w in chans), num_res_blocks=_as_int(where, "layers_per_block",
                                                                             c["layers_per_block"]),
        attention_resolutions=tuple(size // 2**i for i in attn_levels), dropout=number("dropout"),
        num_heads=heads, attention_head_dim=model_head_dim,
        norm_groups=_as_int(where, "norm_num_groups", c["norm_num_groups"]), downsample_padding=int(pad),
        flip_sin_to_cos=switch("flip_sin_to_cos"), freq_shift=number("freq_shift"), norm_eps=number("norm_eps"),
        attn_norm_groups=attn_groups, add_attention=add_attention,
        mid_block_scale_factor=number("mid_block_scale_factor"), time_embedding_dim=time_dim,
        center_input_sample=switch("center_input_sample"), act_fn=_ACT_FROM_DIFFUSERS[act],
        time_conditioning=_TIME_COND_FROM_DIFFUSERS[cond])
    from ddpm_studio.engine.unet import resolve_spec  # the divisibility checks (groups, heads) live there

    try:
        model.validate()
        resolve_spec(model)
    except ValueError as e:
        raise DiffusersFormatError(f"{where} describes a network DDPM Studio cannot hold: {e}") from None
    if not attn_widths:
        notes.append("this network has no self-attention")
    elif not attn_levels:
        notes.append("this network has self-attention only in its middle block")
    return model, notes


def _unet_kinds(c: dict[str, Any], where: str) -> tuple[str, str]:
    """Refuse block types and embeddings we do not build; (act_fn, resnet_time_scale_shift)."""
    for key, wanted, meaning in _UNET_FIXED:
        if c[key] != wanted:
            raise _refuse(where, key, c[key], f"DDPM Studio's U-Net supports only {wanted!r}: {meaning}")
    act = c["act_fn"]
    if act not in _ACT_FROM_DIFFUSERS:
        raise _refuse(where, "act_fn", act, f"supported: {', '.join(_ACT_FROM_DIFFUSERS)}")
    cond = c["resnet_time_scale_shift"]
    if cond not in _TIME_COND_FROM_DIFFUSERS:
        raise _refuse(where, "resnet_time_scale_shift", cond, "DDPM Studio's residual blocks add the time embedding "
                      "('default') or scale and shift by it ('scale_shift'); spatial and ada_group norms are not "
                      "implemented")

    return act, cond


def _unet_size_and_channels(c: dict[str, Any], where: str) -> tuple[int, int]:
    """(image side, channels): square images, 1 or 3 channels in and out."""
    size = c["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise _refuse(where, "sample_size", size, "DDPM Studio makes square images")
        size = size[0]
    if size is None:
        raise DiffusersFormatError(f"{where}: sample_size is missing; DDPM Studio needs the image size")
    size = _as_int(where, "sample_size", size)
    in_ch = _as_int(where, "in_channels", c["in_channels"])
    out_ch = _as_int(where, "out_channels", c["out_channels"])
    if in_ch not in (1, 3):
        raise _refuse(where, "in_channels", in_ch, "DDPM Studio makes grayscale (1) or RGB (3) images")
    if out_ch != in_ch:
        raise _refuse(where, "out_channels", out_ch, f"must equal in_channels={in_ch}; a network that also "
                      "predicts its variance (out_channels = 2 x in_channels) is not supported")

    return size, in_ch


def _unet_levels(c: dict[str, Any], where: str) -> tuple[list[int], list[int]]:
    """(width per level, the levels with attention), the block types checked."""
    chans = [_as_int(where, "block_out_channels[]", w) for w in c["block_out_channels"]]
    if not chans:
        raise DiffusersFormatError(f"{where}: block_out_channels is empty")
    base = chans[0]
    if any(w % base for w in chans):
        raise _refuse(where, "block_out_channels", chans,
                      f"every width must be a multiple of the first ({base}) for DDPM Studio's base_channels x "
                      f"channel_mult")
    L = len(chans)
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    if len(down) != L or len(up) != L:
        raise DiffusersFormatError(f"{where}: down_block_types ({len(down)}) and up_block_types ({len(up)}) must each "
                                   f"have one entry per block_out_channels entry ({L})")
    for key, types, allowed in (("down_block_types", down, ("DownBlock2D", "AttnDownBlock2D")),
                                ("up_block_types", up, ("UpBlock2D", "AttnUpBlock2D"))):
        for i, t in enumerate(types):
            if t not in allowed:
                raise _refuse(where, f"{key}[{i}]", t, f"DDPM Studio's U-Net is built from {' and '.join(allowed)}; "
                              "Skip, ResnetDownsample/ResnetUpsample, cross-attention and K blocks are not implemented")
    attn_levels = [i for i, t in enumerate(down) if t.startswith("Attn")]
    up_attn_levels = [L - 1 - j for j, t in enumerate(up) if t.startswith("Attn")]
    if sorted(up_attn_levels) != attn_levels:
        raise _refuse(where, "up_block_types", up, f"attention going up must mirror attention going down ({down})")
    # Only AttnDown/AttnUp blocks read downsample_type / upsample_type (DownBlock2D always convolves).
    for key, blocks in (("downsample_type", [i for i in attn_levels if i < L - 1]),
                        ("upsample_type", [j for j, t in enumerate(up) if t.startswith("Attn") and j < L - 1])):
        if blocks and c[key] not in ("conv", None):
            raise _refuse(where, key, c[key], "DDPM Studio re-samples with strided / nearest-neighbour convs ('conv'); "
                          "residual-block re-sampling is not implemented")

    return chans, attn_levels


def _unet_heads(c: dict[str, Any], where: str, attn_widths: list[int]) -> tuple[int, int | None]:
    """(num_heads, attention_head_dim) for ModelConfig from diffusers' attention_head_dim."""
    # Heads: diffusers gives each attention layer width // attention_head_dim heads of attention_head_dim
    # channels (one head when attention_head_dim is null).
    head_dim = c["attention_head_dim"]
    heads, model_head_dim = 1, None
    if head_dim is not None:
        head_dim = _as_int(where, "attention_head_dim", head_dim)
        if head_dim < 1 or any(w % head_dim or w < head_dim for w in attn_widths):
            raise _refuse(where, "attention_head_dim", head_dim,
                          f"it must divide the width of every attention layer ({attn_widths})")
        counts = {w // head_dim for w in attn_widths}
        if len(counts) == 1 and next(iter(counts)) <= 64:  # one head count everywhere: num_heads, the paper's way
            heads = counts.pop()
        elif attn_widths:
            model_head_dim = head_dim
    return heads, model_head_dim


def _optional_int(c: dict[str, Any], where: str, key: str) -> int | None:
    return None if c[key] is None else _as_int(where, key, c[key])


# -- the noise schedule -------------------------------------------------------------------------


def diffusers_betas(beta_schedule: str, T: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Betas (T,) float64 by diffusers' formula for ``beta_schedule`` (scheduling_ddpm.py)."""
    from ddpm_studio.engine.schedules import get_betas

    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, T, dtype=np.float64)
    if beta_schedule == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    if beta_schedule == "sigmoid":
        return 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, T, dtype=np.float64))) * (beta_end - beta_start) + beta_start
    if beta_schedule == "squaredcos_cap_v2":  # the same formula and 0.999 cap as our cosine
        return get_betas("cosine", T)
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}")


def diffusion_from_scheduler_config(cfg: dict[str, Any], where: str = "scheduler/scheduler_config.json"):
    """(DiffusionConfig, sampling overrides, notes) for a DDPM / DDIM / DPM-Solver multistep scheduler config.

    ``DiffusionConfig.betas`` holds the folder's float64 betas when they are not exactly one of our
    named schedules (``schedule`` then names the closest family), so
    ``GaussianDiffusion.from_config`` alone rebuilds the process. Every key listed in
    ``SCHEDULER_DEFAULTS`` is honoured or refused by name.
    """
    cls = cfg.get("_class_name", "DDPMScheduler")
    if cls not in SCHEDULERS:
        raise _refuse(where, "_class_name", cls, f"DDPM Studio reads {', '.join(SCHEDULERS)} configs")
    c = {**SCHEDULER_DEFAULTS[cls], **cfg}
    notes: list[str] = []
    T = _as_int(where, "num_train_timesteps", c["num_train_timesteps"])
    if not 10 <= T <= 4000:
        raise _refuse(where, "num_train_timesteps", T, "DDPM Studio supports T from 10 to 4000")
    if _as_bool(where, "rescale_betas_zero_snr", c["rescale_betas_zero_snr"]):
        raise _refuse(where, "rescale_betas_zero_snr", True,
                      "a zero-SNR last step (beta = 1, alpha-bar = 0) is not supported")
    if cls == "DPMSolverMultistepScheduler":
        for key in ("use_flow_sigmas", "use_dynamic_shifting"):
            if c[key]:
                raise _refuse(where, key, c[key], "flow-matching sigmas are not a DDPM noise schedule")

    family, betas_out = _scheduler_betas(c, where, T, notes)
    pred = c["prediction_type"]
    if pred not in _PREDICTION_FROM_DIFFUSERS:
        raise _refuse(where, "prediction_type", pred, f"supported: {', '.join(_PREDICTION_FROM_DIFFUSERS)}")

    sampling = _scheduler_sampling(c, cfg, cls, where, T, notes)
    diffusion = DiffusionConfig(schedule=family, timesteps=T, prediction=_PREDICTION_FROM_DIFFUSERS[pred],
                                betas=betas_out)
    return diffusion, sampling, notes


def _scheduler_betas(c: dict[str, Any], where: str, T: int, notes: list[str]) -> tuple[str, tuple[float, ...] | None]:
    """(schedule family, explicit betas or None when they are exactly that named schedule)."""
    from ddpm_studio.engine.schedules import SCHEDULE_KINDS, get_betas

    family = "linear"
    if c["trained_betas"] is not None:
        try:
            betas = np.asarray(c["trained_betas"], dtype=np.float64)
        except (TypeError, ValueError):
            raise DiffusersFormatError(f"{where}: trained_betas must be a list of numbers") from None
        if betas.shape != (T,):
            raise DiffusersFormatError(f"{where}: trained_betas has {betas.size} values; num_train_timesteps is {T}")
        described = "the trained_betas listed in the file"
    else:
        name = c["beta_schedule"]
        if name not in _SCHEDULE_FROM_DIFFUSERS:
            raise _refuse(where, "beta_schedule", name, f"supported: {', '.join(_SCHEDULE_FROM_DIFFUSERS)}")
        family = _SCHEDULE_FROM_DIFFUSERS[name]
        betas = diffusers_betas(name, T, _as_float(where, "beta_start", c["beta_start"]),
                                _as_float(where, "beta_end", c["beta_end"]))
        described = f"beta_schedule={name} from beta_start={c['beta_start']} to beta_end={c['beta_end']}"
    if not np.all((betas > 0) & (betas < 1)):
        raise DiffusersFormatError(f"{where}: the betas ({described}) must all lie strictly between 0 and 1")

    exact = [k for k in SCHEDULE_KINDS if np.allclose(get_betas(k, T), betas, rtol=1e-6, atol=0.0)]
    if exact:
        family, betas_out = exact[0], None
    else:
        betas_out = tuple(float(b) for b in betas)
        notes.append(f"the noise schedule ({described}, T={T}) is not one of DDPM Studio's named schedules; "
                     f"these exact betas are kept in the run config (diffusion.betas; diffusion.schedule names the "
                     f"closest family, {family!r})")

    return family, betas_out


def _scheduler_sampling(c: dict[str, Any], cfg: dict[str, Any], cls: str, where: str, T: int,
                        notes: list[str]) -> dict[str, Any]:
    """The SamplingConfig fields the scheduler's sampling-time settings set."""
    # Sampling-time settings, each honoured by a SamplingConfig field.
    sampling: dict[str, Any] = {"clip_denoised": _as_bool(where, "clip_sample", c["clip_sample"]),
                                "steps": min(SamplingConfig.steps, T)}
    if cls == "DDIMScheduler":
        sampling["sampler"] = "ddim"
    sampling["clip_range"] = _as_float(where, "clip_sample_range", c["clip_sample_range"])
    if _as_bool(where, "thresholding", c["thresholding"]):
        sampling["dynamic_threshold"] = _as_float(where, "dynamic_thresholding_ratio", c["dynamic_thresholding_ratio"])
        sampling["threshold_max"] = _as_float(where, "sample_max_value", c["sample_max_value"])
    spacing = c["timestep_spacing"]
    if spacing not in DIFFUSERS_SPACINGS:  # diffusers' names are ours
        raise _refuse(where, "timestep_spacing", spacing, f"supported: {', '.join(DIFFUSERS_SPACINGS)}")
    sampling["spacing"] = spacing
    sampling["steps_offset"] = _as_int(where, "steps_offset", c["steps_offset"])
    var = c.get("variance_type")
    if cls == "DDPMScheduler":
        if var == "fixed_large_log":
            raise _refuse(where, "variance_type", var, "diffusers' own DDPMScheduler takes the square root of "
                          "log(beta_t) as the noise scale (NaN); use fixed_large")
        if var not in _VARIANCE_FROM_DIFFUSERS:
            raise _refuse(where, "variance_type", var, "DDPM Studio samples with a fixed variance: "
                          f"{', '.join(_VARIANCE_FROM_DIFFUSERS)}")
        sampling["variance"] = _VARIANCE_FROM_DIFFUSERS[var]
    elif cls == "DPMSolverMultistepScheduler":
        if var is not None:
            raise _refuse(where, "variance_type", var, "a network that predicts its variance is not supported")
        given = {k: c[k] for k in _DPM_SAMPLING_KEYS if k in cfg and cfg[k] != SCHEDULER_DEFAULTS[cls][k]}
        notes.append("the folder's scheduler is DPM-Solver (DPMSolverMultistepScheduler"
                     + (f": {', '.join(f'{k}={v!r}' for k, v in given.items())}" if given else ", its defaults")
                     + "); DDPM Studio reads its noise schedule, prediction, spacing and thresholding from it")
    if cls == "DDIMScheduler" and not _as_bool(where, "set_alpha_to_one", c["set_alpha_to_one"]):
        notes.append("set_alpha_to_one=false is not supported; the last DDIM step goes to alpha-bar = 1")
    return sampling


# -- weights ------------------------------------------------------------------------------------


def _load_bin(path: Path) -> dict[str, "torch.Tensor"]:
    import torch

    try:
        # weights_only=True: plain tensors and containers only; a pickle built to run code is
        # refused before anything in it executes.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "refused"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DiffusersFormatError(f"{path.name} was refused (a .bin file is only read as plain tensors, because "
                                   f"unpickling arbitrary objects can run code): {first}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k,
                                              v in state.items()):
        raise DiffusersFormatError(f"{path.name} is not a state dict of named tensors")
    return state


def _load_safetensors(path: Path) -> dict[str, "torch.Tensor"]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise DiffusersFormatError(f"{path.name} could not be read (truncated or not a safetensors file): "
                                   f"{e}") from None


def load_unet_weights(unet_dir: str | os.PathLike) -> tuple[dict[str, "torch.Tensor"], Path]:
    """The UNet's state dict (float32, diffusers' current key names) and the file it came from.

    Looks for ``diffusion_pytorch_model.safetensors`` first, then ``.bin``, then their sharded
    (``.index.json``) and ``fp16`` variants.
    """

    d = Path(unet_dir)
    state: dict[str, torch.Tensor] | None = None
    source = None
    for variant in ("", ".fp16"):
        for ext, loader in ((".safetensors", _load_safetensors), (".bin", _load_bin)):
            single = d / f"{WEIGHTS_NAME}{variant}{ext}"
            index = d / f"{WEIGHTS_NAME}{variant}{ext}.index.json"
            if single.is_file():
                state, source = loader(single), single
            elif index.is_file():
                weight_map = _read_json(index).get("weight_map")
                if not isinstance(weight_map, dict):
                    raise DiffusersFormatError(f"{index} has no weight_map")
                state = {}
                for shard in sorted(set(weight_map.values())):
                    if Path(shard).name != shard:
                        raise DiffusersFormatError(f"{index} names a shard outside its folder: {shard!r}")
                    state.update(loader(d / shard))
                source = index
            if state is not None:
                break
        if state is not None:
            break
    if state is None:
        raise DiffusersFormatError(f"{d} holds no weights (expected {WEIGHTS_NAME}.safetensors or {WEIGHTS_NAME}.bin)")
    state = _rename_legacy_attention(state)
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}, source


def _rename_legacy_attention(state: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """Early diffusers (< 0.14) named attention projections query/key/value/proj_attn."""
    renames = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if len(parts) >= 3 and "attentions" in parts and parts[-2] in renames:
            k = ".".join(parts[:-2] + [renames[parts[-2]], parts[-1]])
        out[k] = v
    return out


# -- import -------------------------------------------------------------------------------------


def load_diffusers_folder(folder: str | os.PathLike, device: "str | torch.device | None" = None) -> "LoadedModel":
    """Open a diffusers DDPM folder (pipeline, or a bare UNet folder) as a LoadedModel for sampling.

    Never touches the network. Raises DiffusersFormatError (a ValueError) naming what is missing or
    which setting is unsupported.
    """
    import torch

    from ddpm_studio.engine.devices import select_device
    from ddpm_studio.engine.diffusion import GaussianDiffusion
    from ddpm_studio.engine.unet import build_model
    from ddpm_studio.artifacts.loaded import LoadedModel, ready_for_sampling
    from ddpm_studio.artifacts.checkpoints import load_weights_into

    path = Path(folder).expanduser()
    if not path.exists():
        raise DiffusersFormatError(missing_path_message(folder))
    unet_dir, sched_path, notes = _locate(path)
    model_cfg, more = model_from_unet_config(_read_json(unet_dir / "config.json"), str(unet_dir / "config.json"))
    notes += more
    if sched_path is None:
        sched_cfg: dict[str, Any] = {}
        notes.append("no scheduler config found; assumed diffusers' DDPMScheduler defaults "
                     "(linear betas 1e-4 to 0.02, T=1000, epsilon prediction)")
    else:
        sched_cfg = _read_json(sched_path)
    diff_cfg, sampling_over, more = diffusion_from_scheduler_config(sched_cfg, str(sched_path or "scheduler defaults"))
    notes += more

    config = RunConfig(model=model_cfg, diffusion=diff_cfg,
                       data=DataConfig(image_size=model_cfg.image_size, channels=str(model_cfg.in_channels)),
                       sampling=SamplingConfig(**sampling_over))
    try:
        config.validate()
    except ValueError as e:
        raise DiffusersFormatError(f"{path}: {e}") from None

    # The network must fit before anything is built (closed form, no allocation; issue 15).
    from ddpm_studio import footprint

    dev = device if isinstance(device, torch.device) else select_device(device or "auto")
    memory, where = footprint.device_memory(dev)
    try:
        footprint.check_fits(model_cfg, memory=memory, where=where)
    except ValueError as e:
        raise DiffusersFormatError(f"{unet_dir / 'config.json'}: {e}") from None
    # The config alone rebuilds the network and the process (issue 15): nothing else is passed on.
    try:
        model = build_model(model_cfg)
    except ValueError as e:
        raise DiffusersFormatError(f"{unet_dir / 'config.json'}: {e}") from None
    state, weights_file = load_unet_weights(unet_dir)
    load_weights_into(model, state, f"diffusers ({weights_file.name})")
    ready_for_sampling(model, dev)
    diffusion = GaussianDiffusion.from_config(diff_cfg)
    return LoadedModel(model, diffusion, config, 0, str(path), notes)


# -- export -------------------------------------------------------------------------------------


def unet_config_for(spec: Any) -> dict[str, Any]:
    """The UNet2DModel config.json for one of our networks (``UNet.spec``): every option written out."""
    if spec.patch_size > 1:
        raise DiffusersFormatError(
            f"model.patch_size={spec.patch_size} cannot be written for diffusers: UNet2DModel has no patch "
            "(pixel unshuffle) input, so this network has no UNet2DModel twin; it stays a DDPM Studio run "
            "(ddpm-studio sample and the Sampling panel use it as it is)")
    chans = list(spec.block_out_channels)
    L = len(chans)
    attn = [spec.image_size // 2**i in spec.attention_resolutions for i in range(L)]
    widths = spec.attention_widths()
    if spec.attention_head_dim:
        head_dim = spec.attention_head_dim
    elif spec.num_heads == 1:
        head_dim = None  # diffusers: one head of the layer's full width
    else:
        if len(widths) != 1:
            raise DiffusersFormatError(
                f"model.num_heads={spec.num_heads} cannot be written for diffusers: it gives every attention layer one "
                f"head width (attention_head_dim), but this network attends at widths {widths}, whose "
                f"{spec.num_heads} heads would have different widths")
        head_dim = widths[0] // spec.num_heads
    if spec.out_channels != spec.in_channels:
        raise DiffusersFormatError(f"out_channels={spec.out_channels} differs from in_channels={spec.in_channels}")
    # diffusers' attn_norm_num_groups=None means norm_num_groups (default conditioning) or no norm (scale_shift).
    implied = spec.norm_groups if spec.time_conditioning == "default" else 0
    if spec.attn_norm_groups == implied:
        attn_groups = None
    elif spec.attn_norm_groups:
        attn_groups = spec.attn_norm_groups
    else:
        raise DiffusersFormatError("a middle attention without GroupNorm under default time conditioning cannot be "
                                   "written for diffusers")

    def number(x: float) -> float | int:
        return int(x) if float(x) == int(x) else float(x)

    return {
        "_class_name": UNET_CLASS, "_diffusers_version": DIFFUSERS_VERSION_WRITTEN,
        "sample_size": spec.image_size, "in_channels": spec.in_channels, "out_channels": spec.out_channels,
        "center_input_sample": bool(spec.center_input_sample), "time_embedding_type": "positional",
        "time_embedding_dim": spec.time_embedding_dim or None,
        "freq_shift": number(spec.freq_shift), "flip_sin_to_cos": spec.flip_sin_to_cos,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]],
        "block_out_channels": chans, "layers_per_block": spec.num_res_blocks,
        "mid_block_scale_factor": number(spec.mid_block_scale_factor),
        "downsample_padding": spec.downsample_padding, "downsample_type": "conv", "upsample_type": "conv",
        "dropout": spec.dropout, "act_fn": spec.act_fn, "attention_head_dim": head_dim,
        "norm_num_groups": spec.norm_groups, "attn_norm_num_groups": attn_groups, "norm_eps": spec.norm_eps,
        "resnet_time_scale_shift": spec.time_conditioning, "add_attention": bool(spec.add_attention),
        "class_embed_type": None, "num_class_embeds": None, "num_train_timesteps": None,
    }


def _diffusers_spacing(spacing: str) -> str:
    """Our spacing as a diffusers ``timestep_spacing``: its own names as they are; auto and logsnr, which
    diffusers lacks, as trailing (like them, it starts every chain at t = T-1)."""
    return spacing if spacing in DIFFUSERS_SPACINGS else "trailing"


def scheduler_config_for(betas: np.ndarray, kind: str, prediction: str, sampling: SamplingConfig) -> dict[str, Any]:
    """A DDPMScheduler config giving ``betas``: a named ``beta_schedule`` when diffusers' formula
    reproduces them (to 1e-9 relative), else the exact list as ``trained_betas``; the sampling
    settings (clipping, thresholding, spacing: :func:`_diffusers_spacing`) as the matching scheduler keys."""
    from ddpm_studio.engine.schedules import _scaled_ends

    T = int(betas.size)
    start, end = _scaled_ends(T)
    cfg: dict[str, Any] = {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION_WRITTEN,
                           "num_train_timesteps": T, "beta_start": start, "beta_end": end, "beta_schedule": "linear",
                           "trained_betas": None}
    name = _SCHEDULE_TO_DIFFUSERS.get(kind)
    if name is not None and np.allclose(diffusers_betas(name, T, start, end), betas, rtol=1e-9, atol=0.0):
        cfg["beta_schedule"] = name
    else:
        cfg["trained_betas"] = [float(b) for b in betas]
    threshold = getattr(sampling, "dynamic_threshold", None)
    cfg.update({"variance_type": sampling.variance, "clip_sample": bool(sampling.clip_denoised),
                "clip_sample_range": float(getattr(sampling, "clip_range", 1.0)),
                "prediction_type": _PREDICTION_TO_DIFFUSERS[prediction], "thresholding": threshold is not None,
                "dynamic_thresholding_ratio": 0.995 if threshold is None else float(threshold),
                "sample_max_value": float(getattr(sampling, "threshold_max", 1.0)),
                "timestep_spacing": _diffusers_spacing(getattr(sampling, "spacing", "leading")),
                "steps_offset": int(getattr(sampling, "steps_offset", 0)), "rescale_betas_zero_snr": False})
    return cfg


def write_diffusers_folder(loaded: "LoadedModel", out: Path, *, overwrite: bool = False) -> Path:
    """Write ``loaded`` (its EMA network, schedule and sampling defaults) as a diffusers DDPMPipeline folder."""
    import torch
    from safetensors.torch import save

    if out.exists() and not out.is_dir():
        raise DiffusersFormatError(f"{out} is a file; the export needs a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DiffusersFormatError(f"{out} already exists and is not empty; choose a new or empty folder")

    spec = getattr(loaded.model, "spec", None)
    if spec is None:
        raise DiffusersFormatError("only DDPM Studio U-Nets can be exported")
    unet_cfg = unet_config_for(spec)
    schedule = loaded.diffusion.schedule
    sched_cfg = scheduler_config_for(schedule.betas, schedule.kind, loaded.diffusion.prediction, loaded.config.sampling)

    state = loaded.model.state_dict()
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in state.items()}
    atomic_write_bytes(out / "unet" / f"{WEIGHTS_NAME}.safetensors", save(tensors, metadata={"format": "pt"}))
    atomic_write_text(out / "unet" / "config.json", json.dumps(unet_cfg, indent=2) + "\n")
    atomic_write_text(out / "scheduler" / "scheduler_config.json", json.dumps(sched_cfg, indent=2) + "\n")
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION_WRITTEN,
             "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", UNET_CLASS]}
    atomic_write_text(out / "model_index.json", json.dumps(index, indent=2) + "\n")
    return out
