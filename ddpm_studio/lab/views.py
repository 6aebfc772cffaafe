"""Annotated images of the lab: boards with row labels and captions, contact sheets, the three
views of a chain side by side, GIF and APNG (Pillow and numpy only; no torch, no Qt).

Images are (H, W, C) uint8 numpy arrays, C 1 or 3; boards are always RGB.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import atomic_write_bytes
from ..sampling.export import make_grid, save_gif, upscale_nearest

BACKGROUND = (24, 24, 28)
TEXT = (235, 235, 235)
MUTED = (165, 165, 175)
PAD = 6
MIN_TILE = 64  # tiles are enlarged (whole pixels) to at least this side


# Pillow's built-in font has no Greek letters or combining accents; where no system font with
# them is found, labels are written with these plain spellings instead.
PLAIN = {"x̂0": "x0-hat", "x̂₀": "x0-hat", "ε̂": "eps-hat", "v̂": "v-hat", "η": "eta", "→": "->", "×": "x"}
UNICODE_FONTS = ("DejaVuSans.ttf", "NotoSans-Regular.ttf", "Arial Unicode.ttf", "segoeui.ttf", "arial.ttf")
_fonts: dict[int, tuple[object, bool]] = {}


def _font(size: int = 13):
    """(font, has_unicode): a system font with Greek letters if one is found, else Pillow's own."""
    if size in _fonts:
        return _fonts[size]
    from PIL import ImageFont

    found = None
    for name in UNICODE_FONTS:
        try:
            found = (ImageFont.truetype(name, size), True)
            break
        except OSError:
            continue
    if found is None:
        try:
            found = (ImageFont.load_default(size=size), False)  # FreeType's scalable default (Pillow >= 10.1)
        except (TypeError, OSError):  # pragma: no cover - Pillow without FreeType
            found = (ImageFont.load_default(), False)
    _fonts[size] = found
    return found


def plain(text: str, font) -> str:
    """``text`` as ``font`` can draw it (see PLAIN)."""
    if font[1]:
        return text
    for k, v in PLAIN.items():
        text = text.replace(k, v)
    return text


def _draw(draw, xy, text: str, font, fill) -> None:
    draw.text(xy, plain(text, font), fill=fill, font=font[0])


def _rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8; got {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape (H, W, C) with C 1 or 3; got {a.shape}")
    return np.repeat(a, 3, axis=2) if a.shape[-1] == 1 else a


def tile_scale(image: np.ndarray, min_side: int = MIN_TILE) -> int:
    """The whole-number enlargement that makes ``image``'s shorter side at least ``min_side``."""
    return max(1, math.ceil(min_side / max(1, min(image.shape[:2]))))


def text_size(lines: Sequence[str], font) -> tuple[int, int]:
    from PIL import Image, ImageDraw

    d = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    w = h = 0
    for line in lines:
        x0, y0, x1, y1 = d.textbbox((0, 0), plain(line, font), font=font[0])
        w = max(w, x1 - x0)
        h += (y1 - y0) + 3
    return w, h


def board(rows: Sequence[Sequence[np.ndarray]], *, row_labels: Sequence[Sequence[str]] | None = None,
          captions: Sequence[Sequence[str]] | None = None, title: str | None = None,
          scale: int | None = None) -> np.ndarray:
    """A grid of tiles, row r = ``rows[r]``, each row labelled on its left with ``row_labels[r]`` (lines)
    and each tile captioned below with ``captions[r][c]``; optional ``title`` on top. Tiles of one
    board share one size; they are enlarged by ``scale`` (default: to at least MIN_TILE px)."""
    from PIL import Image, ImageDraw

    rows = [[_rgb(t) for t in row] for row in rows]
    if not rows or not any(rows):
        raise ValueError("a board needs at least one image")
    first = next(t for row in rows for t in row)
    k = scale or tile_scale(first)
    rows = [[upscale_nearest(t, k) for t in row] for row in rows]
    th, tw = rows[0][0].shape[:2] if rows[0] else first.shape[:2]
    font, small = _font(13), _font(11)
    label_w = 0
    if row_labels:
        label_w = max((text_size(lines, font)[0] for lines in row_labels), default=0) + 2 * PAD
    cap_h = 0
    if captions:
        cap_h = max((text_size([c], small)[1] for row in captions for c in row if c), default=0) + 2
    title_h = text_size([title], font)[1] + PAD if title else 0
    ncol = max(len(r) for r in rows)
    W = label_w + PAD + ncol * (tw + PAD)
    row_h = th + cap_h + PAD
    H = title_h + PAD + len(rows) * row_h
    img = Image.new("RGB", (W, H), BACKGROUND)
    draw = ImageDraw.Draw(img)
    if title:
        _draw(draw, (PAD, PAD // 2), title, font, TEXT)
    for r, row in enumerate(rows):
        y = title_h + PAD + r * row_h
        if row_labels and r < len(row_labels):
            ly = y
            for j, line in enumerate(row_labels[r]):
                _draw(draw, (PAD, ly), line, font, TEXT if j == 0 else MUTED)
                ly += text_size([line], font)[1]
        for c, tile in enumerate(row):
            if tile.shape[:2] != (th, tw):
                raise ValueError(f"board tiles must share one size; got {tile.shape[:2]} after {(th, tw)}")
            x = label_w + PAD + c * (tw + PAD)
            img.paste(Image.fromarray(np.ascontiguousarray(tile)), (x, y))
            if captions and r < len(captions) and c < len(captions[r]) and captions[r][c]:
                text = captions[r][c]
                cw = text_size([text], small)[0]
                _draw(draw, (x + max(0, (tw - cw) // 2), y + th + 1), text, small, MUTED)
    return np.asarray(img)


def overlay_text(image: np.ndarray, text: str) -> np.ndarray:
    """``text`` in a dark band along the bottom of an RGB copy of ``image`` (the t overlay of GIFs)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(_rgb(image)))
    font = _font(max(9, min(16, img.height // 8)))
    draw = ImageDraw.Draw(img)
    w, h = text_size([text], font)
    draw.rectangle((0, img.height - h - 4, min(img.width, w + 8), img.height), fill=(0, 0, 0))
    _draw(draw, (4, img.height - h - 3), text, font, (255, 255, 255))
    return np.asarray(img)


def side_by_side(images: Sequence[np.ndarray], gap: int = PAD) -> np.ndarray:
    """RGB images of one height next to each other with ``gap`` px of background between."""
    ims = [_rgb(i) for i in images]
    h = ims[0].shape[0]
    if any(i.shape[0] != h for i in ims):
        raise ValueError("side-by-side images must have one height")
    W = sum(i.shape[1] for i in ims) + gap * (len(ims) - 1)
    out = np.empty((h, W, 3), np.uint8)
    out[:] = BACKGROUND
    x = 0
    for i in ims:
        out[:, x:x + i.shape[1]] = i
        x += i.shape[1] + gap
    return out


def contact_sheet(frames: Sequence[tuple[int, Sequence[np.ndarray]]], every: int, *,
                  view_names: Sequence[str], title: str | None = None) -> np.ndarray:
    """Every ``every``-th recorded frame (and the last) as a column, one row per view, t under each.

    ``frames`` are (t, (view_0, view_1, …)) in chain order."""
    if not frames:
        raise ValueError("there is no chain to make a contact sheet of yet")
    if every < 1:
        raise ValueError(f"the contact sheet step must be at least 1; got {every}")
    keep = [i for i in range(len(frames)) if i % every == 0 or i == len(frames) - 1]
    nviews = len(view_names)
    rows = [[frames[i][1][v] for i in keep] for v in range(nviews)]
    caps = [[_t_caption(frames[i][0], "t=") for i in keep] if v == nviews - 1 else [] for v in range(nviews)]
    return board(rows, row_labels=[[n] for n in view_names], captions=caps, title=title)


def _t_caption(t, prefix: str) -> str:
    """A timestep as "t=…"; anything else (e.g. "result", the frame after the last step) as it is."""
    return f"{prefix}{t}" if isinstance(t, (int, np.integer)) else str(t)


def gif_frames(frames: Sequence[tuple[int, np.ndarray]], *, overlay_t: bool, every: int = 1,
               min_side: int = 256) -> list[np.ndarray]:
    """The (t, image) frames, every ``every``-th plus the last, enlarged and optionally labelled "t = …"."""
    if not frames:
        raise ValueError("there are no frames to animate yet")
    keep = [i for i in range(len(frames)) if i % max(1, every) == 0 or i == len(frames) - 1]
    k = max(1, math.ceil(min_side / frames[0][1].shape[1]))
    out = []
    for i in keep:
        t, im = frames[i]
        im = upscale_nearest(_rgb(im), k)
        out.append(overlay_text(im, _t_caption(t, "t = ")) if overlay_t and t is not None else im)
    return out


def save_animation(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 10,
                   hold_last_sec: float = 1.0) -> int:
    """A looping GIF (``.gif``) or APNG (``.png``, lossless) of (H, W, C) uint8 frames; returns frames stored."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        return save_gif(frames, path, fps=fps, hold_last_sec=hold_last_sec)
    if path.suffix.lower() not in (".png", ".apng"):
        raise ValueError(f"an animation is a .gif or an .apng/.png file; got {path.name}")
    return save_apng(frames, path, fps=fps, hold_last_sec=hold_last_sec)


def save_apng(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 10,
              hold_last_sec: float = 1.0) -> int:
    """An animated PNG (Pillow writes APNG with ``save_all``); returns the frames stored, read back."""
    from PIL import Image

    if not fps > 0:
        raise ValueError(f"fps must be positive; got {fps!r}")
    ims = [Image.fromarray(np.ascontiguousarray(_rgb(f))) for f in frames]
    if not ims:
        raise ValueError("no frames given for the animation")
    ms = 1000.0 / fps
    durations = [round(ms)] * len(ims)
    durations[-1] += round(hold_last_sec * 1000)
    buf = io.BytesIO()
    ims[0].save(buf, format="PNG", save_all=True, append_images=ims[1:], duration=durations, loop=0)
    atomic_write_bytes(path, buf.getvalue())
    with Image.open(io.BytesIO(buf.getvalue())) as written:
        return int(getattr(written, "n_frames", 1))


def strip(images: Sequence[np.ndarray], captions: Sequence[str] | None = None, label: Sequence[str] | None = None,
          scale: int | None = None) -> np.ndarray:
    """One row of tiles with a caption under each and an optional label on the left."""
    return board([list(images)], row_labels=[list(label)] if label else None,
                 captions=[list(captions)] if captions else None, scale=scale)


def grid(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) → one tile (a square-ish grid; one image stays as it is)."""
    return images[0] if len(images) == 1 else make_grid(images, pad=1)
