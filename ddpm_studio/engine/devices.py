"""Which device to train and sample on, and mixed precision where it is safe."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil

import torch

from .choices import Device, Precision

DEVICE_CHOICES = Device.values()
PRECISIONS = Precision.values()

# CPU features that make bf16 arithmetic native (x86: AVX-512 BF16 or AMX; Arm: the BF16 extension).
# Without them oneDNN emulates bf16, which measured 10-25x *slower* than fp32.
_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(pref: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple MPS, then CPU. ``cpu``/``cuda``/``cuda:N``/``mps`` ask for one
    device and raise ValueError when it is not available here."""
    if not isinstance(pref, str):
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}; got {pref!r}")
    pref = pref.strip().lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "mps":
        if not _mps_available():
            raise ValueError("device 'mps' was asked for, but Apple MPS is not available on this machine "
                             "(choose auto or cpu)")
        return torch.device("mps")
    if pref == "cuda" or pref.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {pref!r} was asked for, but CUDA is not available on this machine "
                             f"(this PyTorch build: {torch.__version__}; choose auto or cpu)")
        if ":" in pref:
            index_text = pref.split(":", 1)[1]
            if not index_text.isdigit():
                raise ValueError(f"device must look like cuda or cuda:0; got {pref!r}")
            n = torch.cuda.device_count()
            if int(index_text) >= n:
                raise ValueError(f"device {pref!r} was asked for, but this machine has {n} CUDA device(s)")
        return torch.device(pref)
    raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N); got {pref!r}")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (Linux ``/proc/cpuinfo``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 / AMX on x86, BF16 on Arm).

    ``DDPM_STUDIO_CPU_BF16=0|1`` overrides the detection (tests, or a CPU the kernel misreports).
    """
    forced = os.environ.get("DDPM_STUDIO_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return any(flag in _cpu_flags() for flag in _NATIVE_BF16_FLAGS)


def resolve_precision(device: torch.device | str, precision: str) -> tuple[str, str | None]:
    """The precision a run on ``device`` actually uses for ``precision``, and a plain-words note
    when it differs from what was asked (None otherwise).

    ``auto``: bf16 autocast on a CPU that computes bf16 natively (measured 1.4-2.5x the fp32
    images/s with AMX, 1.4-2.1x with AVX-512 BF16 alone on AMD Zen 5, BENCHMARKS.md), fp32 on CUDA
    (bf16/fp16 autocast measured slower than fp32 for these small networks on an H200), fp32 elsewhere.
    Explicit bf16 on a CPU without native bf16 falls back to fp32 with a note; fp16 is CUDA-only.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    kind = torch.device(device).type
    if precision == "auto":
        return ("bf16" if kind == "cpu" and cpu_has_native_bf16() else "fp32"), None
    if precision == "fp32" or kind == "cuda":
        return precision, None
    if kind == "cpu" and precision == "bf16":
        if cpu_has_native_bf16():
            return "bf16", None
        return "fp32", (f"bf16 asked for, but this CPU ({platform.machine() or 'unknown'}) has no native bf16 "
                        "(AVX-512 BF16 or AMX); emulated bf16 is 10-25x slower, so this run uses fp32")
    where = "this CPU" if kind == "cpu" else ("Apple MPS" if kind == "mps" else kind)
    return "fp32", f"{precision} mixed precision is not supported on {where}; this run uses fp32"


def resolve_compile(device: torch.device | str, wanted: bool) -> tuple[bool, str | None]:
    """Whether training compiles the network with ``torch.compile`` on ``device``, and a plain-words
    note when it was asked for but cannot be: CUDA needs Triton, a CPU a C++ compiler, and Apple
    MPS is left uncompiled (its inductor backend is experimental)."""
    if not wanted:
        return False, None
    kind = torch.device(device).type
    if kind == "cuda":
        try:
            from torch.utils._triton import has_triton

            ok = has_triton()
        except Exception:  # a private helper: its absence means we cannot tell, so do not compile
            ok = False
        return (True, None) if ok else (False, "torch.compile on CUDA needs Triton, which this PyTorch install "
                                               "lacks; this run trains uncompiled")
    if kind == "cpu":
        compilers = [os.environ.get("CXX", ""), "g++", "clang++", "c++", "cl"]
        if any(c and shutil.which(c) for c in compilers):
            return True, None
        return False, ("torch.compile on a CPU needs a C++ compiler (g++, clang++ or MSVC's cl) and none was "
                       "found; this run trains uncompiled")
    where = "Apple MPS" if kind == "mps" else kind
    return False, f"torch.compile is not used on {where}; this run trains uncompiled"


def autocast(device: torch.device | str, precision: str = "fp32"):
    """A context manager for a *resolved* precision (see :func:`resolve_precision`): bf16/fp16
    autocast on CUDA, bf16 autocast on a CPU; a no-op for fp32 and on every other device."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    if device.type == "cpu" and precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_grad_scaler(device: torch.device | str, precision: str) -> bool:
    """Whether training needs a GradScaler (fp16 autocast on CUDA)."""
    return torch.device(device).type == "cuda" and precision == "fp16"


def describe_device(device: torch.device | str, precision: str | None = None) -> str:
    """Short words for the status bar, e.g. ``CPU (2 threads, bf16)`` or ``CUDA: NVIDIA H100``.

    ``precision`` (resolved) is named when it is not fp32."""
    device = torch.device(device)
    extra = f", {precision}" if precision and precision not in ("fp32", "auto") else ""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = f"CUDA: {torch.cuda.get_device_name(index)}"
        return f"{name} ({precision})" if extra else name
    if device.type == "mps":
        return "Apple MPS"
    n = torch.get_num_threads()
    return f"CPU ({n} thread{'' if n == 1 else 's'}{extra})"
