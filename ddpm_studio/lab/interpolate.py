"""Interpolation: between two seeds' x_T (spherical, deterministic sampler) and between two images
noised to a chosen t (Ho et al. 2020, §4.4 and Fig. 8).

Each frame is its own chain of batch 1, so the end frames of a seed walk are exactly the seeds' own
samples (``ddpm-studio sample --num 1 --seed A``), and in an image walk every frame gets the same
reverse-process noise ("we fixed the noise for different values of λ", §4.4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..config import SamplingConfig
from .branch import nearest_index
from .chain import check_sampling, is_stochastic, sampler_timesteps, start_noise


def weights(frames: int) -> list[float]:
    """``frames`` interpolation weights from 0 to 1, both ends included."""
    if not isinstance(frames, int) or frames < 2:
        raise ValueError(f"the number of frames must be a whole number of at least 2; got {frames!r}")
    return [i / (frames - 1) for i in range(frames)]


def slerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """Spherical interpolation per image: sin((1-w)θ)/sin θ · a + sin(wθ)/sin θ · b, θ the angle
    between a and b (Shoemake 1985; the DDIM paper's interpolation of x_T). w = 0 and w = 1 return
    a and b themselves; nearly parallel vectors are interpolated linearly."""
    if w == 0:
        return a.clone()
    if w == 1:
        return b.clone()
    fa, fb = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()  # (B, C*H*W)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1.0, 1.0))[:, None]  # (B, 1)
    s = torch.sin(theta)
    lin = s.abs() < 1e-6
    ca = torch.where(lin, torch.full_like(s, 1 - w), torch.sin((1 - w) * theta) / torch.where(lin, 1.0, s))
    cb = torch.where(lin, torch.full_like(s, w), torch.sin(w * theta) / torch.where(lin, 1.0, s))
    return (ca * fa + cb * fb).to(a.dtype).reshape(a.shape)


@dataclass
class Frame:
    index: int
    weight: float
    image: torch.Tensor  # (1, C, H, W) x_0 in [-1, 1]


def check_weight(weight: float) -> float:
    """An interpolation weight from 0 (the first end) to 1 (the second); one-line ValueError otherwise."""
    try:
        w = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"the interpolation weight must be a number from 0 to 1; got {weight!r}") from None
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"the interpolation weight must be from 0 to 1; got {weight!r}")
    return w


def _decode(model, diffusion, sampling, x, *, start_index, seed, device, should_stop) -> torch.Tensor | None:
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    last = None
    for last in diffusion.sample_progressive(model, x.shape, sampling, generator=generator, device=device,
                                             should_stop=should_stop, noise=x, start_index=start_index):
        pass
    if last is None or last.index != last.total - 1:
        return None
    return last.x_t.detach().float().cpu()


def _check_seed_sampling(sampling: SamplingConfig, T: int) -> None:
    check_sampling(sampling, T)
    if is_stochastic(sampling):
        raise ValueError(f"seed interpolation needs a deterministic sampler so the end frames are the seeds' own "
                         f"samples: choose DDIM with η = 0, DPM-Solver++ 2M or 3M (not {sampling.sampler}"
                         + (f" with η = {sampling.eta:g}" if sampling.sampler == "ddim" else "") + ")")


def _seed_ends(image_shape, seed_a: int, seed_b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The x_T of each seed, batch 1, drawn as ``sample --num 1 --seed S`` draws it."""
    return start_noise((1, *image_shape), seed_a)[0], start_noise((1, *image_shape), seed_b)[0]


def _slerp_frame(model, diffusion, sampling, xa, xb, w, seed_a, device, should_stop) -> torch.Tensor | None:
    """One frame of a seed walk: the deterministic chain from slerp(x_A, x_B, w)."""
    return _decode(model, diffusion, sampling, slerp(xa, xb, w), start_index=0, seed=seed_a, device=device,
                   should_stop=should_stop)


def seed_walk(model, diffusion, sampling: SamplingConfig, image_shape, seed_a: int, seed_b: int, frames: int, *,
              device=None, should_stop: Callable[[], bool] | None = None) -> Iterator[Frame]:
    """Slerp between the x_T of ``seed_a`` and of ``seed_b``, each frame sampled deterministically."""
    _check_seed_sampling(sampling, diffusion.T)
    xa, xb = _seed_ends(image_shape, seed_a, seed_b)
    for i, w in enumerate(weights(frames)):
        if should_stop is not None and should_stop():
            return
        out = _slerp_frame(model, diffusion, sampling, xa, xb, w, seed_a, device, should_stop)
        if out is None:
            return
        yield Frame(i, w, out)


def seed_frame(model, diffusion, sampling: SamplingConfig, image_shape, seed_a: int, seed_b: int, weight: float, *,
               device=None, should_stop: Callable[[], bool] | None = None) -> torch.Tensor | None:
    """The seed walk's frame at any weight from 0 to 1 (a strip's weight gives that strip's frame bit
    for bit); (1, C, H, W), or None when stopped."""
    w = check_weight(weight)
    _check_seed_sampling(sampling, diffusion.T)
    xa, xb = _seed_ends(image_shape, seed_a, seed_b)
    return _slerp_frame(model, diffusion, sampling, xa, xb, w, seed_a, device, should_stop)


def image_to_tensor(image: np.ndarray, image_shape) -> torch.Tensor:
    """(H, W, C) uint8 → (1, C, H, W) float in [-1, 1]; the size and channels must be the model's."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    c, h, w = image_shape
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape != (h, w, c):
        raise ValueError(f"an interpolation image must be {w}x{h} px with {c} channel(s), as the model makes; "
                         f"got shape {arr.shape}")
    x = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)[None].float()  # (1, C, H, W)
    return x / 127.5 - 1.0


@dataclass
class ImageWalk:
    t: int  # the timestep both images were noised to (one the sampler visits)
    start_index: int
    x_t_a: torch.Tensor  # (1, C, H, W)
    x_t_b: torch.Tensor


def noised_pair(diffusion, sampling: SamplingConfig, x0_a: torch.Tensor, x0_b: torch.Tensor, *, t: int,
                seed: int) -> ImageWalk:
    """x_t ~ q(x_t | x_0) for both images, independent noise from a generator seeded with ``seed``;
    t is moved to the nearest timestep the sampler visits."""
    check_sampling(sampling, diffusion.T)
    if not 0 <= int(t) < diffusion.T:
        raise ValueError(f"the interpolation t must be from 0 to T-1={diffusion.T - 1}; got {t}")
    ts = sampler_timesteps(diffusion, sampling)
    k = nearest_index(ts, int(t))
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    eps_a = torch.randn(x0_a.shape, generator=g)
    eps_b = torch.randn(x0_b.shape, generator=g)
    t_used = int(ts[k])
    return ImageWalk(t_used, k, diffusion.q_sample(x0_a, t_used, eps_a), diffusion.q_sample(x0_b, t_used, eps_b))


def mix(walk: ImageWalk, weight: float) -> torch.Tensor:
    """x̄_t = (1 - λ) x_t + λ x'_t (§4.4); λ = 0 and 1 give the noised images themselves, bit for bit."""
    lam = check_weight(weight)
    if lam in (0.0, 1.0):
        return (walk.x_t_a if lam == 0 else walk.x_t_b).clone()
    return (1.0 - lam) * walk.x_t_a + lam * walk.x_t_b


def image_frame(model, diffusion, sampling: SamplingConfig, walk: ImageWalk, weight: float, *, seed: int = 0,
                device=None, should_stop: Callable[[], bool] | None = None) -> torch.Tensor | None:
    """The image walk's frame at any weight λ from 0 to 1: the mix decoded from ``walk.t`` with the
    walk's fixed reverse noise (seed + 1, as :func:`image_walk`); None when stopped."""
    return _decode(model, diffusion, sampling, mix(walk, weight), start_index=walk.start_index, seed=seed + 1,
                   device=device, should_stop=should_stop)


def image_walk(model, diffusion, sampling: SamplingConfig, x0_a: torch.Tensor, x0_b: torch.Tensor, *, t: int,
               frames: int, seed: int = 0, device=None, should_stop: Callable[[], bool] | None = None,
               walk: ImageWalk | None = None) -> Iterator[Frame]:
    """§4.4: x̄_t = (1 - λ) x_t + λ x'_t for λ from 0 to 1, each decoded from t with the same noise."""
    walk = walk or noised_pair(diffusion, sampling, x0_a, x0_b, t=t, seed=seed)
    for i, lam in enumerate(weights(frames)):
        if should_stop is not None and should_stop():
            return
        out = image_frame(model, diffusion, sampling, walk, lam, seed=seed, device=device, should_stop=should_stop)
        if out is None:
            return
        yield Frame(i, lam, out)


@dataclass
class WalkRecipe:
    """What an interpolation strip was made from, enough to make its frame at any other weight."""

    mode: str  # "seeds" (slerp of two x_T) or "images" (§4.4)
    sampling: SamplingConfig
    image_shape: tuple
    seeds: tuple[int, int] = (0, 1)
    walk: ImageWalk | None = None  # the noised pair (mode "images")
    seed: int = 0  # the image walk's noise seed


def frame_at(model, diffusion, recipe: WalkRecipe, weight: float, *, device=None,
             should_stop: Callable[[], bool] | None = None) -> torch.Tensor | None:
    """The frame of ``recipe``'s walk at ``weight`` (:func:`seed_frame` or :func:`image_frame`)."""
    if recipe.mode == "seeds":
        a, b = recipe.seeds
        return seed_frame(model, diffusion, recipe.sampling, recipe.image_shape, a, b, weight, device=device,
                          should_stop=should_stop)
    if recipe.walk is None:
        raise ValueError("an image walk needs its noised pair")
    return image_frame(model, diffusion, recipe.sampling, recipe.walk, weight, seed=recipe.seed, device=device,
                       should_stop=should_stop)


def load_image_for_model(path, image_shape) -> np.ndarray:
    """A file decoded and preprocessed as the dataset loader does (centre crop, resize, channels) to
    the model's (C, H, W): (H, W, C) uint8. One-line ValueError saying why a file cannot be used."""
    from ..data.decode import Settings, decode_file

    c, h, _ = image_shape
    d = decode_file(str(path), Settings(size=h, channels=str(c), background="white", min_size=0))
    if d.array is None:
        raise ValueError(f"{path}: {d.reason}")
    arr = d.array
    if arr.shape[-1] != c:  # "1"/"3" are honoured by the decoder; keep the model's channels whatever it did
        arr = np.repeat(arr, 3, axis=2) if c == 3 else arr[..., :1]
    return arr


def fit_array(image: np.ndarray, image_shape) -> np.ndarray:
    """An (H, W, C) uint8 image (e.g. from the dataset, at the dataset's size) made the model's
    (C, H, W): Lanczos-resized and converted to its channels."""
    from PIL import Image

    c, h, w = image_shape
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] != c:
        if c == 3:
            arr = np.repeat(arr, 3, axis=2)
        else:
            arr = np.round(arr[..., :3] @ [0.299, 0.587, 0.114])[..., None].astype(np.uint8)
    if arr.shape[:2] != (h, w):
        im = Image.fromarray(arr[..., 0] if c == 1 else arr).resize((w, h), Image.Resampling.LANCZOS)
        arr = np.asarray(im)
        if arr.ndim == 2:
            arr = arr[..., None]
    return np.ascontiguousarray(arr, dtype=np.uint8)
