"""Decode one image file into a small square uint8 array, or say in plain words why not.

Pillow + numpy only; no torch, no Qt. :func:`decode_file` never raises for anything a user can
put in a folder: every failure becomes a :class:`Decoded` with ``reason`` set.

Preprocessing, in order:
1. stat + read the whole file (one read: the bytes are hashed for the cache and decoded from memory);
2. identify (PNG, JPEG, BMP, WebP, GIF first frame, TIFF first page), refuse decompression bombs
   and images smaller than ``min_size`` from the header alone;
3. for big JPEGs, let libjpeg decode at a reduced scale (``draft``) that still leaves >= 2x the
   target side, so the final Lanczos filter does the antialiasing;
4. apply the EXIF orientation;
5. big images of any format: box-average by an integer factor that still leaves >= 2x the target
   side (``Image.reduce``, alpha-premultiplied), so the steps below run on a small image;
6. convert the mode: alpha is composited onto the background; 16-bit and float greyscale are
   rescaled (not clipped) to 0..255; every other mode becomes ``L`` or ``RGB``;
7. resize the short side to ``size`` and center-crop, in one Lanczos resample (``resize(box=...)``);
8. decide greyscale by content: an RGB result whose channels differ by at most
   ``GRAY_TOLERANCE`` levels everywhere is greyscale (JPEG chroma noise stays under that).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Extensions we try to decode (lower case). Anything else in a folder is reported as "not an image file".
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".webp",
                              ".gif", ".tif", ".tiff"})
# Pillow formats we let Image.open identify; contents in any other format are "not an image".
PIL_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "WEBP", "GIF", "TIFF")
# Largest decoded image we accept (pixels). 64 Mpx is a 9000x7000 photo, ~200 MB as RGB; a
# decompression bomb claims far more. Pillow's own guard (Image.MAX_IMAGE_PIXELS, ~89 Mpx) stays on too.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
# Largest file we read into memory (bytes).
MAX_FILE_BYTES = 1024 * 1024 * 1024
# RGB images whose channels differ by at most this many levels (of 255) count as greyscale.
GRAY_TOLERANCE = 2

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_BACKGROUND_LEVEL = {"white": 255, "black": 0}


@dataclass(frozen=True)
class Settings:
    """The preprocessing settings a decoded image depends on (part of every cache key)."""

    size: int  # output side (px)
    channels: str  # "auto", "1" or "3"
    background: str  # "white" or "black": what alpha is composited onto
    min_size: int  # skip images whose short side is below this (px); 0 = keep all
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse images with more pixels than this

    def key(self) -> str:
        return (f"size={self.size};channels={self.channels};bg={self.background};min={self.min_size};"
                f"max={self.max_pixels}")


@dataclass
class Decoded:
    """One file's outcome: ``array`` (size, size, 1 or 3) uint8 and ``digest``, or a ``reason``."""

    array: np.ndarray | None = None
    gray: bool = False  # True when array has 1 channel (the image is greyscale)
    digest: str = ""  # blake2b-128 of the file's bytes ("" when the file could not be read)
    reason: str = ""  # plain words, set when the file cannot be used


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MB"


def file_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def decode_file(path: str, settings: Settings) -> Decoded:
    """Read, decode and preprocess one file. Never raises for bad files (only for bugs)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Decoded(reason="file disappeared while loading")
    except PermissionError:
        return Decoded(reason="cannot be read (permission denied)")
    except OSError as e:
        return Decoded(reason=f"cannot be read ({e.strerror or e})")
    if stat.S_ISDIR(st.st_mode):
        return Decoded(reason="is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):  # never opened: a named pipe would block, a device never ends
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            kind = "a device"
        elif stat.S_ISFIFO(st.st_mode):
            kind = "a named pipe; not opened"
        else:
            kind = "a socket" if stat.S_ISSOCK(st.st_mode) else ""
        return Decoded(reason=f"not a regular file ({kind})" if kind else "not a regular file")
    if st.st_size == 0:
        return Decoded(reason="empty file (0 bytes)")
    if st.st_size > MAX_FILE_BYTES:
        return Decoded(reason=f"too large ({_mb(st.st_size)} file; limit {_mb(MAX_FILE_BYTES)})")
    try:
        # O_NONBLOCK: should the path have become a named pipe since the stat, the open does not hang
        with open(path, "rb", opener=_nonblocking) as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return Decoded(reason="not a regular file")
            data = f.read(MAX_FILE_BYTES + 1)  # bounded, whatever the file became
        if len(data) > MAX_FILE_BYTES:
            return Decoded(reason=f"too large (over {_mb(MAX_FILE_BYTES)}; limit {_mb(MAX_FILE_BYTES)})")
    except PermissionError:
        return Decoded(reason="cannot be read (permission denied)")
    except IsADirectoryError:
        return Decoded(reason="is a folder, not a file")
    except OSError as e:
        return Decoded(reason=f"cannot be read ({e.strerror or e})")
    except MemoryError:
        return Decoded(reason="too large to read into memory")
    digest = file_digest(data)
    result = decode_bytes(data, settings)
    result.digest = digest
    return result


def decode_bytes(data: bytes, settings: Settings) -> Decoded:
    """Decode and preprocess an image held in memory; ``digest`` is left empty."""
    if not data:
        return Decoded(reason="empty file (0 bytes)")
    try:
        return _decode(data, settings)
    except Image.DecompressionBombError:
        return Decoded(reason="too large (decompression bomb: the image claims more pixels than allowed)")
    except UnidentifiedImageError:
        return Decoded(reason="not an image (contents are not PNG, JPEG, BMP, WebP, GIF or TIFF)")
    except MemoryError:
        return Decoded(reason="too large to decode (out of memory)")
    except (OSError, SyntaxError, EOFError, ValueError, IndexError, KeyError, TypeError) as e:
        # Pillow reports damaged data with these (e.g. "image file is truncated", "broken PNG file").
        msg = str(e) or type(e).__name__
        if "truncat" in msg.lower() or isinstance(e, EOFError):
            return Decoded(reason=f"damaged or truncated image ({msg})")
        return Decoded(reason=f"damaged image or unsupported variant ({msg})")
    except Exception as e:  # noqa: BLE001 - a user file must never crash the program
        return Decoded(reason=f"could not be decoded ({type(e).__name__}: {e})")


def _decode(data: bytes, s: Settings) -> Decoded:
    im = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    w, h = im.size
    if w <= 0 or h <= 0:
        return Decoded(reason=f"damaged image (size {w}x{h})")
    if w * h > s.max_pixels:
        return Decoded(reason=f"too large ({w}x{h} = {w * h / 1e6:.0f} Mpx; limit {s.max_pixels / 1e6:.0f} Mpx)")
    if min(w, h) < s.min_size:
        return Decoded(reason=f"too small ({w}x{h}; the minimum short side is {s.min_size} px)")

    # Big JPEGs: decode at 1/2, 1/4 or 1/8 scale while the short side stays >= 2x the target.
    if im.format == "JPEG" and min(w, h) > 4 * s.size:
        k = 2 * s.size / min(w, h)
        im.draft(im.mode if im.mode in ("L", "RGB") else None, (math.ceil(w * k), math.ceil(h * k)))
    im.load()  # raises on truncated / damaged data

    orientation = 1
    if im.format == "TIFF" or "exif" in im.info:  # JPEG, PNG and WebP keep EXIF in info["exif"]
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block only loses the rotation
            orientation = 1
    if orientation not in (1, None):
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001
            pass

    # Big images: box-average by an integer factor first, leaving >= 2x the target side for the
    # final Lanczos (what reducing_gap does); mode conversion and alpha compositing then run small.
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA") if ("transparency" in im.info or im.mode == "PA") else im.convert("RGB")
    elif im.mode == "1":
        im = im.convert("L")
    factor = min(im.size) // (2 * s.size)
    if factor >= 2:
        try:
            im = im.reduce(factor)  # premultiplies alpha itself for RGBA / LA
        except (ValueError, NotImplementedError):
            pass  # a mode reduce() does not handle: the final resize copes alone
    im, _ = _to_l_rgb_or_f(im, s.background)

    if s.channels == "1" and im.mode == "RGB":
        im = im.convert("L")
    arr = _resize_crop(im, s.size)
    if arr.ndim == 2:
        arr = arr[:, :, None]  # (H, W, 1)

    if s.channels == "3":
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)  # (H, W, 3)
        return Decoded(array=np.ascontiguousarray(arr), gray=False)
    if arr.shape[2] == 3:
        if _channel_spread(arr) <= GRAY_TOLERANCE:
            return Decoded(array=luminance(arr), gray=True)
        return Decoded(array=np.ascontiguousarray(arr), gray=False)
    return Decoded(array=np.ascontiguousarray(arr), gray=True)


def _channel_spread(rgb: np.ndarray) -> int:
    """max(|R - G|, |G - B|) over an (H, W, 3) uint8 image (planar copy first: 3x faster than strided)."""
    c = np.ascontiguousarray(rgb.reshape(-1, 3).T).astype(np.int16)  # (3, H*W)
    return int(max(np.abs(c[0] - c[1]).max(), np.abs(c[1] - c[2]).max()))


def _to_l_rgb_or_f(im: Image.Image, background: str) -> tuple[Image.Image, bool]:
    """Convert any Pillow mode to L, RGB, or F (greyscale scaled to 0..255). Returns (image, is_gray_mode)."""
    mode = im.mode
    level = _BACKGROUND_LEVEL[background]
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA") if ("transparency" in im.info or mode == "PA") else im.convert("RGB")
        mode = im.mode
    if mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (level, level, level, 255))
        flat = Image.alpha_composite(bg, rgba).convert("RGB")
        if mode in ("LA", "La"):
            return flat.convert("L"), True
        return flat, False
    if mode == "1":
        return im.convert("L"), True
    if mode == "L":
        return im, True
    if mode == "RGB":
        return im, False
    if mode.startswith("I;16") or mode == "I" or mode == "F":
        return _scale_to_f(im), True
    if mode in ("CMYK", "YCbCr", "RGBX", "LAB", "HSV"):
        return im.convert("RGB"), False
    # Anything else Pillow decoded: try a plain conversion (raises ValueError if impossible).
    return im.convert("RGB"), False


def _scale_to_f(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale -> mode F with values in 0..255.

    I;16*: 0..65535 maps to 0..255. I: kept if already in 0..255, else treated as 16-bit if in
    0..65535, else min-max stretched. F: [0, 1] maps to 0..255, [0, 255] is kept, anything else is
    min-max stretched; NaN/inf become 0.
    """
    mode = im.mode
    a = np.asarray(im).astype(np.float32)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        a = a / 257.0
    elif mode == "I":
        if lo >= 0 and hi <= 255:
            pass
        elif lo >= 0 and hi <= 65535:
            a = a / 257.0
        else:
            a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
    else:  # F
        if lo >= 0 and hi <= 1.0:
            a = a * 255.0
        elif lo >= 0 and hi <= 255.0:
            pass
        else:
            a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
    return Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))  # mode F


def _resize_crop(im: Image.Image, size: int) -> np.ndarray:
    """Resize the short side to ``size`` and center-crop, as one Lanczos resample. -> (H, W[, 3]) uint8."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) / 2.0, (h - side) / 2.0
    box = (left, top, left + side, top + side)
    if (w, h) == (size, size):
        out = im
    else:
        out = im.resize((size, size), Image.Resampling.LANCZOS, box=box)
    if out.mode == "F":
        a = np.asarray(out)
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return np.asarray(out, dtype=np.uint8)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., 1) uint8 luma, with Pillow's ITU-R 601 integer weights."""
    r = rgb[..., 0].astype(np.uint32)
    g = rgb[..., 1].astype(np.uint32)
    b = rgb[..., 2].astype(np.uint32)
    y = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
    return y.astype(np.uint8)[..., None]
