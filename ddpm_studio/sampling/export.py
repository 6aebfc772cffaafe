"""Writing generated images: PNG files, grids and animated GIFs (Pillow and numpy only).

Images are numpy ``uint8`` arrays, one image (H, W, C) or a batch (N, H, W, C) with C in {1, 3};
(H, W) and (N, H, W) grayscale are accepted too. No torch import here.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ddpm_studio.config import atomic_write_bytes


def _as_batch(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    arr = np.asarray(images) if not isinstance(images, np.ndarray) else images
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8; got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3):  # (N, H, W) grayscale
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape (N, H, W, C) with C 1 or 3; got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("no images given")
    return arr


def _as_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8; got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"image must have shape (H, W, C) with C 1 or 3; got {arr.shape}")
    return arr


def _to_pil(image: np.ndarray):
    from PIL import Image

    arr = _as_image(image)
    if arr.shape[-1] == 1:
        return Image.fromarray(np.ascontiguousarray(arr[..., 0]), mode="L")
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def make_grid(images: np.ndarray | Sequence[np.ndarray], nrow: int | None = None, pad: int = 2,
              pad_value: int = 0) -> np.ndarray:
    """Tile (N, H, W, C) images into one (H', W', C) image, ``nrow`` images per row.

    ``nrow`` defaults to ceil(sqrt(N)) (a square-ish grid); ``pad`` pixels of ``pad_value``
    separate the tiles and frame the grid.
    """
    batch = _as_batch(images)
    n, h, w, c = batch.shape
    if nrow is None:
        nrow = math.ceil(math.sqrt(n))
    if nrow < 1:
        raise ValueError(f"nrow must be at least 1; got {nrow}")
    if pad < 0:
        raise ValueError(f"pad must be 0 or more; got {pad}")
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    grid = np.full((pad + nrows * (h + pad), pad + ncol * (w + pad), c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y: y + h, x: x + w] = batch[i]
    return grid


def upscale_nearest(image: np.ndarray, factor: int) -> np.ndarray:
    """Enlarge an (H, W, C) or (N, H, W, C) image by an integer ``factor`` (crisp pixels)."""
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a whole number >= 1; got {factor!r}")
    if factor == 1:
        return image
    arr = np.asarray(image)
    h_axis = arr.ndim - 3
    return arr.repeat(factor, axis=h_axis).repeat(factor, axis=h_axis + 1)


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    _to_pil(image).save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write one (H, W, C) uint8 image as a PNG (atomically)."""
    path = Path(path)
    atomic_write_bytes(path, _png_bytes(image))
    return path


def save_pngs(images: np.ndarray | Sequence[np.ndarray], folder: str | os.PathLike,
              prefix: str = "sample", start: int = 0) -> list[Path]:
    """Write each image as ``folder/{prefix}_{i:04d}.png`` (i from ``start``); returns the paths."""
    batch = _as_batch(images)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(start + len(batch) - 1)))
    return [save_png(img, folder / f"{prefix}_{start + i:0{width}d}.png") for i, img in enumerate(batch)]


def save_grid(images: np.ndarray | Sequence[np.ndarray], path: str | os.PathLike, nrow: int | None = None,
              pad: int = 2) -> Path:
    """Write the images tiled into one grid PNG."""
    return save_png(make_grid(images, nrow=nrow, pad=pad), path)


def save_gif(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float = 20,
             hold_last_sec: float = 1.0) -> int:
    """Write (H, W, C) uint8 frames as a looping GIF at ``fps``, the last one held ``hold_last_sec``.

    A frame identical to the one before it adds its time to that one instead of being stored
    (GIF encoders do this anyway). Returns the number of frames stored in the file, read back.
    """
    from PIL import Image

    if not fps > 0:
        raise ValueError(f"fps must be positive; got {fps!r}")
    if hold_last_sec < 0:
        raise ValueError(f"hold_last_sec must be 0 or more; got {hold_last_sec!r}")
    frame_ms = 1000.0 / fps
    kept: list[np.ndarray] = []
    durations: list[float] = []
    for frame in frames:
        arr = _as_image(frame)
        if kept and arr.shape != kept[0].shape:
            raise ValueError(f"all GIF frames must have the same shape; got {arr.shape} after {kept[0].shape}")
        if kept and np.array_equal(arr, kept[-1]):
            durations[-1] += frame_ms
            continue
        kept.append(arr)
        durations.append(frame_ms)
    if not kept:
        raise ValueError("no frames given for the GIF")
    durations[-1] += hold_last_sec * 1000.0
    # GIF stores delays in hundredths of a second; round to the nearest 10 ms, at least 20 ms
    # (many viewers replace shorter delays with 100 ms).
    durations_ms = [max(20, int(round(d / 10.0)) * 10) for d in durations]
    pil = [_to_pil(f).convert("RGB") if f.shape[-1] == 3 else _to_pil(f) for f in kept]
    buf = io.BytesIO()
    pil[0].save(buf, format="GIF", save_all=True, append_images=pil[1:], duration=durations_ms,
                loop=0, optimize=False, disposal=1)
    atomic_write_bytes(Path(path), buf.getvalue())
    with Image.open(io.BytesIO(buf.getvalue())) as written:  # the encoder may merge frames that
        return int(written.n_frames)  # became equal after colour quantisation
