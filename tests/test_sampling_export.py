"""Export: grids, PNG files and GIFs with Pillow (no torch)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ddpm_studio.sampling.export import make_grid, save_gif, save_grid, save_png, save_pngs, upscale_nearest


def _images(n, h=8, w=8, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def test_make_grid_places_every_tile():
    imgs = _images(5)
    grid = make_grid(imgs, nrow=3, pad=2)
    assert grid.shape == (2 + 2 * 10, 2 + 3 * 10, 3)  # 2 rows of 3, 8 px tiles, 2 px padding
    assert np.array_equal(grid[2:10, 2:10], imgs[0])
    assert np.array_equal(grid[12:20, 12:20], imgs[4])  # row 1, column 1
    assert (grid[12:20, 22:30] == 0).all()  # the sixth cell is empty
    assert make_grid(_images(9)).shape == (32, 32, 3)  # default: square-ish, 3 per row
    assert make_grid(_images(2, c=1)).shape == (12, 22, 1)


def test_save_png_and_pngs_roundtrip(tmp_path):
    imgs = _images(3)
    paths = save_pngs(imgs, tmp_path / "out", prefix="s")
    assert [p.name for p in paths] == ["s_0000.png", "s_0001.png", "s_0002.png"]
    for p, img in zip(paths, imgs):
        with Image.open(p) as im:
            assert im.mode == "RGB" and np.array_equal(np.asarray(im), img)
    gray = _images(1, c=1)[0]
    save_png(gray, tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), gray[..., 0])
    save_grid(imgs, tmp_path / "grid.png", nrow=3)
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size == (32, 12)


def test_gif_frames_timing_and_hold_last(tmp_path):
    frames = [f for f in _images(6, 16, 16)]
    frames.insert(3, frames[2].copy())  # a repeated frame is merged into the one before it
    n = save_gif(frames, tmp_path / "a.gif", fps=20, hold_last_sec=1.0)
    assert n == 6
    with Image.open(tmp_path / "a.gif") as im:
        assert im.n_frames == 6 and im.size == (16, 16)
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
    assert durations == [50, 50, 100, 50, 50, 1050]


def test_upscale_nearest_and_bad_input():
    img = _images(1, 2, 3)[0]
    big = upscale_nearest(img, 3)
    assert big.shape == (6, 9, 3) and np.array_equal(big[::3, ::3], img)
    assert upscale_nearest(_images(2, 2, 2), 2).shape == (2, 4, 4, 3)
    with pytest.raises(ValueError, match="factor"):
        upscale_nearest(img, 0)
    with pytest.raises(ValueError, match="uint8"):
        make_grid(np.zeros((2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        make_grid(np.zeros((2, 4, 4, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="no frames"):
        save_gif([], "unused.gif")


def test_export_does_not_import_torch():
    code = "import sys, ddpm_studio.sampling.export; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
