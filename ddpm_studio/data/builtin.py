"""The built-in dataset: coloured geometric shapes, drawn by this file.

Every image is 32x32 px: one shape (circle, square, triangle, star or ring) in one of eight strong
colours, of varied size, position and rotation, on a plain background. Simple enough that the
``tiny`` preset learns recognisable samples on a laptop CPU in minutes at 16-32 px, varied enough
that a model which only memorises shows it. (The shapes are large -- 60-80 % of the tile across --
and the backgrounds plain: with smaller shapes and two-tone backgrounds, 1,000 steps of the tiny
preset gave blobs where this set gives rings, discs and squares; BENCHMARKS.md.)

Stored in ``resources/builtin/`` as one PNG sprite sheet (64 tiles per row) plus ``index.json``
(count, tile size, shape of every tile). Regenerate (deterministically) with::

    python -m ddpm_studio.data.builtin --write

Loading at another size resizes every 32 px tile with Lanczos (so 8-16 px are clean
downsamples and 64-256 px are smooth upsamples of 32 px art). ``channels="1"`` gives ITU-R 601
luma; "auto" and "3" give RGB. ``background`` and ``min_size`` do not apply to this set.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ddpm_studio.config import DataConfig, atomic_write_bytes, atomic_write_text

TILE = 32  # stored side (px)
COUNT = 4096  # images
COLUMNS = 64  # tiles per sheet row
SEED = 20261125
SUPERSAMPLE = 4  # drawn at 4x, then box-averaged down: antialiased edges, no ringing, small PNG
SHAPES = ("circle", "square", "triangle", "star", "ring")
SHEET_NAME = "shapes.png"
INDEX_NAME = "index.json"

# Strong shape colours and calm backgrounds (sRGB).
COLOURS = [(230, 57, 70), (244, 140, 6), (255, 200, 30), (56, 176, 0), (0, 168, 150),
           (29, 100, 220), (123, 44, 191), (240, 80, 170)]
BACKGROUNDS = [(250, 246, 236), (236, 236, 236), (220, 232, 245), (232, 244, 226), (30, 36, 52),
               (52, 52, 56), (18, 52, 64), (250, 230, 215)]


def builtin_dir() -> Path:
    from ddpm_studio.paths import resources_dir

    return resources_dir() / "builtin"


# ---------------------------------------------------------------------------------------------
# drawing


def _luma(c) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _jitter(c, rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.array(c) + rng.integers(-amount, amount + 1, 3), 0, 255))


def _regular_polygon(cx: float, cy: float, r: float, n: int, angle: float, inner: float | None = None):
    pts = []
    steps = 2 * n if inner else n
    for k in range(steps):
        a = angle + 2 * math.pi * k / steps
        rr = r if (inner is None or k % 2 == 0) else r * inner
        pts.append((cx + rr * math.sin(a), cy - rr * math.cos(a)))
    return pts


def draw_shape(rng: np.random.Generator) -> tuple[Image.Image, int]:
    """One 32x32 RGB image and its shape index."""
    s = TILE * SUPERSAMPLE
    bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    bg = _jitter(bg, rng, 8)
    im = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(im)
    while True:
        colour = COLOURS[rng.integers(len(COLOURS))]
        if abs(_luma(colour) - _luma(bg)) > 40:
            break
    colour = _jitter(colour, rng, 12)
    kind = int(rng.integers(len(SHAPES)))
    r = rng.uniform(9.5, 13.0) * SUPERSAMPLE  # "radius" in supersampled px
    margin = r + SUPERSAMPLE
    cx = rng.uniform(margin, s - margin)
    cy = rng.uniform(margin, s - margin)
    angle = rng.uniform(0, 2 * math.pi)
    name = SHAPES[kind]
    if name == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif name == "square":
        d.polygon(_regular_polygon(cx, cy, r * 1.05, 4, angle), fill=colour)
    elif name == "triangle":
        d.polygon(_regular_polygon(cx, cy + r * 0.1, r * 1.15, 3, angle), fill=colour)
    elif name == "star":
        d.polygon(_regular_polygon(cx, cy, r * 1.15, 5, angle, inner=0.45), fill=colour)
    else:  # ring
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=int(r * 0.38))
    return im.reduce(SUPERSAMPLE), kind  # box-filter average of 4x4 samples per pixel


def generate(count: int = COUNT, seed: int = SEED) -> tuple[np.ndarray, list[int]]:
    """(count, 32, 32, 3) uint8 and the shape index of each; the same for the same seed."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, TILE, TILE, 3), dtype=np.uint8)
    labels = []
    for i in range(count):
        im, kind = draw_shape(rng)
        images[i] = np.asarray(im)
        labels.append(kind)
    return images, labels


def to_sheet(images: np.ndarray, columns: int = COLUMNS) -> np.ndarray:
    n = images.shape[0]
    rows = -(-n // columns)
    pad = np.zeros((rows * columns - n,) + images.shape[1:], dtype=np.uint8)
    a = np.concatenate([images, pad])  # (rows*cols, T, T, 3)
    a = a.reshape(rows, columns, TILE, TILE, 3).transpose(0, 2, 1, 3, 4)  # (rows, T, cols, T, 3)
    return a.reshape(rows * TILE, columns * TILE, 3)


def from_sheet(sheet: np.ndarray, count: int, columns: int = COLUMNS) -> np.ndarray:
    rows = sheet.shape[0] // TILE
    a = sheet.reshape(rows, TILE, columns, TILE, 3).transpose(0, 2, 1, 3, 4)  # (rows, cols, T, T, 3)
    return np.ascontiguousarray(a.reshape(rows * columns, TILE, TILE, 3)[:count])


def write(folder: Path | None = None) -> Path:
    """Draw the set and write the sheet and index (deterministic)."""
    folder = Path(folder) if folder else builtin_dir()
    images, labels = generate()
    buf = io.BytesIO()
    Image.fromarray(to_sheet(images)).save(buf, format="PNG", optimize=True)
    atomic_write_bytes(folder / SHEET_NAME, buf.getvalue())
    index = {
        "version": 1, "name": "shapes", "count": len(labels), "tile": TILE, "columns": COLUMNS,
        "sheet": SHEET_NAME, "seed": SEED, "shapes": list(SHAPES), "labels": labels,
        "made_by": "python -m ddpm_studio.data.builtin --write",
    }
    atomic_write_text(folder / INDEX_NAME, json.dumps(index, separators=(",", ":")) + "\n")
    return folder


# ---------------------------------------------------------------------------------------------
# loading


_stored: dict[tuple, tuple] = {}


def _read_stored(folder: str) -> tuple[np.ndarray, list[str], str]:
    """(tiles (N, 32, 32, 3) uint8, shape names, blake2b of the sheet), decoded once per process."""
    index_path = Path(folder) / INDEX_NAME
    st = index_path.stat()
    key = (folder, st.st_mtime_ns, st.st_size)
    if key not in _stored:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        data = (Path(folder) / Path(index["sheet"]).name).read_bytes()
        sheet = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        tiles = from_sheet(sheet, int(index["count"]), int(index["columns"]))
        tiles.flags.writeable = False
        names = [index["shapes"][k] for k in index["labels"]]
        _stored.clear()
        _stored[key] = (tiles, names, hashlib.blake2b(data, digest_size=16).hexdigest())
    return _stored[key]


def load_builtin(cfg: DataConfig, *, progress=None, should_stop=None):
    """The built-in set as an :class:`ImageSet` at ``cfg.image_size`` (source "built-in")."""
    from ddpm_studio.data.decode import Settings, luminance
    from ddpm_studio.data.imageset import DatasetError, ImageSet, _fingerprint
    from ddpm_studio.errors import Cancelled

    cfg.validate()
    report = progress or (lambda done, total, message: None)
    stop = should_stop or (lambda: False)
    folder = builtin_dir()
    try:
        tiles, names, digest = _read_stored(str(folder))
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise DatasetError(f"The built-in dataset in {folder} is missing or damaged ({e}); "
                           f"reinstall, or run: python -m ddpm_studio.data.builtin --write") from None
    size, n = cfg.image_size, tiles.shape[0]
    if size == TILE:
        tiles = tiles.copy()  # the decoded sheet is shared between calls; callers get their own
    else:
        out = np.empty((n, size, size, 3), dtype=np.uint8)
        for i in range(n):
            if i % 256 == 0:
                if stop():
                    raise Cancelled("loading was cancelled")
                report(i, n, "Preparing the built-in shapes")
            out[i] = np.asarray(Image.fromarray(tiles[i]).resize((size, size), Image.Resampling.LANCZOS))
        tiles = out
    if cfg.channels == "1":
        tiles = luminance(tiles)  # (N, H, W, 1)
    channels = int(tiles.shape[3])
    settings = Settings(size=size, channels=cfg.channels, background="white", min_size=0)
    report(n, n, f"Loaded {n:,} built-in images")
    return ImageSet(images=tiles, paths=[f"built-in:{i:05d}-{name}" for i, name in enumerate(names)],
                    skipped=[], channels=channels, image_size=size, source="built-in",
                    fingerprint=_fingerprint(settings, channels, [digest]), from_cache=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddpm_studio.data.builtin",
                                description="Draw the built-in shapes dataset.")
    p.add_argument("--write", action="store_true", help="write resources/builtin/ (deterministic)")
    p.add_argument("--out", type=Path, default=None, help="folder to write to (default: resources/builtin)")
    p.add_argument("--preview", type=Path, default=None, help="save a grid of the first 256 images here")
    args = p.parse_args(argv)
    if args.write:
        folder = write(args.out)
        total = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        print(f"wrote {folder} ({total / 1024:.0f} KB)")
    if args.preview:
        images, _ = generate(256)
        Image.fromarray(to_sheet(images, 16)).resize((16 * TILE * 2,) * 2, Image.Resampling.NEAREST).save(args.preview)
        print(f"wrote {args.preview}")
    if not (args.write or args.preview):
        p.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
