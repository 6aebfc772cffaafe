"""One config object describes a run.

The GUI, the CLI and checkpoints all read and write :class:`RunConfig`. It is plain data
(dataclasses of str/int/float/bool/tuple), serialisable to JSON, and validated at the boundary:
every invalid value raises ``ValueError`` naming the field, what is allowed and what was given.

No torch and no Qt here: importing this module must stay instant.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

from ddpm_studio import footprint

CONFIG_VERSION = 1

SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid")
PREDICTIONS = ("epsilon", "x0", "v")
LOSS_WEIGHTINGS = ("none", "min_snr")
VARIANCES = ("fixed_small", "fixed_large")  # sigma_t^2 = beta-tilde_t  |  sigma_t^2 = beta_t
SAMPLERS = ("ddpm", "ddim", "dpmpp-2m", "dpmpp-3m", "dpmpp-2m-sde")
# Per sampler: a short label, a sensible default step count (None: ddpm always walks all T steps), the
# SamplingConfig fields it reads besides clip/num_images/seed, and one line in plain words. Shared by the GUI's sampler list and the CLI's help; engine/diffusion.py dispatches.
SAMPLER_INFO: dict[str, dict[str, Any]] = {
    "ddpm": dict(label="DDPM (ancestral, all T steps)", default_steps=None, settings=("variance",),
                 hint="The paper's own sampler: one network call per timestep (T of them), slow but the reference."),
    "ddim": dict(label="DDIM", default_steps=50, settings=("steps", "spacing", "eta"),
                 hint="Deterministic shortcut through fewer timesteps; good at 50-100 steps (Song et al. 2021)."),
    "dpmpp-2m": dict(label="DPM-Solver++ 2M (fast, default)", default_steps=20, settings=("steps", "spacing"),
                     hint="A second-order solver that reuses the previous step; good images in 10-20 steps (Lu et al. 2022)."),
    "dpmpp-3m": dict(label="DPM-Solver++ 3M", default_steps=20, settings=("steps", "spacing"),
                     hint="Third-order version of 2M; sometimes a little better at 10-20 steps, less steady at very few."),
    "dpmpp-2m-sde": dict(label="DPM-Solver++ 2M SDE", default_steps=20, settings=("steps", "spacing"),
                         hint="2M that adds fresh noise at every step; more varied detail, wants ~20 steps or more."),
}


def sampler_default_steps(sampler: str, T: int) -> int:
    """The step count a sampler starts with for a model of T timesteps (ddpm: all T)."""
    _check_choice("sampling.sampler", sampler, SAMPLERS)
    default = SAMPLER_INFO[sampler]["default_steps"]
    return T if default is None else min(default, T)


# How a few-step sampler spreads its steps over 0..T-1 (diffusers' names; Lin et al. 2024, Table 2):
# trailing and linspace start every chain at t = T-1; leading (diffusers' old default) does not.
SPACINGS = ("trailing", "linspace", "leading")
SPACING_HINTS = {
    "trailing": "Evenly spaced, starting from pure noise at t = T-1 for every step count (recommended).",
    "linspace": "Evenly spaced from T-1 down to 0.",
    "leading": "diffusers' old default; starts below T-1 (far below when steps > T/2). For comparisons.",
}
ACTIVATIONS = ("silu", "mish", "gelu", "relu")  # residual-block nonlinearity (diffusers' act_fn; "swish" is silu)
TIME_CONDITIONINGS = ("default", "scale_shift")  # how a residual block takes the time embedding
CHANNELS = ("auto", "1", "3")
BACKGROUNDS = ("white", "black")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _check_range(name: str, value: Any, lo: float | None, hi: float | None, integer: bool = False) -> None:
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"{name} must be a whole number; got {value!r}")
    if not integer and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise ValueError(f"{name} must be a number; got {value!r}")
    if value != value:  # NaN
        raise ValueError(f"{name} must be a number; got NaN")
    if lo is not None and value < lo or hi is not None and value > hi:
        span = f"from {lo} to {hi}" if lo is not None and hi is not None else (f"at least {lo}" if lo is not None else f"at most {hi}")
        raise ValueError(f"{name} must be {span}; got {value!r}")


@dataclass
class ModelConfig:
    """The denoising U-Net (Ho et al. 2020, appendix B)."""

    preset: str = "tiny"  # name the shape came from; "custom" once a field is edited by hand
    image_size: int = 16  # side of the square images the network sees (px); set from DataConfig
    in_channels: int = 3  # 1 (grayscale) or 3 (RGB); resolved from the dataset when channels=auto
    base_channels: int = 32  # width of the first level; every level is a multiple of it
    channel_mult: tuple[int, ...] = (1, 2, 2)  # width multiplier per resolution level
    num_res_blocks: int = 1  # residual blocks per resolution level (paper: 2)
    attention_resolutions: tuple[int, ...] = (8,)  # feature-map sides (px) that get self-attention
    dropout: float = 0.0  # dropout inside residual blocks (paper: 0.1 on CIFAR-10)
    num_heads: int = 1  # attention heads (paper: 1)
    # Settings that only imported (diffusers-format) models change; the defaults are the paper's.
    attention_head_dim: int | None = None  # channels per head; None = width / num_heads
    norm_groups: int | None = None  # GroupNorm groups; None = largest divisor of every width <= min(32, base/4) (32 for paper models)
    downsample_padding: int = 0  # 0 = the paper's TF "SAME" stride-2 conv (pad bottom/right), 1 = symmetric
    flip_sin_to_cos: bool = False  # time embedding order: False = [sin, cos] (paper)
    freq_shift: float = 1.0  # time embedding frequencies exp(-log(10000) i / (half - freq_shift)); paper: 1
    norm_eps: float = 1e-6  # epsilon of every GroupNorm (paper: 1e-6; diffusers' UNet2DModel default: 1e-5)
    attn_norm_groups: int | None = None  # GroupNorm groups of the middle block's attention; None = norm_groups
    add_attention: bool = True  # self-attention in the middle block (paper: yes)
    mid_block_scale_factor: float = 1.0  # the middle block's residual sums are divided by this (paper: 1)
    time_embedding_dim: int | None = None  # width of the time-embedding MLP; None = 4 x base_channels (paper)
    center_input_sample: bool = False  # map the input x to 2x - 1 before the first conv (paper: no)
    act_fn: str = "silu"  # nonlinearity inside residual blocks: silu (paper), mish, gelu, relu
    time_conditioning: str = "default"  # default = temb added after conv1 (paper); scale_shift = norm2 output * (1 + s) + b

    def validate(self) -> None:
        _check_range("model.image_size", self.image_size, 8, 256, integer=True)
        _check_choice("model.in_channels", self.in_channels, (1, 3))
        _check_range("model.base_channels", self.base_channels, 8, 512, integer=True)
        if not self.channel_mult or any(not isinstance(m, int) or m < 1 for m in self.channel_mult):
            raise ValueError(f"model.channel_mult must be a non-empty list of whole numbers >= 1; got {self.channel_mult!r}")
        levels = len(self.channel_mult)
        if self.image_size % (2 ** (levels - 1)) != 0:
            raise ValueError(
                f"model.channel_mult has {levels} levels, so model.image_size must be divisible by "
                f"{2 ** (levels - 1)}; got image_size={self.image_size}"
            )
        _check_range("model.num_res_blocks", self.num_res_blocks, 1, 8, integer=True)
        for r in self.attention_resolutions:
            _check_range("model.attention_resolutions[]", r, 1, 256, integer=True)
        _check_range("model.dropout", self.dropout, 0.0, 0.9)
        _check_range("model.num_heads", self.num_heads, 1, 64, integer=True)
        if self.attention_head_dim is not None:
            _check_range("model.attention_head_dim", self.attention_head_dim, 1, 4096, integer=True)
        if self.norm_groups is not None:
            _check_range("model.norm_groups", self.norm_groups, 1, 512, integer=True)
        _check_choice("model.downsample_padding", self.downsample_padding, (0, 1))
        if not isinstance(self.flip_sin_to_cos, bool):
            raise ValueError(f"model.flip_sin_to_cos must be true or false; got {self.flip_sin_to_cos!r}")
        _check_range("model.freq_shift", self.freq_shift, 0.0, 1.0)
        _check_range("model.norm_eps", self.norm_eps, 1e-12, 1.0)
        if self.attn_norm_groups is not None:
            _check_range("model.attn_norm_groups", self.attn_norm_groups, 1, 512, integer=True)
        for name in ("add_attention", "center_input_sample"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"model.{name} must be true or false; got {getattr(self, name)!r}")
        _check_range("model.mid_block_scale_factor", self.mid_block_scale_factor, 1e-6, 1e6)
        if self.time_embedding_dim is not None:
            _check_range("model.time_embedding_dim", self.time_embedding_dim, 1, 65536, integer=True)
        _check_choice("model.act_fn", self.act_fn, ACTIVATIONS)
        _check_choice("model.time_conditioning", self.time_conditioning, TIME_CONDITIONINGS)
        if self.base_channels % 8 != 0:
            raise ValueError(f"model.base_channels must be divisible by 8 (GroupNorm); got {self.base_channels}")
        n = footprint.parameter_count(self)  # closed form, microseconds: nothing is built
        if n > footprint.MAX_PARAMETERS:
            raise ValueError(
                f"model: base_channels {self.base_channels} with channel_mult {list(self.channel_mult)} makes a network "
                f"of {n:,} parameters ({n * footprint.BYTES_PER_VALUE / 2**30:,.0f} GB of weights); the most this "
                f"program builds is {footprint.MAX_PARAMETERS:,}"
            )


@dataclass
class DiffusionConfig:
    """The forward process and the training objective."""

    schedule: str = "linear"  # beta schedule: linear (paper), cosine (Nichol & Dhariwal 2021), quadratic, sigmoid
    timesteps: int = 1000  # T, the number of diffusion steps (paper: 1000)
    prediction: str = "epsilon"  # what the network predicts: epsilon (paper), x0, or v (Salimans & Ho 2022)
    loss_weighting: str = "none"  # none = the paper's L_simple; min_snr = Hang et al. 2023
    min_snr_gamma: float = 5.0  # gamma of min-SNR weighting (used only when loss_weighting=min_snr)
    betas: tuple[float, ...] | None = None  # explicit beta_1..beta_T (imported models); overrides schedule

    def validate(self) -> None:
        _check_choice("diffusion.schedule", self.schedule, SCHEDULES)
        _check_range("diffusion.timesteps", self.timesteps, 10, 4000, integer=True)
        _check_choice("diffusion.prediction", self.prediction, PREDICTIONS)
        _check_choice("diffusion.loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        _check_range("diffusion.min_snr_gamma", self.min_snr_gamma, 0.01, 1000.0)
        if self.betas is not None:
            if len(self.betas) != self.timesteps:
                raise ValueError(f"diffusion.betas must have diffusion.timesteps={self.timesteps} values; got {len(self.betas)}")
            if any(not (0.0 < float(b) < 1.0) for b in self.betas):
                raise ValueError("diffusion.betas must all lie strictly between 0 and 1")


@dataclass
class DataConfig:
    """Which images, and how they are turned into training tensors."""

    folder: str | None = None  # image folder; None = the built-in dataset
    image_size: int = 16  # square side after resize-short-side + center-crop (px); 16 = the tiny preset's, fast on a CPU
    channels: str = "auto"  # auto (grayscale if every image is), "1" (grayscale) or "3" (RGB)
    flip: bool = False  # random horizontal flip at training time: helps left-right symmetric scenes, hurts text, digits, logos
    background: str = "white"  # what transparent pixels are composited onto
    min_size: int = 0  # skip images whose short side is smaller than this (px); 0 = keep all

    def validate(self) -> None:
        _check_range("data.image_size", self.image_size, 8, 256, integer=True)
        _check_choice("data.channels", self.channels, CHANNELS)
        _check_choice("data.background", self.background, BACKGROUNDS)
        _check_range("data.min_size", self.min_size, 0, 100000, integer=True)
        if not isinstance(self.flip, bool):
            raise ValueError(f"data.flip must be true or false; got {self.flip!r}")


@dataclass
class TrainConfig:
    """Optimisation, logging and checkpointing."""

    steps: int = 4000  # total optimisation steps of the run (resume counts from where it stopped)
    minutes: float | None = None  # optional wall-clock limit for this session of training
    batch_size: int = 64  # global batch size (split across processes under torchrun)
    lr: float = 1e-3  # peak AdamW learning rate (paper: 2e-4 for its 35.7M-parameter model)
    warmup_steps: int = 200  # linear learning-rate warm-up (paper: 5000)
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # clip the global gradient norm to this (paper: 1.0); 0 = off
    ema_decay: float = 0.999  # EMA of the weights used for previews and sampling (paper: 0.9999)
    ema_warmup: bool = True  # decay = min(ema_decay, (1 + step) / (10 + step)) so early EMA follows the model
    seed: int = 0  # seeds weights, data order, noise and previews
    device: str = "auto"  # auto = CUDA, then Apple MPS, then CPU
    precision: str = "auto"  # auto = bf16 autocast on CPUs with native bf16, else fp32; or fp32 / bf16 / fp16 (CUDA)
    log_every: int = 10  # steps between metric events / metrics.jsonl lines
    preview_every: int = 500  # steps between preview samples from the EMA model; 0 = off
    preview_count: int = 16  # images per preview
    preview_sampling_steps: int = 20  # sampler steps per preview (DPM-Solver++ 2M: 20 suffice)
    checkpoint_every: int = 1000  # steps between checkpoints; 0 = only by time and at the end
    checkpoint_minutes: float = 2.0  # also checkpoint after this much training time
    keep_checkpoints: int = 3  # how many recent checkpoints to keep on disk
    preview_sampler: str = "dpmpp-2m"  # the sampler of the previews (trailing spacing, clipped x_0)

    def validate(self) -> None:
        _check_range("train.steps", self.steps, 1, 10_000_000, integer=True)
        if self.minutes is not None:
            _check_range("train.minutes", self.minutes, 0.01, 10_000_000)
        _check_range("train.batch_size", self.batch_size, 1, 65536, integer=True)
        _check_range("train.lr", self.lr, 1e-8, 1.0)
        _check_range("train.warmup_steps", self.warmup_steps, 0, 10_000_000, integer=True)
        _check_range("train.weight_decay", self.weight_decay, 0.0, 10.0)
        _check_range("train.grad_clip", self.grad_clip, 0.0, 1e6)
        _check_range("train.ema_decay", self.ema_decay, 0.0, 0.999999)
        _check_range("train.seed", self.seed, 0, 2**63 - 1, integer=True)
        _check_choice("train.device", self.device, DEVICES)
        _check_choice("train.precision", self.precision, PRECISIONS)
        _check_range("train.log_every", self.log_every, 1, 1_000_000, integer=True)
        _check_range("train.preview_every", self.preview_every, 0, 10_000_000, integer=True)
        _check_range("train.preview_count", self.preview_count, 1, 256, integer=True)
        _check_range("train.preview_sampling_steps", self.preview_sampling_steps, 1, 4000, integer=True)
        _check_range("train.checkpoint_every", self.checkpoint_every, 0, 10_000_000, integer=True)
        _check_range("train.checkpoint_minutes", self.checkpoint_minutes, 0.0, 10_000_000)
        _check_range("train.keep_checkpoints", self.keep_checkpoints, 1, 1000, integer=True)
        if not isinstance(self.ema_warmup, bool):
            raise ValueError(f"train.ema_warmup must be true or false; got {self.ema_warmup!r}")
        _check_choice("train.preview_sampler", self.preview_sampler, SAMPLERS)


@dataclass
class SamplingConfig:
    """How images are generated from a trained model."""

    sampler: str = "dpmpp-2m"  # one of SAMPLERS (see SAMPLER_INFO); ddpm = the paper's Algorithm 2
    steps: int = 20  # network calls of ddim / dpmpp-* (ddpm always walks all T steps)
    eta: float = 0.0  # DDIM stochasticity: 0 = deterministic, 1 = ancestral with beta-tilde
    variance: str = "fixed_small"  # ancestral sampling: fixed_small = beta-tilde_t, fixed_large = beta_t
    clip_denoised: bool = True  # clip the predicted x_0 to [-clip_range, clip_range] at every step
    num_images: int = 16  # how many images per generation (shown as a grid)
    seed: int = 0  # same seed, same images
    spacing: str = "trailing"  # which timesteps ddim / dpmpp-* visit (SPACINGS): trailing starts at T-1 for every step count
    steps_offset: int = 0  # added to every "leading" timestep (diffusers' steps_offset; 1 for Stable-Diffusion-style models)
    clip_range: float = 1.0  # the bound of clip_denoised (diffusers' clip_sample_range)
    dynamic_threshold: float | None = None  # Imagen's dynamic thresholding: this quantile of |x_0| per image; None = off
    threshold_max: float = 1.0  # the largest bound dynamic thresholding may pick (diffusers' sample_max_value)

    def validate(self) -> None:
        _check_choice("sampling.sampler", self.sampler, SAMPLERS)
        _check_range("sampling.steps", self.steps, 1, 4000, integer=True)
        _check_range("sampling.eta", self.eta, 0.0, 1.0)
        _check_choice("sampling.variance", self.variance, VARIANCES)
        _check_range("sampling.num_images", self.num_images, 1, 1024, integer=True)
        _check_range("sampling.seed", self.seed, 0, 2**63 - 1, integer=True)
        if not isinstance(self.clip_denoised, bool):
            raise ValueError(f"sampling.clip_denoised must be true or false; got {self.clip_denoised!r}")
        _check_choice("sampling.spacing", self.spacing, SPACINGS)
        _check_range("sampling.steps_offset", self.steps_offset, 0, 1000, integer=True)
        _check_range("sampling.clip_range", self.clip_range, 1e-6, 1e6)
        if self.dynamic_threshold is not None:
            _check_range("sampling.dynamic_threshold", self.dynamic_threshold, 0.0, 1.0)
        _check_range("sampling.threshold_max", self.threshold_max, 1.0, 1e6)


NO_STEP_LIMIT = 10_000_000  # train.steps of a run the clock ends (CLI --minutes without --steps): shown as no total


# Named presets: a model shape plus the diffusion, data and training settings that suit it
# (sections "diffusion", "data" and "train" are optional; fields left out keep the defaults above). Plain data, so the GUI
# can list them without importing torch. The engine test checks ddpm-cifar10 is 35.7M parameters.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "description": "The quickest: 16 px, 1.1M parameters; recognisable samples on a laptop CPU in minutes.",
        "model": dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                      attention_resolutions=(8,), dropout=0.0, num_heads=1),
        # Chosen by benchmarks/bench_quality.py at fixed CPU budgets on two datasets (BENCHMARKS.md,
        # "Sample quality"): 16 px (5.6x the images/s of 32 px); v-prediction with min-SNR-5 weighting
        # (Frechet distances 3-50x lower than any epsilon-prediction setting at the same budget, on
        # both sets and two seeds; unweighted v diverged); lr 1e-3 (as good as 2e-3, and 4e-3 diverged once, so
        # 1e-3 keeps a margin on data we have not seen); batch 32 (beat 16 and 64); EMA 0.995 (an
        # average over ~200 steps, so it does not lag far behind a model still improving fast).
        "diffusion": dict(prediction="v", loss_weighting="min_snr", min_snr_gamma=5.0),
        "data": dict(image_size=16),
        # previews every 200 steps (under a minute on a 2-core CPU; one costs 2-3 s there, ~4 % of
        # the time): a first run shows its progress five times in its first five minutes
        "train": dict(lr=1e-3, warmup_steps=100, batch_size=32, ema_decay=0.995, steps=4000, preview_every=200),
    },
    "small": {
        "description": "A few million parameters; better samples, wants a GPU or patience.",
        "model": dict(base_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                      attention_resolutions=(16,), dropout=0.1, num_heads=1),
        # v-prediction with min-SNR-5, as measured for tiny (not measured at this size separately).
        "diffusion": dict(prediction="v", loss_weighting="min_snr", min_snr_gamma=5.0),
        "data": dict(image_size=32),
        "train": dict(lr=5e-4, warmup_steps=500, batch_size=64, ema_decay=0.9995, steps=20000),
    },
    "ddpm-cifar10": {
        "description": "The paper's CIFAR-10 model (35.7M parameters); needs a GPU.",
        "model": dict(base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                      attention_resolutions=(16,), dropout=0.1, num_heads=1),
        "data": dict(image_size=32),  # the paper's settings throughout: epsilon-prediction, L_simple
        "train": dict(lr=2e-4, warmup_steps=5000, batch_size=128, ema_decay=0.9999, steps=800000),
    },
}


@dataclass
class RunConfig:
    """Everything that describes a run; what config.json and every checkpoint carry."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    version: int = CONFIG_VERSION

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **sections: dict[str, Any]) -> "RunConfig":
        """A config for preset ``name``; ``sections`` override fields, e.g. ``data={"image_size": 16}``."""
        _check_choice("preset", name, tuple(PRESETS))
        cfg = cls()
        preset = PRESETS[name]
        cfg.model = dataclasses.replace(cfg.model, preset=name, **preset["model"])
        for section in ("diffusion", "data", "train"):
            if section in preset:
                setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **preset[section]))
        for section, values in sections.items():
            setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **values))
        cfg.sync()
        return cfg

    def sync(self) -> "RunConfig":
        """Copy the data settings the network depends on into the model section."""
        self.model.image_size = self.data.image_size
        if self.data.channels in ("1", "3"):
            self.model.in_channels = int(self.data.channels)
        return self

    def validate(self) -> "RunConfig":
        if not isinstance(self.version, int) or isinstance(self.version, bool):
            raise ValueError(f"version must be the number {CONFIG_VERSION} (without quotes); got {_json(self.version)}")
        if self.version != CONFIG_VERSION:
            raise ValueError(f"config version {self.version} is not supported (this program reads version {CONFIG_VERSION})")
        for section in (self.model, self.diffusion, self.data, self.train, self.sampling):
            section.validate()
        if self.model.image_size != self.data.image_size:
            raise ValueError(
                f"model.image_size ({self.model.image_size}) must equal data.image_size ({self.data.image_size})"
            )
        return self

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a run config must be a JSON object; got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            if f.name == "version":
                v = d["version"]
                if not isinstance(v, int) or isinstance(v, bool):
                    raise ValueError(f"version must be the number {CONFIG_VERSION} (without quotes); got {_json(v)}")
                kwargs["version"] = v
                continue
            section_cls = {"model": ModelConfig, "diffusion": DiffusionConfig, "data": DataConfig,
                           "train": TrainConfig, "sampling": SamplingConfig}[f.name]
            kwargs[f.name] = _section_from_dict(section_cls, f.name, d[f.name])
        cfg = cls(**kwargs)
        # data decides the network's image size (and channels, unless "auto"); sync() copies them into
        # model. A model section that says otherwise is an error, not something to overwrite silently.
        given = d.get("model") or {}
        if "image_size" in given and cfg.model.image_size != cfg.data.image_size:
            raise ValueError(
                f"model.image_size ({cfg.model.image_size}) differs from data.image_size ({cfg.data.image_size}); "
                "data.image_size decides the network's size: make them equal or leave model.image_size out"
            )
        if "in_channels" in given and cfg.data.channels in ("1", "3") and cfg.model.in_channels != int(cfg.data.channels):
            raise ValueError(
                f"model.in_channels ({cfg.model.in_channels}) differs from data.channels ({cfg.data.channels}); "
                "make them equal, or set data.channels to auto"
            )
        return cfg

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunConfig":
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def _section_from_dict(section_cls: type, name: str, d: Any) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"config section {name!r} must be a JSON object; got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"unknown field(s) in config section {name!r}: {', '.join(sorted(unknown))}")
    values = dict(d)
    for key, value in values.items():
        _check_type(f"{name}.{key}", fields[key].type, value)
        if isinstance(value, list):  # JSON has no tuples
            values[key] = tuple(value)
    return section_cls(**values)


def _json(value: Any) -> str:
    """A value as it would appear in config.json (so "no" shows its quotes)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# annotation (as written in the dataclasses above) -> (test, words for the message)
_TYPE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "None": (lambda v: v is None, "null"),
    "bool": (lambda v: isinstance(v, bool), "true or false (without quotes)"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "float": (_is_number, "a number"),
    "str": (lambda v: isinstance(v, str), "text in quotes"),
    "tuple[int, ...]": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool)
                                                                       for x in v), "a list of whole numbers"),
    "tuple[float, ...]": (lambda v: isinstance(v, (list, tuple)) and all(_is_number(x) for x in v), "a list of numbers"),
}


def _check_type(name: str, annotation: Any, value: Any) -> None:
    """Refuse a JSON value of the wrong type for field ``name`` (e.g. a number for a folder, "no" for a switch)."""
    kinds = [k.strip() for k in str(annotation).split("|")]
    checks = [_TYPE_CHECKS.get(k) for k in kinds]
    if any(c is None for c in checks):
        return  # a type this table does not know: validate() judges the value
    if not any(test(value) for test, _ in checks):
        words = " or ".join(w for _, w in checks)
        raise ValueError(f"{name} must be {words}; got {_json(value)}")


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Create ``path`` with ``write(file)`` so that a crash at any moment leaves the old file or the new one.

    Writes a temporary file in the same folder, flushes and fsyncs it, then renames it over ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the file the permissions an ordinary open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
