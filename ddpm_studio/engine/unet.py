"""The denoising U-Net of Ho et al. 2020 (appendix B), laid out like diffusers' ``UNet2DModel``.

Architecture (the paper's, from PixelCNN++ / Wide ResNet):

- ``conv_in`` 3x3 to ``base_channels``;
- a sinusoidal embedding of t (Transformer style, ``sin`` half first, frequencies
  ``exp(-log(10000) i / (half - 1))``) through a two-layer MLP (``time_embedding``) of width
  4 x base_channels;
- per resolution level: ``num_res_blocks`` residual blocks (GroupNorm, SiLU, 3x3 conv, + a linear
  projection of SiLU(time embedding), GroupNorm, SiLU, dropout, 3x3 conv, 1x1 shortcut when the width
  changes), single-head self-attention after each block at ``attention_resolutions``, then a strided
  3x3 conv down-sampling (not at the last level);
- a middle of residual block, attention, residual block;
- the mirror image going up, with ``num_res_blocks + 1`` blocks per level, each fed the matching
  skip activation (concatenated on the channel axis), nearest-neighbour x2 + 3x3 conv up-sampling;
- GroupNorm, SiLU, ``conv_out`` 3x3 back to the image channels.

Weight mapping (issue 7). Module names and parameter shapes are exactly those of diffusers'
``UNet2DModel`` with ``DownBlock2D`` / ``AttnDownBlock2D`` / ``UpBlock2D`` / ``AttnUpBlock2D`` /
``UNetMidBlock2D`` and ``time_embedding_type="positional"``:
``conv_in``, ``time_embedding.linear_{1,2}``, ``down_blocks.{i}.resnets.{j}.{norm1,conv1,
time_emb_proj,norm2,conv2,conv_shortcut}``, ``down_blocks.{i}.attentions.{j}.{group_norm,to_q,to_k,
to_v,to_out.0}``, ``down_blocks.{i}.downsamplers.0.conv``, ``mid_block.resnets.{0,1}``,
``mid_block.attentions.0``, ``up_blocks.{i}.resnets/attentions/upsamplers.0.conv``,
``conv_norm_out``, ``conv_out``. So a diffusers state dict loads with ``load_state_dict`` key for
key (google/ddpm-cifar10-32: ``block_out_channels=(128, 256, 256, 256)`` is base 128 and
``channel_mult=(1, 2, 2, 2)``; the ``Attn*`` block types give ``attention_resolutions``).

Every UNet2DModel option that only changes a number or a switch inside these blocks is a
ModelConfig field, with the paper's value as default (issue 15); diffusers' name in brackets:

- ``norm_eps`` (``norm_eps``): epsilon of every GroupNorm; paper 1e-6, diffusers' default 1e-5.
- ``norm_groups`` (``norm_num_groups``): groups of every GroupNorm; ``attn_norm_groups``
  (``attn_norm_num_groups``): groups of the middle block's attention norm only (None = norm_groups;
  with ``time_conditioning="scale_shift"``, None means that attention has no norm, as in diffusers).
- ``attention_head_dim`` (same name): None = ``num_heads`` heads per attention layer (diffusers'
  null = one head); d = ``width // d`` heads of d channels in every layer.
- ``downsample_padding`` (same name): 0 = the paper's TensorFlow ``SAME`` stride-2 conv (pad one
  row/column bottom/right, then no padding); 1 = symmetric padding.
- ``flip_sin_to_cos``, ``freq_shift`` (same names): the time embedding's [sin, cos] order and its
  frequencies ``exp(-log(10000) i / (half - freq_shift))`` (paper: [sin, cos], shift 1).
- ``add_attention`` (same name): the middle block's attention on (paper) or off.
- ``dropout`` (same name): inside residual blocks, after the second norm.
- ``mid_block_scale_factor`` (same name): the middle block's residual sums (resnets and attention)
  are divided by it.
- ``time_embedding_dim`` (same name): width of the time MLP; None = 4 x the first level's width.
- ``center_input_sample`` (same name): x -> 2x - 1 before ``conv_in``.
- ``act_fn`` (same name; "swish" is "silu"): the residual blocks' nonlinearity, also applied to the
  time embedding each block projects. The time MLP and the output head always use SiLU, as in diffusers.
- ``time_conditioning`` (``resnet_time_scale_shift``): "default" adds the projected embedding
  after ``conv1``; "scale_shift" projects to 2 x width and applies ``norm2(h) * (1 + scale) + shift``.

GroupNorm groups: the paper uses 32 everywhere. By default (``norm_groups=None``) we use the largest
divisor of every width in the network that is at most ``min(32, base_channels // 4)``; that is 32
for base_channels >= 128 (all paper models) and 8 / 16 for the ``tiny`` / ``small`` presets, so a
narrow network still gets >= 4 channels per group. One count serves every norm, as in diffusers.

``UNet(cfg, norm_groups=..., downsample_padding=..., flip_sin_to_cos=..., freq_shift=...,
attention_head_dim=..., out_channels=...)`` keywords override the config's fields (older callers).

Patches (``patch_size`` P > 1, not in the paper): the input is pixel-unshuffled into P x P patches stacked
as channels, the network runs at image_size / P (``attention_resolutions`` count the feature map's side)
and its output is pixel-shuffled back; ``conv_in`` / ``conv_out`` carry P^2 times the image channels.
UNet2DModel has no such input, so these networks are not exported for diffusers.

Length (over 500 lines, on purpose): the network, its blocks and its resolved shape (``UNetSpec``) are
one piece whose names must stay those of diffusers key for key; this docstring is the map.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .choices import Activation, TimeConditioning

NORM_EPS = 1e-6  # the paper's GroupNorm epsilon (ModelConfig.norm_eps's default)
ACTIVATIONS = Activation.values()
TIME_CONDITIONINGS = TimeConditioning.values()


@dataclass(frozen=True)
class UNetSpec:
    """The resolved shape of a network (what a ModelConfig plus the extra options mean)."""

    image_size: int
    in_channels: int
    out_channels: int
    base_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    dropout: float
    num_heads: int
    attention_head_dim: int  # 0: every attention has num_heads heads; else heads = width // attention_head_dim
    norm_groups: int
    downsample_padding: int
    flip_sin_to_cos: bool
    freq_shift: float
    norm_eps: float = NORM_EPS
    attn_norm_groups: int = 0  # the middle attention's GroupNorm groups; 0 = that attention has no norm
    add_attention: bool = True
    mid_block_scale_factor: float = 1.0
    time_embedding_dim: int = 0  # 0 = 4 x the first level's width (base_channels x channel_mult[0])
    center_input_sample: bool = False
    act_fn: str = "silu"
    time_conditioning: str = "default"
    patch_size: int = 1  # the network works on image_size / patch_size, patches stacked as channels

    @property
    def feature_size(self) -> int:
        """The side of the first level's feature map: image_size / patch_size."""
        return self.image_size // self.patch_size

    def heads(self, channels: int) -> int:
        return channels // self.attention_head_dim if self.attention_head_dim else self.num_heads

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def temb_channels(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]  # as diffusers: 4 x the first width

    def attention_widths(self) -> list[int]:
        """The widths of the layers that attend (levels at attention_resolutions, and the middle)."""
        chans = self.block_out_channels
        widths = {c for i, c in enumerate(chans) if self.feature_size // 2**i in self.attention_resolutions}
        if self.add_attention:
            widths.add(chans[-1])
        return sorted(widths)


def _widths(base: int, mult: tuple[int, ...]) -> set[int]:
    """Every channel count a GroupNorm sees (including the concatenations of the up path)."""
    chans = [base * m for m in mult]
    widths = set(chans)
    L = len(chans)
    rev = chans[::-1]
    for i in range(L):
        out_c = rev[i]
        prev = rev[max(i - 1, 0)]
        skip_in = rev[min(i + 1, L - 1)]
        widths |= {prev + out_c, out_c + out_c, out_c + skip_in}
    return widths


def default_norm_groups(base_channels: int, channel_mult: tuple[int, ...]) -> int:
    """Largest divisor of every width that is <= min(32, base_channels // 4) (32 for the paper's models)."""
    cap = max(1, min(32, base_channels // 4))
    g = 0
    for w in _widths(base_channels, tuple(channel_mult)):
        g = math.gcd(g, w)
    return max(d for d in range(1, cap + 1) if g % d == 0)


def resolve_spec(cfg: Any, **overrides: Any) -> UNetSpec:
    """Combine a ModelConfig (or any object with its fields) with the optional extra settings."""

    def opt(name: str, default: Any) -> Any:
        if overrides.get(name) is not None:
            return overrides[name]
        value = getattr(cfg, name, None)
        return default if value is None else value

    base = int(cfg.base_channels)
    mult = tuple(int(m) for m in cfg.channel_mult)
    groups = opt("norm_groups", 0) or default_norm_groups(base, mult)
    bad = sorted(w for w in _widths(base, mult) if w % groups)
    if bad:
        raise ValueError(f"norm_groups={groups} must divide every channel count of the network; it does not divide "
                         f"{bad}")
    act = str(opt("act_fn", "silu"))
    act = "silu" if act == "swish" else act
    if act not in ACTIVATIONS:
        raise ValueError(f"act_fn must be one of {', '.join(ACTIVATIONS)}; got {act!r}")
    cond = str(opt("time_conditioning", "default"))
    if cond not in TIME_CONDITIONINGS:
        raise ValueError(f"time_conditioning must be one of {', '.join(TIME_CONDITIONINGS)}; got {cond!r}")
    attn_groups = int(opt("attn_norm_groups", 0)) or (groups if cond == "default" else 0)
    if attn_groups and (base * mult[-1]) % attn_groups:
        raise ValueError(f"attn_norm_groups={attn_groups} must divide the middle block's width {base * mult[-1]}")
    pad = int(opt("downsample_padding", 0))
    if pad not in (0, 1):
        raise ValueError(f"downsample_padding must be 0 (the paper's) or 1; got {pad!r}")
    spec = UNetSpec(
        image_size=int(cfg.image_size), in_channels=int(cfg.in_channels),
        out_channels=int(opt("out_channels", cfg.in_channels)), base_channels=base, channel_mult=mult,
        num_res_blocks=int(cfg.num_res_blocks), attention_resolutions=tuple(int(r) for r in cfg.attention_resolutions),
        dropout=float(cfg.dropout), num_heads=int(cfg.num_heads), attention_head_dim=int(opt("attention_head_dim", 0)),
        norm_groups=int(groups), downsample_padding=pad, flip_sin_to_cos=bool(opt("flip_sin_to_cos", False)),
        freq_shift=float(opt("freq_shift", 1)), norm_eps=float(opt("norm_eps", NORM_EPS)), attn_norm_groups=attn_groups,
        add_attention=bool(opt("add_attention", True)), mid_block_scale_factor=float(opt("mid_block_scale_factor",
                                                                                         1.0)),
        time_embedding_dim=int(opt("time_embedding_dim", 0)), center_input_sample=bool(opt("center_input_sample",
                                                                                           False)),
        act_fn=act, time_conditioning=cond, patch_size=int(opt("patch_size", 1)),
    )
    if spec.patch_size < 1 or spec.image_size % spec.patch_size:
        raise ValueError(f"patch_size must be a whole number >= 1 that divides image_size ({spec.image_size}); "
                         f"got {spec.patch_size}")
    for c in spec.attention_widths():
        if spec.attention_head_dim and (c % spec.attention_head_dim or c < spec.attention_head_dim):
            raise ValueError(f"attention_head_dim={spec.attention_head_dim} must divide every attention layer's width; "
                             f"it does not divide {c}")
        if not spec.attention_head_dim and c % spec.num_heads:
            raise ValueError(f"model.num_heads={spec.num_heads} must divide every attention layer's width; "
                             f"it does not divide {c}")
    return spec


# -- building blocks ----------------------------------------------------------------------------
def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The residual blocks' nonlinearity. In place where the backward pass needs only the output
    (SiLU's and ReLU's inputs here are GroupNorm outputs that nothing else reads)."""
    if name == "silu":
        return lambda x: F.silu(x, inplace=True)
    if name == "relu":
        return lambda x: F.relu(x, inplace=True)
    if name == "mish":
        return F.mish
    return F.gelu  # exact (erf) GELU, as torch.nn.GELU()


class ResnetBlock(nn.Module):
    """Wide-ResNet block with the time embedding added after the first conv (diffusers' ResnetBlock2D)."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, spec: UNetSpec, output_scale: float = 1.0) -> None:
        super().__init__()
        g, eps = spec.norm_groups, spec.norm_eps
        self.scale_shift = spec.time_conditioning == "scale_shift"
        self.output_scale = float(output_scale)
        self.act = _activation(spec.act_fn)
        self.norm1 = nn.GroupNorm(g, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_ch, 2 * out_ch if self.scale_shift else out_ch)
        self.norm2 = nn.GroupNorm(g, out_ch, eps=eps)
        self.dropout = nn.Dropout(spec.dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        """``temb_act`` is act(time embedding), computed once per forward by the U-Net."""
        # In-place activations and adds: GroupNorm's and a conv's backward need their inputs, never these outputs.
        h = self.conv1(self.act(self.norm1(x)))
        temb = self.time_emb_proj(temb_act)[:, :, None, None]  # (B, C or 2C, 1, 1) broadcast over H, W
        if self.scale_shift:
            scale, shift = temb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h.add_(temb))
        h = self.conv2(self.dropout(self.act(h)))
        h = h.add_(x if self.conv_shortcut is None else self.conv_shortcut(x))
        return h if self.output_scale == 1.0 else h.div_(self.output_scale)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, each (B, heads, N, d). Under bf16 autocast on a CPU it runs in fp32:
    torch's CPU flash-attention backward in bf16 took 5x its fp32 time (BENCHMARKS.md, "bf16 attention in
    fp32"), and these attention layers are a small part of the network's work, so fp32 costs little."""
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v)


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions with a residual connection (diffusers' Attention)."""

    def __init__(self, channels: int, groups: int, heads: int, eps: float = NORM_EPS,
                 output_scale: float = 1.0) -> None:
        super().__init__()
        self.heads = heads
        self.output_scale = float(output_scale)
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps) if groups else None
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = x if self.group_norm is None else self.group_norm(x)
        h = h.flatten(2).transpose(1, 2)  # (B, H*W, C)
        w = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight])  # (3C, C): one matmul for q, k, v
        b = torch.cat([self.to_q.bias, self.to_k.bias, self.to_v.bias])
        qkv = F.linear(h, w, b).view(B, H * W, 3, self.heads, C // self.heads)  # (B, HW, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, HW, d)
        a = attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        a = a.transpose(1, 2).reshape(B, H * W, C)  # (B, HW, C)
        out = self.to_out[0](a).transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        out = out.add_(x)
        return out if self.output_scale == 1.0 else out.div_(self.output_scale)


class Downsample(nn.Module):
    def __init__(self, channels: int, padding: int) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))  # TensorFlow "SAME" for stride 2: one extra column/row right/bottom
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    """One resolution level going down: resnets (+ attentions), then an optional down-sampler."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, spec: UNetSpec, attention: bool,
                 downsample: bool) -> None:
        super().__init__()
        g = spec.norm_groups
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if j == 0 else out_ch, out_ch, temb_ch, spec) for j in range(spec.num_res_blocks)])
        self.attentions = nn.ModuleList([AttentionBlock(out_ch, g, spec.heads(out_ch), spec.norm_eps)
                                         for _ in range(spec.num_res_blocks)]) if attention else None
        self.downsamplers = nn.ModuleList([Downsample(out_ch, spec.downsample_padding)]) if downsample else None

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for j, resnet in enumerate(self.resnets):
            x = resnet(x, temb_act)
            if self.attentions is not None:
                x = self.attentions[j](x)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x


class UpBlock(nn.Module):
    """One resolution level going up: resnets on [x, skip] (+ attentions), then an optional up-sampler."""

    def __init__(self, prev_ch: int, out_ch: int, skip_in_ch: int, temb_ch: int, spec: UNetSpec, attention: bool,
                 upsample: bool) -> None:
        super().__init__()
        g, n = spec.norm_groups, spec.num_res_blocks + 1
        resnets = []
        for j in range(n):
            skip_ch = skip_in_ch if j == n - 1 else out_ch
            resnets.append(ResnetBlock((prev_ch if j == 0 else out_ch) + skip_ch, out_ch, temb_ch, spec))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList([AttentionBlock(out_ch, g, spec.heads(out_ch), spec.norm_eps)
                                         for _ in range(n)]) if attention else None
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if upsample else None

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for j, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb_act)  # (B, C + C_skip, H, W)
            if self.attentions is not None:
                x = self.attentions[j](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """resnet, attention (unless ``add_attention`` is off), resnet; sums divided by ``mid_block_scale_factor``."""

    def __init__(self, ch: int, temb_ch: int, spec: UNetSpec) -> None:
        super().__init__()
        scale = spec.mid_block_scale_factor
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, temb_ch, spec, output_scale=scale) for _ in range(2)])
        self.attentions = nn.ModuleList([AttentionBlock(ch, spec.attn_norm_groups, spec.heads(ch), spec.norm_eps,
                                                        output_scale=scale)]) if spec.add_attention else None

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb_act)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x, temb_act)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_ch, out_ch)
        self.linear_2 = nn.Linear(out_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


# -- the network --------------------------------------------------------------------------------
class UNet(nn.Module):
    """eps_theta(x_t, t): (B, C, H, W), (B,) long -> (B, C, H, W)."""

    def __init__(self, cfg: Any, *, norm_groups: int | None = None, downsample_padding: int | None = None,
                 flip_sin_to_cos: bool | None = None, freq_shift: float | None = None, out_channels: int | None = None,
                 attention_head_dim: int | None = None) -> None:
        super().__init__()
        if hasattr(cfg, "validate"):
            cfg.validate()
        spec = resolve_spec(cfg, norm_groups=norm_groups, downsample_padding=downsample_padding,
                            flip_sin_to_cos=flip_sin_to_cos, freq_shift=freq_shift, out_channels=out_channels,
                            attention_head_dim=attention_head_dim)
        self.spec = spec
        chans = spec.block_out_channels
        L = len(chans)
        base = chans[0]
        temb_ch = spec.temb_channels

        # Sinusoidal frequencies, computed once: exp(-log(10000) * i / (half - freq_shift)).
        half = base // 2
        exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - spec.freq_shift)
        self.register_buffer("time_freqs", torch.exp(exponent), persistent=False)  # (half,)

        p2 = spec.patch_size ** 2
        self.conv_in = nn.Conv2d(spec.in_channels * p2, base, 3, padding=1)
        self.time_embedding = TimestepEmbedding(base, temb_ch)
        self._act = {"silu": F.silu, "relu": F.relu, "mish": F.mish, "gelu": F.gelu}[spec.act_fn]

        self.down_blocks = nn.ModuleList()
        out_ch = base
        for i in range(L):
            in_ch, out_ch = out_ch, chans[i]
            res = spec.feature_size // 2**i
            self.down_blocks.append(DownBlock(in_ch, out_ch, temb_ch, spec, attention=res in spec.attention_resolutions,
                                              downsample=i < L - 1))
        self.mid_block = MidBlock(chans[-1], temb_ch, spec)

        rev = chans[::-1]
        self.up_blocks = nn.ModuleList()
        out_ch = rev[0]
        for i in range(L):
            prev_ch, out_ch = out_ch, rev[i]
            skip_in_ch = rev[min(i + 1, L - 1)]
            res = spec.feature_size // 2 ** (L - 1 - i)
            self.up_blocks.append(UpBlock(prev_ch, out_ch, skip_in_ch, temb_ch, spec,
                                          attention=res in spec.attention_resolutions,
                                          upsample=i < L - 1))
        self.conv_norm_out = nn.GroupNorm(spec.norm_groups, base, eps=spec.norm_eps)
        self.conv_out = nn.Conv2d(base, spec.out_channels * p2, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation: variance scaling (fan_avg, uniform), biases 0, and a ~0 scale
        (1e-10) for the last layer of every residual branch and for the output conv."""

        def init(module: nn.Module, scale: float = 1.0) -> None:
            w = module.weight
            receptive = w[0, 0].numel() if w.dim() > 2 else 1
            fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
            limit = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
            with torch.no_grad():
                w.uniform_(-limit, limit)
                if module.bias is not None:
                    module.bias.zero_()

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                init(m)
        for m in self.modules():
            if isinstance(m, ResnetBlock):
                init(m.conv2, 1e-10)
            elif isinstance(m, AttentionBlock):
                init(m.to_out[0], 1e-10)
        init(self.conv_out, 1e-10)

    def time_proj(self, t: torch.Tensor) -> torch.Tensor:
        """Sinusoidal embedding (B,) -> (B, base_channels): [sin, cos] (or [cos, sin] if flipped)."""
        # float32 whatever the model's dtype, as diffusers computes it (then cast by the caller)
        args = t.float()[:, None] * self.time_freqs.float()[None, :]  # (B, half)
        emb = torch.cat([args.cos(), args.sin()] if self.spec.flip_sin_to_cos else [args.sin(), args.cos()], dim=1)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        temb = self.time_embedding(self.time_proj(t).to(x.dtype))  # (B, 4 * base)
        temb_act = self._act(temb)  # every resnet projects act(temb); compute it once (out of place: temb is reused)

        if self.spec.center_input_sample:
            x = 2 * x - 1.0
        if self.spec.patch_size > 1:
            x = F.pixel_unshuffle(x, self.spec.patch_size)  # (B, C p^2, H / p, W / p)
        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h = block(h, temb_act, skips)
        h = self.mid_block(h, temb_act)
        for block in self.up_blocks:
            h = block(h, temb_act, skips)
        out = self.conv_out(F.silu(self.conv_norm_out(h), inplace=True))
        return F.pixel_shuffle(out, self.spec.patch_size) if self.spec.patch_size > 1 else out


def build_model(cfg: Any, **options: Any) -> UNet:
    """The U-Net for ``cfg`` (a ModelConfig); ``options`` as for :class:`UNet`."""
    return UNet(cfg, **options)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
