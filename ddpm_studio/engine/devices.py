"""Which device to train and sample on, and mixed precision where it is safe."""

from __future__ import annotations

import contextlib

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")


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


def autocast(device: torch.device | str, precision: str = "fp32"):
    """A context manager: bf16/fp16 autocast on CUDA; a no-op for fp32 and on every other device."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def uses_grad_scaler(device: torch.device | str, precision: str) -> bool:
    """Whether training needs a GradScaler (fp16 autocast on CUDA)."""
    return torch.device(device).type == "cuda" and precision == "fp16"


def describe_device(device: torch.device | str) -> str:
    """Short words for the status bar, e.g. ``CPU (2 threads)`` or ``CUDA: NVIDIA H100``."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"CUDA: {torch.cuda.get_device_name(index)}"
    if device.type == "mps":
        return "Apple MPS"
    n = torch.get_num_threads()
    return f"CPU ({n} thread{'' if n == 1 else 's'})"
