"""How big a network is before it exists: weight shapes, parameters and memory, in closed form.

``expected_shapes(cfg)`` lists every tensor of the U-Net's state dict (the names and shapes of
``engine/unet.py``, which equal diffusers' ``UNet2DModel``) from a ModelConfig alone, so that

- a config whose network would not fit in memory is refused before a byte is allocated
  (``check_fits``), with the figure and the machine's memory in the message;
- a checkpoint's weights are compared with its config from the safetensors header, before any
  tensor is read (``training/checkpoints.py``).

No torch at import (torch is imported only to ask a CUDA device its size), so config.py and the
GUI can use it. ``tests/test_reliability.py`` checks the shapes against ``build_model(cfg)``
for several configs, and the activation estimate against the tensors autograd really saves.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

BYTES_PER_VALUE = 4  # float32 weights and activations (bf16/fp16 autocast saves less: the estimate is an upper bound)
SAFE_FRACTION = 0.8  # refuse a run whose estimate exceeds this share of the memory it would run in
# Weights, gradients, AdamW's two moments and the EMA copy: what training keeps per parameter.
TRAINING_COPIES = 5
MAX_PARAMETERS = 8_000_000_000  # ModelConfig.validate refuses more than this whatever the machine (32 GB of float32)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def _levels(cfg: Any) -> tuple[list[int], int, int, int]:
    chans = [int(cfg.base_channels) * int(m) for m in cfg.channel_mult]
    temb = int(getattr(cfg, "time_embedding_dim", None) or 4 * chans[0])
    out_ch = int(getattr(cfg, "out_channels", None) or cfg.in_channels)
    return chans, temb, out_ch, int(cfg.num_res_blocks)


def _patch(cfg: Any) -> int:
    return int(getattr(cfg, "patch_size", 1) or 1)


def _feature_size(cfg: Any) -> int:
    """The first level's side: image_size / patch_size."""
    return int(cfg.image_size) // _patch(cfg)


def _mid_attention(cfg: Any) -> bool:
    return bool(getattr(cfg, "add_attention", True))


class _Shapes(dict):
    """name -> shape, filled block by block in the order of the U-Net's state dict."""

    def __init__(self, temb: int) -> None:
        super().__init__()
        self.temb = temb

    def conv(self, name: str, cout: int, cin: int, k: int) -> None:
        self[f"{name}.weight"] = (cout, cin, k, k)
        self[f"{name}.bias"] = (cout,)

    def linear(self, name: str, cout: int, cin: int) -> None:
        self[f"{name}.weight"] = (cout, cin)
        self[f"{name}.bias"] = (cout,)

    def norm(self, name: str, c: int) -> None:
        self[f"{name}.weight"] = (c,)
        self[f"{name}.bias"] = (c,)

    def resnet(self, p: str, cin: int, cout: int) -> None:
        self.norm(f"{p}.norm1", cin)
        self.conv(f"{p}.conv1", cout, cin, 3)
        self.linear(f"{p}.time_emb_proj", cout, self.temb)
        self.norm(f"{p}.norm2", cout)
        self.conv(f"{p}.conv2", cout, cout, 3)
        if cin != cout:
            self.conv(f"{p}.conv_shortcut", cout, cin, 1)

    def attention(self, p: str, c: int) -> None:
        self.norm(f"{p}.group_norm", c)
        for q in ("to_q", "to_k", "to_v", "to_out.0"):
            self.linear(f"{p}.{q}", c, c)


def expected_shapes(cfg: Any) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in the U-Net's state dict for ModelConfig ``cfg``."""
    chans, temb, out_ch, nres = _levels(cfg)
    L, base = len(chans), chans[0]
    attn_res = {int(r) for r in cfg.attention_resolutions}
    shapes = _Shapes(temb)
    conv, linear, norm, resnet, attention = shapes.conv, shapes.linear, shapes.norm, shapes.resnet, shapes.attention
    conv("conv_in", base, int(cfg.in_channels) * _patch(cfg) ** 2, 3)
    linear("time_embedding.linear_1", temb, base)
    linear("time_embedding.linear_2", temb, temb)
    c = base
    for i in range(L):
        cin, c = c, chans[i]
        attn = _feature_size(cfg) // 2**i in attn_res
        for j in range(nres):
            resnet(f"down_blocks.{i}.resnets.{j}", cin if j == 0 else c, c)
            if attn:
                attention(f"down_blocks.{i}.attentions.{j}", c)
        if i < L - 1:
            conv(f"down_blocks.{i}.downsamplers.0.conv", c, c, 3)
    resnet("mid_block.resnets.0", chans[-1], chans[-1])
    if _mid_attention(cfg):
        attention("mid_block.attentions.0", chans[-1])
    resnet("mid_block.resnets.1", chans[-1], chans[-1])
    rev = chans[::-1]
    c = rev[0]
    for i in range(L):
        prev, c = c, rev[i]
        skip_in = rev[min(i + 1, L - 1)]
        attn = _feature_size(cfg) // 2 ** (L - 1 - i) in attn_res
        for j in range(nres + 1):
            skip = skip_in if j == nres else c
            resnet(f"up_blocks.{i}.resnets.{j}", (prev if j == 0 else c) + skip, c)
            if attn:
                attention(f"up_blocks.{i}.attentions.{j}", c)
        if i < L - 1:
            conv(f"up_blocks.{i}.upsamplers.0.conv", c, c, 3)
    norm("conv_norm_out", base)
    conv("conv_out", out_ch * _patch(cfg) ** 2, base, 3)
    return dict(shapes)


def parameter_count(cfg: Any) -> int:
    """Parameters of the U-Net for ``cfg`` (equals ``count_parameters(build_model(cfg))``)."""
    total = 0
    for shape in expected_shapes(cfg).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def activation_values(cfg: Any) -> int:
    """Values autograd keeps for the backward pass of ONE training image (float32 count).

    Follows the forward pass (measured per block with ``saved_tensors_hooks``): a residual block
    keeps its input, norm1's output and SiLU of it, the first conv's output, norm2's output and
    SiLU of it (plus the dropout output when dropout > 0); an attention keeps its input, the
    normalised input, q/k/v, the attention output and its reshaped copy (memory-efficient
    attention: no H*W x H*W matrix); down- and up-sampling keep the padded / enlarged map.
    """
    chans, _, _, nres = _levels(cfg)
    L, base, size = len(chans), chans[0], _feature_size(cfg)
    attn_res = {int(r) for r in cfg.attention_resolutions}
    drop = float(getattr(cfg, "dropout", 0.0) or 0.0) > 0

    def resnet(cin: int, cout: int, hw: int) -> int:
        return (3 * cin + 3 * cout + (cout if drop else 0)) * hw

    def attention(c: int, hw: int) -> int:
        return 7 * c * hw

    n = int(cfg.in_channels) * int(cfg.image_size) ** 2  # the input (unshuffled into size x size patches)
    c = base
    for i in range(L):
        hw = (size // 2**i) ** 2
        cin, c = c, chans[i]
        for j in range(nres):
            n += resnet(cin if j == 0 else c, c, hw)
            if size // 2**i in attn_res:
                n += attention(c, hw)
        if i < L - 1:
            n += c * (size // 2**i + 1) ** 2  # the padded map the stride-2 conv reads
    hw = (size // 2 ** (L - 1)) ** 2
    n += 2 * resnet(chans[-1], chans[-1], hw) + (attention(chans[-1], hw) if _mid_attention(cfg) else 0)
    rev = chans[::-1]
    c = rev[0]
    for i in range(L):
        side = size // 2 ** (L - 1 - i)
        prev, c = c, rev[i]
        skip_in = rev[min(i + 1, L - 1)]
        for j in range(nres + 1):
            skip = skip_in if j == nres else c
            n += resnet((prev if j == 0 else c) + skip, c, side * side)
            if side in attn_res:
                n += attention(c, side * side)
        if i < L - 1:
            n += c * (2 * side) ** 2
    n += 2 * base * size * size  # the output norm's input and SiLU
    return n


@dataclass(frozen=True)
class Footprint:
    parameters: int
    weight_bytes: int  # one float32 copy of the weights
    needed_bytes: int  # what the task would hold at its peak (estimate)
    what: str  # "training with batch 64", "sampling"

    def describe(self) -> str:
        return (f"{self.parameters:,} parameters ({_gib(self.weight_bytes)} of weights); {self.what} needs about "
                f"{_gib(self.needed_bytes)}")


def estimate(cfg: Any, *, batch_size: int | None = None, training: bool = False) -> Footprint:
    """Memory the network of ``cfg`` needs for training with ``batch_size``, or for sampling."""
    params = parameter_count(cfg)
    wbytes = params * BYTES_PER_VALUE
    if training:
        b = int(batch_size or 1)
        need = TRAINING_COPIES * wbytes + b * activation_values(cfg) * BYTES_PER_VALUE
        what = f"training with batch {b}"
    else:
        # sampling: one copy of the weights, and a batch's skip maps and working tensors
        b = int(batch_size or 0)
        need = wbytes + b * activation_values(cfg) * BYTES_PER_VALUE // 4
        what = "sampling" if not b else f"sampling {b} image(s) at a time"
    return Footprint(params, wbytes, need, what)


def system_memory_bytes() -> int | None:
    """Total physical memory of this machine (None when the system does not say)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    if sys.platform == "win32":
        import ctypes

        class _Status(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

        st = _Status()
        st.dwLength = ctypes.sizeof(_Status)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(st)):
            return int(st.ullTotalPhys)
    return None


def device_memory(device: Any) -> tuple[int | None, str]:
    """(bytes, words) of the memory a torch device computes in: a CUDA card's own, else the RAM."""
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        import torch

        props = torch.cuda.get_device_properties(device)
        return int(props.total_memory), f"the {_gib(props.total_memory)} of {props.name}"
    total = system_memory_bytes()
    if total is None:
        return None, "this machine's memory (size unknown)"
    return total, f"this machine's {_gib(total)} of memory"


def check_fits(cfg: Any, *, memory: int | None, where: str, batch_size: int | None = None,
               training: bool = False) -> Footprint:
    """Raise ValueError (with the figures) when the estimate exceeds SAFE_FRACTION of ``memory``."""
    fp = estimate(cfg, batch_size=batch_size, training=training)
    if memory is not None and fp.needed_bytes > SAFE_FRACTION * memory:
        hint = " Lower the batch size, the image size, base_channels or channel_mult." if training else \
            " Use a smaller model."
        raise ValueError(f"this network is too large for {where}: {fp.describe()}, more than "
                         f"{SAFE_FRACTION:.0%} of it.{hint}")
    return fp
