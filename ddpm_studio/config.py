"""One config object describes a run, and one schema describes every setting in it.

The GUI, the CLI and checkpoints all read and write :class:`RunConfig`. It is plain data
(dataclasses of str/int/float/bool/tuple), serialisable to JSON, and validated at the boundary:
every invalid value raises ``ValueError`` naming the field, what is allowed and what was given.

Every field is declared once with :func:`knob`: its default, its range or choices, a one-line help,
its GUI label and its CLI flag. :func:`settings_of` reads those declarations back; validation, the
CLI's flags (``cli.py``), the GUI's tooltips and settings persistence are generated from them, so a
new hyperparameter is one line here.

Length (over 500 lines, on purpose): it is the declaration of every setting of the program (some 80
fields, each with its range, help, label and flag), the presets and the JSON boundary, read top to bottom.

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
from ddpm_studio.engine.choices import (DIFFUSERS_SPACINGS, Activation, Background, Channels, Choice,  # noqa: F401
                                        Device, LossWeighting, Precision, Prediction, Sampler, Schedule, Spacing,
                                        TimeConditioning, Variance, check_choice, resolve_spacing)

CONFIG_VERSION = 1

# The allowed values, as tuples of strings (the enums in engine/choices.py are the declarations).
SCHEDULES = Schedule.values()
PREDICTIONS = Prediction.values()
LOSS_WEIGHTINGS = LossWeighting.values()
VARIANCES = Variance.values()  # sigma_t^2 = beta-tilde_t  |  sigma_t^2 = beta_t
SAMPLERS = Sampler.values()
SPACINGS = Spacing.values()
ACTIVATIONS = Activation.values()  # residual-block nonlinearity (diffusers' act_fn; "swish" is silu)
TIME_CONDITIONINGS = TimeConditioning.values()  # how a residual block takes the time embedding
CHANNELS = Channels.values()
BACKGROUNDS = Background.values()
DEVICES = Device.values()
PRECISIONS = Precision.values()

# Per sampler: a short label, a sensible default step count (None: ddpm always walks all T steps), the
# SamplingConfig fields it reads besides clip/num_images/seed, and one line in plain words. Shared by the GUI's
# sampler list and the CLI's help; engine/diffusion.py dispatches.
SAMPLER_INFO: dict[str, dict[str, Any]] = {
    "ddpm": dict(label="DDPM (ancestral, all T steps)", default_steps=None, settings=("variance",),
                 hint="The paper's own sampler: one network call per timestep (T of them), slow but the reference."),
    "ddim": dict(label="DDIM", default_steps=50, settings=("steps", "spacing", "eta"),
                 hint="Deterministic shortcut through fewer timesteps; good at 50-100 steps (Song et al. 2021)."),
    "dpmpp-2m": dict(label="DPM-Solver++ 2M (fast, default)", default_steps=20, settings=("steps", "spacing"),
                     hint="A second-order solver that reuses the previous step; good images in 10-20 steps, "
                     "often 5 (Lu et al. 2022)."),
    "dpmpp-3m": dict(label="DPM-Solver++ 3M", default_steps=20, settings=("steps", "spacing"),
                     hint="Third-order version of 2M; sometimes a little better at 10-20 steps, less steady at very "
                          "few."),
    "dpmpp-2m-sde": dict(label="DPM-Solver++ 2M SDE", default_steps=20, settings=("steps", "spacing"),
                         hint="2M that adds fresh noise at every step; more varied detail, wants ~20 steps or more."),
    # order 2 with B(h) = e^h - 1 ("bh2"; both diffusers' defaults) on the log-SNR spacing (auto). With trailing
    # steps bh1 had been better (BENCHMARKS.md, "UniPC and the 5-evaluation goal"), but with log-SNR steps bh1
    # fails at 5, while bh2 beat the old bh1-trailing UniPC at 10 steps on all five models measured and at 5 on
    # four, and DPM-Solver++ 2M at 5 on three (BENCHMARKS.md, "A log-SNR spacing for DPM-Solver++").
    "unipc": dict(label="UniPC (fewest steps)", default_steps=10, settings=("steps", "spacing"),
                  hint="A predictor-corrector solver; good images in 5-10 steps, the fewest here (Zhao et al. 2023)."),
}


# Deterministic samplers (DDIM only with eta 0): one x_T, one image, so their timesteps can be tuned to a model
# (sampling/tuning.py; the Sampling panel's Tune, `ddpm-studio tune-steps`).
TUNABLE_SAMPLERS = ("ddim", "dpmpp-2m", "dpmpp-3m", "unipc")


def sampler_default_steps(sampler: str, T: int) -> int:
    """The step count a sampler starts with for a model of T timesteps (ddpm: all T)."""
    check_choice("sampling.sampler", sampler, Sampler)
    default = SAMPLER_INFO[sampler]["default_steps"]
    return T if default is None else min(default, T)


# How a few-step sampler spreads its steps over 0..T-1 (trailing, linspace and leading are diffusers' names;
# Lin et al. 2024, Table 2). Every spacing but leading starts every chain at t = T-1.
SPACING_HINTS = {
    "auto": "Each sampler's best: log-SNR for DPM-Solver++ and UniPC, trailing for DDIM (recommended).",
    "trailing": "Evenly spaced in t, starting from pure noise at t = T-1 for every step count.",
    "linspace": "Evenly spaced from T-1 down to 0.",
    "logsnr": "Evenly spaced in log signal-to-noise: more steps at low noise, where edges are drawn.",
    "leading": "diffusers' old default; starts below T-1 (far below when steps > T/2). For comparisons.",
}
SPACING_LABELS = {"auto": "Auto (the sampler's own)", "trailing": "Trailing", "linspace": "Linspace",
                  "logsnr": "Log-SNR", "leading": "Leading"}

# What old configs wrote as train.steps for a run the clock ends (--minutes without --steps). Such a
# run now has train.steps = None; from_dict maps this number to None so old runs and checkpoints load.
def describe_sampling(sampling, T: int) -> str:
    """One line, e.g. 'dpmpp-2m, 20 steps, logsnr spacing (auto), x_0 clipped, seed 0'."""
    if sampling.sampler == "ddpm":
        what = f"ddpm, all {T} steps, {sampling.variance} variance"
    else:
        used = resolve_spacing(sampling.sampler, sampling.spacing)
        if getattr(sampling, "timesteps", None):
            what = f"{sampling.sampler}, {sampling.steps} tuned steps ({', '.join(map(str, sampling.timesteps))})"
        else:
            what = f"{sampling.sampler}, {sampling.steps} steps, {used} spacing"
            if used != sampling.spacing:
                what += f" ({sampling.spacing})"
        if sampling.sampler == "ddim":
            what += f", eta {sampling.eta:g}"
    if sampling.dynamic_threshold:
        what += f", dynamic thresholding at {sampling.dynamic_threshold:g}"
    elif sampling.clip_denoised:
        what += ", x_0 clipped"
    return f"{what}, seed {sampling.seed}"


NO_STEP_LIMIT = 10_000_000


# -- the schema -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    """What one config field declares besides its type and default."""

    help: str  # one line, shown as the CLI's help and the GUI's tooltip
    label: str  # the GUI's label
    lo: float | None = None  # the smallest allowed value (of every element, for a tuple)
    hi: float | None = None  # the largest
    choices: type[Choice] | tuple | None = None  # the allowed values
    flag: str | None = None  # the CLI flag; "" = none (set another way, or only in config.json)
    metavar: str | None = None  # the CLI's name for the value
    exclusive: str | None = None  # flags with the same key may not be given together


def knob(default: Any, *, help: str, label: str | None = None, lo: float | None = None, hi: float | None = None,
         choices: type[Choice] | tuple | None = None, flag: str | None = None, metavar: str | None = None,
         exclusive: str | None = None) -> Any:
    """A dataclass field that declares its range or choices, help, GUI label and CLI flag once."""
    meta = Knob(help=help, label=label or help.split(";")[0].split(" (")[0], lo=lo, hi=hi, choices=choices,
                flag=flag, metavar=metavar, exclusive=exclusive)
    return field(default=default, metadata={"knob": meta})


@dataclass(frozen=True)
class Setting:
    """One field of one section, as the schema describes it."""

    section: str  # "model", "diffusion", "data", "train" or "sampling"
    name: str
    kind: str  # "bool", "int", "float", "str", "tuple[int, ...]" or "tuple[float, ...]"
    nullable: bool  # None is allowed (and means what the help says)
    default: Any
    knob: Knob

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def flag(self) -> str | None:
        """The CLI flag, e.g. ``--batch-size``; None when the field has none."""
        if self.knob.flag == "":
            return None
        return self.knob.flag or "--" + self.name.replace("_", "-")

    @property
    def choices(self) -> tuple:
        c = self.knob.choices
        if c is None:
            return ()
        return c.values() if isinstance(c, type) and issubclass(c, Choice) else tuple(c)


def settings_of(section: Any) -> list[Setting]:
    """The schema of a section (class or instance, e.g. ``TrainConfig``), in declaration order."""
    cls = section if isinstance(section, type) else type(section)
    name = next(SECTION_NAMES[c] for c in cls.__mro__ if c in SECTION_NAMES)  # a subclass keeps its section
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("knob")
        if meta is None:
            continue
        kinds = [k.strip() for k in str(f.type).split("|")]
        nullable = "None" in kinds
        kind = next(k for k in kinds if k != "None")
        out.append(Setting(name, f.name, kind, nullable, f.default, meta))
    return out


def validate_section(section: Any) -> None:
    """Check every field of a section against its declaration (range, choices, type)."""
    for s in settings_of(section):
        value = getattr(section, s.name)
        if value is None and s.nullable:
            continue
        if s.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{s.key} must be true or false; got {value!r}")
        elif s.choices:
            _check_choice(s.key, value, s.choices)
        elif s.kind in ("int", "float"):
            _check_range(s.key, value, s.knob.lo, s.knob.hi, integer=s.kind == "int")
        elif s.kind.startswith("tuple[") and (s.knob.lo is not None or s.knob.hi is not None):
            for v in value:
                _check_range(f"{s.key}[]", v, s.knob.lo, s.knob.hi, integer=s.kind == "tuple[int, ...]")


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    check_choice(name, value, allowed)


def _check_range(name: str, value: Any, lo: float | None, hi: float | None, integer: bool = False) -> None:
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"{name} must be a whole number; got {value!r}")
    if not integer and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise ValueError(f"{name} must be a number; got {value!r}")
    if value != value:  # NaN
        raise ValueError(f"{name} must be a number; got NaN")
    if lo is not None and value < lo or hi is not None and value > hi:
        if lo is not None and hi is not None:
            span = f"from {lo} to {hi}"
        else:
            span = f"at least {lo}" if lo is not None else f"at most {hi}"
        raise ValueError(f"{name} must be {span}; got {value!r}")


# -- the sections ------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The denoising U-Net (Ho et al. 2020, appendix B)."""

    preset: str = knob("tiny", flag="", label="Preset",
                       help="name the shape came from; custom once a field is edited by hand")
    image_size: int = knob(16, lo=8, hi=256, flag="", label="Image size",
                           help="side of the square images the network sees (px); set from data.image_size")
    in_channels: int = knob(3, choices=(1, 3), flag="", label="Channels",
                            help="1 (grayscale) or 3 (RGB); resolved from the dataset when data.channels=auto")
    patch_size: int = knob(1, choices=(1, 2, 4), label="Patch size", metavar="P",
                           help="the network sees P x P pixel patches stacked as channels (pixel unshuffle) and "
                           "works at image_size / P: 1 = every pixel (paper); 2 = a quarter of the cost per image")
    base_channels: int = knob(32, lo=8, hi=512, label="Base width", metavar="C",
                              help="width of the first level; every level is a multiple of it")
    channel_mult: tuple[int, ...] = knob((1, 2, 2), label="Width per level", metavar="1,2,2",
                                         help="width multiplier per resolution level (comma-separated)")
    num_res_blocks: int = knob(1, lo=1, hi=8, label="Residual blocks", metavar="N",
                               help="residual blocks per resolution level (paper: 2)")
    attention_resolutions: tuple[int, ...] = knob((8,), lo=1, hi=256, label="Attention at", metavar="8,16",
                                                  help="feature-map sides (px) that get self-attention "
                                                  "(comma-separated; none = no attention)")
    dropout: float = knob(0.0, lo=0.0, hi=0.9, label="Dropout", metavar="P",
                          help="dropout inside residual blocks (paper: 0.1 on CIFAR-10)")
    num_heads: int = knob(1, lo=1, hi=64, label="Attention heads", metavar="H", help="attention heads (paper: 1)")
    # Settings that only imported (diffusers-format) models change; the defaults are the paper's.
    attention_head_dim: int | None = knob(None, lo=1, hi=4096, label="Channels per head", metavar="D",
                                          help="channels per attention head; none = width / num_heads")
    norm_groups: int | None = knob(None, lo=1, hi=512, label="GroupNorm groups", metavar="G",
                                   help="GroupNorm groups; none = largest divisor of every width <= min(32, base/4)")
    downsample_padding: int = knob(0, choices=(0, 1), label="Downsample padding",
                                   help="0 = the paper's TF SAME stride-2 conv (pad bottom/right), 1 = symmetric")
    flip_sin_to_cos: bool = knob(False, label="Time embedding [cos, sin]",
                                 help="time embedding order: off = [sin, cos] (paper), on = [cos, sin]")
    freq_shift: float = knob(1.0, lo=0.0, hi=1.0, label="Frequency shift", metavar="S",
                             help="time embedding frequencies exp(-log(10000) i / (half - freq_shift)); paper: 1")
    norm_eps: float = knob(1e-6, lo=1e-12, hi=1.0, label="GroupNorm epsilon", metavar="EPS",
                           help="epsilon of every GroupNorm (paper: 1e-6; diffusers' UNet2DModel: 1e-5)")
    attn_norm_groups: int | None = knob(None, lo=1, hi=512, label="Middle attention groups", metavar="G",
                                        help="GroupNorm groups of the middle block's attention; none = norm_groups")
    add_attention: bool = knob(True, label="Middle attention", help="self-attention in the middle block (paper: yes)")
    mid_block_scale_factor: float = knob(1.0, lo=1e-6, hi=1e6, label="Middle block scale", metavar="F",
                                         help="the middle block's residual sums are divided by this (paper: 1)")
    time_embedding_dim: int | None = knob(None, lo=1, hi=65536, label="Time embedding width", metavar="D",
                                          help="width of the time-embedding MLP; none = 4 x base_channels (paper)")
    center_input_sample: bool = knob(False, label="Centre input",
                                     help="map the input x to 2x - 1 before the first conv (paper: no)")
    act_fn: str = knob("silu", choices=Activation, label="Activation",
                       help="nonlinearity inside residual blocks: silu (paper), mish, gelu, relu")
    time_conditioning: str = knob("default", choices=TimeConditioning, label="Time conditioning",
                                  help="default = temb added after conv1 (paper); "
                                  "scale_shift = norm2 output * (1 + s) + b")

    def validate(self) -> None:
        validate_section(self)
        if not self.channel_mult or any(not isinstance(m, int) or isinstance(m, bool) or m < 1
                                        for m in self.channel_mult):
            raise ValueError(f"model.channel_mult must be a non-empty list of whole numbers >= 1; "
                             f"got {self.channel_mult!r}")
        levels = len(self.channel_mult)
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"model.image_size ({self.image_size}) must be divisible by model.patch_size "
                             f"({self.patch_size})")
        if (self.image_size // self.patch_size) % (2 ** (levels - 1)) != 0:
            patched = f" / patch_size {self.patch_size}" if self.patch_size > 1 else ""
            raise ValueError(
                f"model.channel_mult has {levels} levels, so model.image_size{patched} must be divisible by "
                f"{2 ** (levels - 1)}; got image_size={self.image_size}"
            )
        if self.base_channels % 8 != 0:
            raise ValueError(f"model.base_channels must be divisible by 8 (GroupNorm); got {self.base_channels}")
        n = footprint.parameter_count(self)  # closed form, microseconds: nothing is built
        if n > footprint.MAX_PARAMETERS:
            raise ValueError(
                f"model: base_channels {self.base_channels} with channel_mult {list(self.channel_mult)} makes a "
                f"network of {n:,} parameters ({n * footprint.BYTES_PER_VALUE / 2**30:,.0f} GB of weights); "
                f"the most this program builds is {footprint.MAX_PARAMETERS:,}"
            )


@dataclass
class DiffusionConfig:
    """The forward process and the training objective."""

    schedule: str = knob("linear", choices=Schedule, label="Noise schedule",
                         help="beta schedule: linear (paper), cosine (Nichol & Dhariwal 2021), quadratic, sigmoid")
    timesteps: int = knob(1000, lo=10, hi=4000, label="Timesteps T", metavar="T",
                          help="T, the number of diffusion steps (paper: 1000)")
    prediction: str = knob("epsilon", choices=Prediction, label="Network predicts",
                           help="what the network predicts: epsilon (paper), x0, or v (Salimans & Ho 2022)")
    loss_weighting: str = knob("none", choices=LossWeighting, label="Loss weighting",
                               help="none = the paper's L_simple; min_snr = Hang et al. 2023; "
                                    "min_snr_plus1 = min(SNR + 1, gamma), which also trains the noisiest steps")
    min_snr_gamma: float = knob(5.0, lo=0.01, hi=1000.0, label="Min-SNR gamma", metavar="G",
                                help="gamma of min-SNR weighting (used only by min_snr and min_snr_plus1)")
    betas: tuple[float, ...] | None = knob(None, label="Explicit betas", metavar="B,B,...|@FILE",
                                           help="explicit beta_1..beta_T (imported models; @FILE: a JSON list or "
                                                "numbers one per line); overrides schedule")

    def validate(self) -> None:
        validate_section(self)
        if self.betas is not None:
            if len(self.betas) != self.timesteps:
                raise ValueError(f"diffusion.betas must have diffusion.timesteps={self.timesteps} values; "
                                 f"got {len(self.betas)}")
            if any(not (0.0 < float(b) < 1.0) for b in self.betas):
                raise ValueError("diffusion.betas must all lie strictly between 0 and 1")


@dataclass
class DataConfig:
    """Which images, and how they are turned into training tensors."""

    folder: str | None = knob(None, flag="--data", metavar="DIR", label="Image folder",
                              help="image folder, searched recursively, or one image file "
                                   "(default: the built-in dataset)")
    image_size: int = knob(16, lo=8, hi=256, label="Image size", metavar="PX",
                           help="square side after resize-short-side + center-crop (px); tiny: 16, fast on a CPU")
    channels: str = knob("auto", choices=Channels, label="Channels",
                         help="auto (grayscale if every image is), 1 (grayscale) or 3 (RGB)")
    flip: bool = knob(False, label="Random horizontal flip",
                      help="random horizontal flip at training time: helps symmetric scenes, hurts text, digits, logos")
    background: str = knob("white", choices=Background, label="Background",
                           help="what transparent pixels are composited onto")
    min_size: int = knob(0, lo=0, hi=100000, label="Minimum side", metavar="PX",
                         help="skip images whose short side is smaller than this (px); 0 = keep all")
    exclude_duplicates: bool = knob(False, label="Leave out duplicates",
                                    help="leave out exact and near duplicate files (the dataset doctor's rule: the "
                                    "first of each group stays); each is listed as skipped")

    def validate(self) -> None:
        validate_section(self)


@dataclass
class TrainConfig:
    """Optimisation, logging and checkpointing."""

    steps: int | None = knob(4000, lo=1, hi=10_000_000, label="Steps", metavar="N", exclusive="duration",
                             help="the run's TOTAL steps (resume counts from where it stopped; a larger N extends "
                             "a finished run); none = the clock ends the run")
    minutes: float | None = knob(None, lo=0.01, hi=10_000_000, label="Minutes", metavar="M", exclusive="duration",
                                 help="optional wall-clock limit for this session of training")
    batch_size: int = knob(64, lo=1, hi=65536, label="Batch size", metavar="B",
                           help="global batch size (split across processes under torchrun)")
    lr: float = knob(1e-3, lo=1e-8, hi=1.0, label="Learning rate", metavar="LR",
                     help="peak AdamW learning rate (paper: 2e-4 for its 35.7M-parameter model)")
    warmup_steps: int = knob(200, lo=0, hi=10_000_000, label="Warm-up steps", metavar="N",
                             help="linear learning-rate warm-up (paper: 5000)")
    lr_cooldown: float = knob(0.0, lo=0.0, hi=1.0, label="LR cool-down", metavar="F",
                              help="the last fraction of the run (of Steps, or of Minutes when the clock ends it "
                              "first) over which the learning rate falls linearly to 0; 0 = constant after the "
                              "warm-up (the paper). A Stop keeps the rate it had")
    weight_decay: float = knob(0.0, lo=0.0, hi=10.0, label="Weight decay", metavar="W", help="AdamW weight decay")
    grad_clip: float = knob(1.0, lo=0.0, hi=1e6, label="Gradient clip", metavar="G",
                            help="clip the global gradient norm to this (paper: 1.0); 0 = off")
    ema_decay: float = knob(0.999, lo=0.0, hi=0.999999, label="EMA decay", metavar="D",
                            help="EMA of the weights used for previews and sampling (paper: 0.9999)")
    ema_warmup: bool = knob(True, label="EMA warm-up",
                            help="decay = min(ema_decay, (1 + step) / (10 + step)) so early EMA follows the model")
    seed: int = knob(0, lo=0, hi=2**63 - 1, label="Seed", metavar="S",
                     help="seeds weights, data order, noise and previews")
    device: str = knob("auto", choices=Device, label="Device", help="auto = CUDA, then Apple MPS, then CPU")
    precision: str = knob("auto", choices=Precision, label="Precision",
                          help="auto = bf16 autocast on CPUs with native bf16, else fp32; or fp32, bf16, fp16 (CUDA)")
    compile: bool = knob(False, label="Compile the network",
                         help="torch.compile the network for training: faster steps after a compilation at the "
                         "start (tiny on two CPU cores: 9 % more images/s after 1.5 minutes, so it pays only in "
                         "runs of over about 20 minutes; BENCHMARKS.md)")
    log_every: int = knob(10, lo=1, hi=1_000_000, label="Log every", metavar="N",
                          help="steps between metric events / metrics.jsonl lines")
    preview_every: int = knob(500, lo=0, hi=10_000_000, label="Preview every", metavar="N",
                              help="steps between preview samples from the EMA model; 0 = off")
    preview_count: int = knob(16, lo=1, hi=256, label="Preview images", metavar="N", help="images per preview")
    preview_sampling_steps: int = knob(20, lo=1, hi=4000, label="Preview sampler steps", metavar="K",
                                       help="sampler steps per preview (DPM-Solver++ 2M: 20 suffice)")
    checkpoint_every: int = knob(1000, lo=0, hi=10_000_000, label="Checkpoint every", metavar="N",
                                 help="steps between checkpoints; 0 = only by time and at the end")
    checkpoint_minutes: float = knob(2.0, lo=0.0, hi=10_000_000, label="Checkpoint minutes", metavar="M",
                                     help="also checkpoint after this much training time")
    keep_checkpoints: int = knob(3, lo=1, hi=1000, label="Checkpoints kept", metavar="N",
                                 help="how many recent checkpoints to keep on disk")
    preview_sampler: str = knob("dpmpp-2m", choices=Sampler, label="Preview sampler",
                                help="the sampler of the previews (its own spacing, clipped x_0)")
    # Quality while training (issue 17): the checkpoint saved every K steps is scored (KID against the training
    # images, in RUN/evaluation.jsonl); training waits meanwhile, so it is off unless asked for.
    eval_every: int = knob(0, lo=0, hi=10_000_000, label="Quality every", metavar="K",
                           help="score the checkpoint saved every K steps (KID against the training images; "
                           "training waits while it scores); 0 = off")
    eval_num: int = knob(0, lo=0, hi=65536, label="Quality samples", metavar="N",
                         help="samples per quality score; 0 = 256 on a CPU, 1024 on CUDA")

    def validate(self) -> None:
        validate_section(self)
        if self.eval_num == 1:
            raise ValueError("train.eval_num must be 0 (automatic) or at least 2; got 1")


@dataclass
class SamplingConfig:
    """How images are generated from a trained model."""

    sampler: str = knob("dpmpp-2m", choices=Sampler, label="Sampler",
                        help="ddpm = the paper's Algorithm 2; ddim; dpmpp-* = DPM-Solver++; unipc = UniPC "
                        "(default: the run's)")
    steps: int = knob(20, lo=1, hi=4000, flag="--sampling-steps", label="Steps", metavar="K",
                      help="network calls of ddim / dpmpp-* / unipc (ddpm always walks all T steps)")
    eta: float = knob(0.0, lo=0.0, hi=1.0, label="DDIM eta", metavar="E",
                      help="DDIM stochasticity: 0 = deterministic, 1 = ancestral with beta-tilde")
    variance: str = knob("fixed_small", choices=Variance, label="Variance",
                         help="ancestral sampling: fixed_small = beta-tilde_t, fixed_large = beta_t")
    clip_denoised: bool = knob(True, label="Clip x_0",
                               help="clip the predicted x_0 to [-clip_range, clip_range] at every step")
    num_images: int = knob(16, lo=1, hi=1024, flag="--num", label="Images", metavar="N",
                           help="how many images per generation")
    seed: int = knob(0, lo=0, hi=2**63 - 1, label="Seed", metavar="S", help="same seed, same images")
    spacing: str = knob("auto", choices=Spacing, label="Spacing",
                        help="which timesteps ddim / dpmpp-* / unipc visit: auto = the sampler's own (trailing for "
                        "ddim, else logsnr); all but leading (diffusers' old default) start at t = T-1")
    steps_offset: int = knob(0, lo=0, hi=1000, label="Steps offset", metavar="N",
                             help="added to every leading timestep (diffusers' steps_offset; 1 for SD-style models)")
    clip_range: float = knob(1.0, lo=1e-6, hi=1e6, label="Clip range", metavar="R",
                             help="the bound of clip_denoised (diffusers' clip_sample_range)")
    dynamic_threshold: float | None = knob(None, lo=0.0, hi=1.0, label="Dynamic threshold", metavar="Q",
                                           help="Imagen's dynamic thresholding: this quantile of |x_0| per image; "
                                           "none = off")
    threshold_max: float = knob(1.0, lo=1.0, hi=1e6, label="Threshold max", metavar="M",
                                help="the largest bound dynamic thresholding may pick (diffusers' sample_max_value)")
    timesteps: tuple[int, ...] | None = knob(None, lo=0, hi=3999, label="Tuned timesteps", metavar="T,T,...",
                                             help="the timesteps ddim / dpmpp-* / unipc visit, descending, one per "
                                             "step (found for one model by Tune, or `ddpm-studio tune-steps`); "
                                             "replace the spacing's; empty = the spacing's own")

    def validate(self) -> None:
        validate_section(self)
        ts = self.timesteps
        if ts is not None:
            if not ts or any(a <= b for a, b in zip(ts, ts[1:])):
                raise ValueError(f"sampling.timesteps must be distinct and descending; got {list(ts)}")
            if len(ts) != self.steps:
                raise ValueError(f"sampling.timesteps lists {len(ts)} timestep(s) but sampling.steps is "
                                 f"{self.steps}; set the steps to {len(ts)} or clear the timesteps")


SECTION_NAMES: dict[type, str] = {ModelConfig: "model", DiffusionConfig: "diffusion", DataConfig: "data",
                                  TrainConfig: "train", SamplingConfig: "sampling"}
SECTIONS: dict[str, type] = {name: cls for cls, name in SECTION_NAMES.items()}


# Named presets: a model shape plus the diffusion, data and training settings that suit it
# (sections "diffusion", "data" and "train" are optional; fields left out keep the defaults above). Plain
# data, so the GUI can list them without importing torch. The engine test checks ddpm-cifar10 is 35.7M parameters.
# tiny's network and settings, shared by tiny-32 (the same on 2 x 2 patches; the GUI switches between the two).
_TINY_MODEL = dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,), dropout=0.0,
                   num_heads=1)
_TINY_DIFFUSION = dict(prediction="v", loss_weighting="min_snr", min_snr_gamma=5.0)
# previews every 200 steps (under a minute on a 2-core CPU; one costs 2-3 s there, ~4 % of the time): a first run
# shows its progress five times in its first five minutes
_TINY_TRAIN = dict(lr=1e-3, warmup_steps=100, batch_size=32, ema_decay=0.995, steps=4000, preview_every=200,
                   lr_cooldown=0.5)
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "description": "The quickest: 16 px, 1.1M parameters; recognisable samples on a laptop CPU in minutes.",
        "model": _TINY_MODEL,
        # Chosen by benchmarks/bench_quality.py at fixed CPU budgets on two datasets (BENCHMARKS.md,
        # "Sample quality"): 16 px (5.6x the images/s of 32 px); v-prediction with min-SNR-5 weighting
        # (Frechet distances 3-50x lower than any epsilon-prediction setting at the same budget, on
        # both sets and two seeds; unweighted v diverged); lr 1e-3 (as good as 2e-3, and 4e-3 diverged once, so
        # 1e-3 keeps a margin on data we have not seen); batch 32 (beat 16 and 64); EMA 0.995 (an
        # average over ~200 steps, so it does not lag far behind a model still improving fast).
        # Re-checked on three real-image sets (photos, handwritten digits, text; benchmarks/bench_real.py,
        # BENCHMARKS.md "Learning on real images"): lr 2e-3 and EMA 0.999 were worse or equal on all three.
        # The learning rate falls linearly to 0 over the last half of the steps (lr_cooldown 0.5): on four real sets
        # better than a constant rate and than the last 20 %, at 800 and 3,200 steps (BENCHMARKS.md "A learning-rate
        # cool-down" and "How long a cool-down").
        "diffusion": _TINY_DIFFUSION,
        "data": dict(image_size=16),
        "train": _TINY_TRAIN,
    },
    "tiny-32": {
        "description": "The quickest from 32 px up: the tiny network on 2 × 2 pixel patches, a quarter of the "
                       "cost per image; recognisable 32 px samples on a laptop CPU in minutes. Not exportable "
                       "for diffusers.",
        # tiny's network and training settings, run on the image's 2 x 2 patches (model.patch_size 2): at 32 px it
        # costs what tiny costs at 16 px (3.1-3.8x tiny's images/s at 32 px, fp32). At 300 CPU seconds on four real
        # sets at 32 px its excess over the real-vs-real floor was 1.5-4.8x lower than tiny's, and on photos 8x at
        # 600 s and 12x at 1,200 s (BENCHMARKS.md "32 px on 2 x 2 patches"); the GUI and the CLI pick it from 32 px.
        "model": {**_TINY_MODEL, "patch_size": 2},
        "diffusion": _TINY_DIFFUSION,
        "data": dict(image_size=32),
        "train": _TINY_TRAIN,
    },
    "small": {
        "description": "A few million parameters; better samples, wants a GPU or patience.",
        "model": dict(base_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                      attention_resolutions=(16,), dropout=0.1, num_heads=1),
        # v-prediction with min-SNR-5 and the cool-down over the last half, as measured for tiny (not at this size).
        "diffusion": dict(prediction="v", loss_weighting="min_snr", min_snr_gamma=5.0),
        "data": dict(image_size=32),
        "train": dict(lr=5e-4, warmup_steps=500, batch_size=64, ema_decay=0.9995, steps=20000, lr_cooldown=0.5),
    },
    "ddpm-cifar10": {
        "description": "The paper's CIFAR-10 model (35.7M parameters); needs a GPU.",
        "model": dict(base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                      attention_resolutions=(16,), dropout=0.1, num_heads=1),
        "data": dict(image_size=32),  # the paper's settings throughout: epsilon-prediction, L_simple
        "train": dict(lr=2e-4, warmup_steps=5000, batch_size=128, ema_decay=0.9999, steps=800000),
    },
}


# The preset a new run starts from when none is named: tiny below 32 px, tiny-32 (the same network on 2 x 2
# patches) from 32 px up. The GUI switches between these two when the image size changes; the CLI starts
# from it when --preset is not given.
def default_preset(image_size: int) -> str:
    return "tiny-32" if int(image_size) >= 32 else "tiny"


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
            raise ValueError(f"config version {self.version} is not supported (this program reads version "
                             f"{CONFIG_VERSION})")
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
            kwargs[f.name] = _section_from_dict(SECTIONS[f.name], f.name, d[f.name])
        if "train" in kwargs and kwargs["train"].steps == NO_STEP_LIMIT:  # written before steps could be None
            kwargs["train"].steps = None
        cfg = cls(**kwargs)
        # data decides the network's image size (and channels, unless "auto"); sync() copies them into
        # model. A model section that says otherwise is an error, not something to overwrite silently.
        given = d.get("model") or {}
        if "image_size" in given and cfg.model.image_size != cfg.data.image_size:
            raise ValueError(
                f"model.image_size ({cfg.model.image_size}) differs from data.image_size ({cfg.data.image_size}); "
                "data.image_size decides the network's size: make them equal or leave model.image_size out"
            )
        fixed = cfg.data.channels in ("1", "3")
        if "in_channels" in given and fixed and cfg.model.in_channels != int(cfg.data.channels):
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
    "tuple[float, ...]": (lambda v: isinstance(v, (list, tuple)) and all(_is_number(x) for x in v),
                          "a list of numbers"),
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
