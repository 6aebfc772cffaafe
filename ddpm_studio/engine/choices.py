"""The allowed values of every setting that is a choice, declared once.

Plain stdlib enums, no torch: ``config.py`` (which must import instantly) and the engine both read
them. Each is a ``str`` enum, so a member equals its string (``Sampler.DDPM == "ddpm"``), hashes as
it, and JSON writes it as the bare string; configs keep holding plain strings.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A str-Enum whose str() and format() are the value itself (Python's own differ by version)."""

    __str__ = str.__str__
    __format__ = str.__format__

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


class Schedule(Choice):
    LINEAR = "linear"
    COSINE = "cosine"
    QUADRATIC = "quadratic"
    SIGMOID = "sigmoid"


class Prediction(Choice):
    EPSILON = "epsilon"
    X0 = "x0"
    V = "v"


class LossWeighting(Choice):
    NONE = "none"
    MIN_SNR = "min_snr"
    MIN_SNR_PLUS1 = "min_snr_plus1"  # min(SNR + 1, gamma): min-SNR that still trains the noisiest steps


class Variance(Choice):
    FIXED_SMALL = "fixed_small"  # sigma_t^2 = beta-tilde_t
    FIXED_LARGE = "fixed_large"  # sigma_t^2 = beta_t


class Sampler(Choice):
    DDPM = "ddpm"
    DDIM = "ddim"
    DPMPP_2M = "dpmpp-2m"
    DPMPP_3M = "dpmpp-3m"
    DPMPP_2M_SDE = "dpmpp-2m-sde"
    UNIPC = "unipc"


class Spacing(Choice):
    """How a few-step sampler spreads its steps over 0..T-1 (trailing, linspace, leading: diffusers' names)."""

    AUTO = "auto"  # the sampler's own: AUTO_SPACING below
    TRAILING = "trailing"
    LINSPACE = "linspace"
    LOGSNR = "logsnr"  # uniform in log-SNR (DPM-Solver's choice for small images); not a diffusers name
    LEADING = "leading"


DIFFUSERS_SPACINGS = (Spacing.TRAILING.value, Spacing.LINSPACE.value, Spacing.LEADING.value)

# What spacing "auto" means for each sampler: the one measured best on our real-image models at the step
# counts each sampler is used at (BENCHMARKS.md, "A log-SNR spacing for DPM-Solver++"). ddpm walks every step.
AUTO_SPACING = {"ddpm": "trailing", "ddim": "trailing", "dpmpp-2m": "logsnr", "dpmpp-3m": "logsnr",
                "dpmpp-2m-sde": "logsnr", "unipc": "logsnr"}


def resolve_spacing(sampler: str, spacing: str) -> str:
    """The spacing a sampler really uses: ``auto`` becomes the sampler's own, any other is kept."""
    return AUTO_SPACING.get(str(sampler), Spacing.TRAILING.value) if spacing == Spacing.AUTO else str(spacing)


class Activation(Choice):
    SILU = "silu"
    MISH = "mish"
    GELU = "gelu"
    RELU = "relu"


class TimeConditioning(Choice):
    DEFAULT = "default"
    SCALE_SHIFT = "scale_shift"


class Channels(Choice):
    AUTO = "auto"
    GRAY = "1"
    RGB = "3"


class Background(Choice):
    WHITE = "white"
    BLACK = "black"


class Device(Choice):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"


class Precision(Choice):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


def check_choice(name: str, value: object, allowed: type[Choice] | tuple) -> None:
    """Raise ValueError "<name> must be one of a, b; got 'x'" unless ``value`` is allowed."""
    values = allowed.values() if isinstance(allowed, type) and issubclass(allowed, Choice) else tuple(allowed)
    if value not in values:
        raise ValueError(f"{name} must be one of {', '.join(map(str, values))}; got {value!r}")
