"""A small trained run shared by the evaluation tests (not a test file).

Structured synthetic images (one coloured square on a dark ground, 8 px) written as PNG files, so
the run's config names a real folder the CLI can reopen. Trained once per test process (~10 s):
200 steps, a checkpoint every 10 (all kept), a preview grid every 50.
"""

from __future__ import annotations

import atexit
import dataclasses
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from training_support import tiny_config

COLOURS = np.array([[230, 40, 40], [40, 200, 60], [50, 80, 230]], np.uint8)
_CACHE: dict[str, Path] = {}


def squares(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8: a 3-4 px square of one of three colours at a random place."""
    rng = np.random.default_rng(seed)
    im = np.full((n, size, size, 3), 20, np.uint8)
    for i in range(n):
        s = int(rng.integers(3, 5))
        x, y = rng.integers(0, size - s + 1, 2)
        im[i, y:y + s, x:x + s] = COLOURS[rng.integers(0, 3)]
    return im


def blobs(n: int, seed: int) -> np.ndarray:
    """16 px images of a soft disc of random colour, place and size: no two alike."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]
    out = np.empty((n, 16, 16, 3), np.uint8)
    for i in range(n):
        cx, cy, r = rng.uniform(4, 12), rng.uniform(4, 12), rng.uniform(2, 5)
        w = np.clip(r - np.hypot(xx - cx, yy - cy), 0, 1)[..., None]  # (16, 16, 1)
        out[i] = (w * rng.uniform(60, 255, 3) + (1 - w) * rng.uniform(0, 50, 3)).astype(np.uint8)
    return out


def write_pngs(images: np.ndarray, folder: Path, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, a in enumerate(images):
        p = folder / f"{prefix}_{i:04d}.png"
        Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(p)
        out.append(p)
    return out


def trained_run() -> Path:
    """The shared run folder (its images are in RUN/../images)."""
    if "run" in _CACHE:
        return _CACHE["run"]
    base = Path(tempfile.mkdtemp(prefix="ddpm-eval-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    write_pngs(squares(400), base / "images")
    cfg = tiny_config(steps=200, checkpoint_every=10, keep_checkpoints=100, batch_size=16, lr=2e-3,
                      ema_decay=0.99, preview_every=50)
    cfg.data = dataclasses.replace(cfg.data, folder=str(base / "images"))
    from ddpm_studio.training.trainer import Trainer

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        finished = Trainer(cfg, base / "run").run()
    finally:
        torch.set_num_threads(before)
    assert finished.reason == "completed", finished.message
    _CACHE["run"] = base / "run"
    return base / "run"
