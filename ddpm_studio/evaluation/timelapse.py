"""A run's fixed-seed preview grids (``samples/step_*.png``) as a GIF and a contact sheet.

The trainer draws every preview from the same seed, so frame after frame shows the same noise
becoming images as training goes on. Each frame gets its step written under it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MIN_FRAME_SIDE = 192  # small grids are enlarged (whole pixels) to at least this width
CAPTION_PX = 18
_STEP = re.compile(r"^step_(\d+)\.png$")


def preview_files(run_dir) -> list[tuple[int, Path]]:
    """(step, path) of the run's preview grids, by step."""
    folder = Path(run_dir) / "samples"
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _STEP.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))  # (H, W, 3)


def captioned(image: np.ndarray, text: str, width: int | None = None) -> np.ndarray:
    """``image`` enlarged to at least MIN_FRAME_SIDE wide (or to ``width``), ``text`` centred beneath it."""
    h, w = image.shape[:2]
    factor = max(1, math.ceil((width or MIN_FRAME_SIDE) / w))
    big = Image.fromarray(image).resize((w * factor, h * factor), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (big.width, big.height + CAPTION_PX), (255, 255, 255))
    canvas.paste(big, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    draw.text(((big.width - (x1 - x0)) // 2 - x0, big.height + (CAPTION_PX - (y1 - y0)) // 2 - y0), text,
              fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def frames(run_dir, *, max_frames: int = 200) -> list[tuple[int, np.ndarray]]:
    """(step, captioned frame) for the run's previews; at most ``max_frames``, evenly spread, the last kept."""
    files = preview_files(run_dir)
    if not files:
        raise ValueError(f"{run_dir} has no preview grids (samples/step_*.png); train with previews on "
                         "(--preview-every N) to make a time-lapse")
    if len(files) > max_frames:
        keep = np.unique(np.linspace(0, len(files) - 1, max_frames).round().astype(int))
        files = [files[i] for i in keep]
    out, width = [], None
    for step, path in files:
        img = _read(path)
        frame = captioned(img, f"step {step:,}", width)
        width = width or frame.shape[1]
        if out and frame.shape != out[0][1].shape:
            continue  # a grid of another size (the run changed its preview layout): left out
        out.append((step, frame))
    return out


def contact_sheet(frame_list: list[np.ndarray], columns: int | None = None, pad: int = 4) -> np.ndarray:
    """The frames in a grid, ``columns`` wide (default: about square), white between them."""
    n = len(frame_list)
    cols = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    h, w = frame_list[0].shape[:2]
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, f in enumerate(frame_list):
        r, c = divmod(i, cols)
        sheet[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = f
    return sheet


def write_timelapse(run_dir, gif_path=None, sheet_path=None, *, fps: float = 4.0, max_frames: int = 200,
                    sheet_frames: int = 16) -> dict:
    """Write the GIF and/or the contact sheet; return {"frames", "steps", "gif", "sheet"}."""
    from ddpm_studio.sampling.export import save_gif, save_png

    if gif_path is None and sheet_path is None:
        raise ValueError("give a GIF path, a contact-sheet path or both")
    fr = frames(run_dir, max_frames=max_frames)
    result = {"frames": len(fr), "steps": [s for s, _ in fr], "gif": None, "sheet": None}
    if gif_path is not None:
        Path(gif_path).parent.mkdir(parents=True, exist_ok=True)
        save_gif([f for _, f in fr], gif_path, fps=fps, hold_last_sec=1.5)
        result["gif"] = str(gif_path)
    if sheet_path is not None:
        pick = np.unique(np.linspace(0, len(fr) - 1, min(sheet_frames, len(fr))).round().astype(int))
        Path(sheet_path).parent.mkdir(parents=True, exist_ok=True)
        save_png(contact_sheet([fr[i][1] for i in pick]), sheet_path)
        result["sheet"] = str(sheet_path)
    return result
