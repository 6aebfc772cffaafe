"""Image features that ship with the app: a fixed random-weight conv net and pixel statistics.

No pretrained network is downloaded. A random convolutional network with a fixed seed is a
reasonable, domain-free embedding for comparing two image sets (random features keep most of the
pixel structure at several scales; cf. "Random features for kernel machines", and the
random-network baselines in Naeem et al. 2020, sec. 5): it works on photos, drawings, digits and
grayscale alike, and on any channel count. Its numbers are relative — compare models on the same
data with the same N, never with FIDs published elsewhere.

Images are numpy ``uint8`` arrays (N, H, W, C), C in {1, 3}. Images with a side over
``MAX_SIDE`` are area-averaged down first, so the cost per image is bounded.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

FEATURE_SEED = 20240917  # changing it changes every figure: keep it fixed
WIDTHS = (16, 32, 64)  # channels of the three stride-2 convolutions
MAX_SIDE = 64  # larger images are area-averaged to this side before the net
PIXEL_SIDE = 8  # pixel statistics: the image area-averaged to at most 8 x 8 per channel
BATCH = 512


class RandomConvFeatures(torch.nn.Module):
    """Three 3x3 stride-2 convolutions with ReLU, He-initialised from a fixed seed, never trained.

    Each layer's output is mean- and max-pooled over space and concatenated: 2 x (16 + 32 + 64) =
    224 features, coarse to fine. Global pooling makes it work at any resolution (8 px and up).
    """

    def __init__(self, channels: int, seed: int = FEATURE_SEED):
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {channels}")
        g = torch.Generator().manual_seed(seed + channels)
        convs, c_in = [], channels
        for width in WIDTHS:
            conv = torch.nn.Conv2d(c_in, width, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (c_in * 9)) ** 0.5)
                conv.bias.copy_(torch.randn(width, generator=g) * 0.1)
            convs.append(conv)
            c_in = width
        self.convs = torch.nn.ModuleList(convs)
        self.eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        return 2 * sum(WIDTHS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W) in [-1, 1]
        pooled = []
        for conv in self.convs:
            x = torch.relu_(conv(x))  # (B, width, ceil(H/2), ceil(W/2))
            flat = x.flatten(2)  # (B, width, h*w)
            pooled += [flat.mean(2), flat.amax(2)]  # 2 x (B, width)
        return torch.cat(pooled, dim=1)  # (B, 224)


_NETS: dict[int, RandomConvFeatures] = {}


def feature_net(channels: int) -> RandomConvFeatures:
    if channels not in _NETS:
        _NETS[channels] = RandomConvFeatures(channels)
    return _NETS[channels]


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[3] not in (1, 3):
        raise ValueError(f"images must be uint8 of shape (N, H, W, 1 or 3); got {a.dtype} {a.shape}")
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float().mul_(1 / 127.5).sub_(1.0)  # (N, C, H, W)
    side = max(x.shape[2], x.shape[3])
    if side > MAX_SIDE:
        x = F.adaptive_avg_pool2d(x, (max(1, x.shape[2] * MAX_SIDE // side), max(1, x.shape[3] * MAX_SIDE // side)))
    return x


_CACHE: OrderedDict[bytes, np.ndarray] = OrderedDict()
CACHE_ENTRIES = 4  # feature arrays of recent image sets kept (a run's training set is scored again and again)
CACHE_MIN_IMAGES = 512  # smaller sets are cheaper to recompute than to hash


def _key(a: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(a.shape).encode())
    h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h.digest()


def conv_features(images: np.ndarray, *, should_stop=None) -> np.ndarray:
    """(N, H, W, C) uint8 → (N, 224) float64 features of the fixed random conv net.

    The features of the last few large sets are kept in memory, keyed by a hash of the pixels, so
    scoring many checkpoints against one training set computes its features once.
    """
    a = np.asarray(images)
    key = _key(a) if a.ndim == 4 and len(a) >= CACHE_MIN_IMAGES else None
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    out = _conv_features(a, should_stop)
    if key is not None:
        out.setflags(write=False)
        _CACHE[key] = out
        while len(_CACHE) > CACHE_ENTRIES:
            _CACHE.popitem(last=False)
    return out


def _conv_features(a: np.ndarray, should_stop) -> np.ndarray:
    net = feature_net(int(a.shape[3]) if a.ndim == 4 else 0)
    out = []
    with torch.inference_mode():
        for i in range(0, len(a), BATCH):
            if should_stop is not None and should_stop():
                from ddpm_studio.data import Cancelled

                raise Cancelled("stopped")
            out.append(net(_to_tensor(a[i:i + BATCH])).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.dim))


def pixel_features(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 → (N, <= 8*8*C) float64: the image area-averaged to at most 8 x 8, in [0, 1]."""
    x = (_to_tensor(images) + 1.0) / 2.0  # (N, C, H, W) in [0, 1]
    h, w = x.shape[2], x.shape[3]
    x = F.adaptive_avg_pool2d(x, (min(h, PIXEL_SIDE), min(w, PIXEL_SIDE)))  # (N, C, <=8, <=8)
    return x.flatten(1).double().numpy()  # (N, C*64)


def standardize(real: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Centre every set on the real set's mean and divide by its overall spread (one number).

    One scale for all features (not one per feature): a feature that hardly varies over the real
    images does not blow up an image that differs there, so the kernel values stay of order one.
    """
    mu = real.mean(0)
    scale = float(np.sqrt(((real - mu) ** 2).sum(1).mean() / real.shape[1]))
    scale = scale if scale > 1e-12 else 1.0
    return [(a - mu) / scale for a in (real, *others)]
