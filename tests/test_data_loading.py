"""Loading a folder a user drops: every mode, every bad case, nothing raises (issue 3)."""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_studio.config import DataConfig
from ddpm_studio.data import Cancelled, DatasetError, load_images, load_paths
from ddpm_studio.data import decode as decode_mod

RED, BLUE = (220, 30, 30), (30, 30, 220)


def _png_bytes(im: Image.Image) -> bytes:
    b = io.BytesIO()
    im.save(b, "PNG")
    return b.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming width x height, then a tiny IDAT and IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _save(path: Path, im: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def make_mixed_folder(root: Path) -> dict[str, Path]:
    """Every mode, format and bad case the issue lists. Returns name -> path."""
    f: dict[str, Path] = {}
    grad = np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (20, 1))  # (20, 24) horizontal ramp
    f["mode_1"] = _save(root / "modes" / "one.png", Image.fromarray(grad > 128).convert("1"))
    f["mode_L"] = _save(root / "modes" / "l.png", Image.fromarray(grad))
    la = Image.fromarray(np.dstack([grad, np.full_like(grad, 255)]))
    f["mode_LA"] = _save(root / "modes" / "la.png", la)
    p = Image.new("P", (20, 20), 0)
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.paste(1, (0, 0, 10, 20))
    f["mode_P_transparent"] = _save(root / "modes" / "p_transp.png", p, transparency=0)
    f["mode_P"] = _save(root / "modes" / "p.gif", p)
    f["mode_RGB"] = _save(root / "modes" / "rgb.bmp", Image.new("RGB", (30, 20), RED))
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # fully transparent -> background
    f["mode_RGBA"] = _save(root / "modes" / "rgba.webp", rgba, lossless=True)
    f["mode_CMYK"] = _save(root / "modes" / "cmyk.jpg", Image.new("CMYK", (20, 20), (0, 255, 255, 0)))
    i16 = Image.fromarray(np.full((20, 20), 32896, dtype=np.uint16))  # 32896/257 = 128
    f["mode_I16"] = _save(root / "modes" / "i16.png", i16)
    f["mode_I"] = _save(root / "modes" / "i32.tif", Image.fromarray(np.full((20, 20), 65535, dtype=np.int32)))
    f["mode_F"] = _save(root / "modes" / "f.tiff", Image.fromarray(np.full((20, 20), 0.5, dtype=np.float32)))
    frames = [Image.new("RGB", (20, 20), RED), Image.new("RGB", (20, 20), BLUE)]
    f["gif_anim"] = root / "anim.gif"
    frames[0].save(f["gif_anim"], save_all=True, append_images=frames[1:], duration=100)

    # EXIF orientation 6 (rotate 90 degrees clockwise to display): stored left half black.
    half = np.zeros((32, 32, 3), dtype=np.uint8)
    half[:, 16:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    f["exif_rot"] = _save(root / "exif_rot.jpg", Image.fromarray(half), exif=exif.tobytes(), quality=95)

    # Nested folders, uppercase extensions, non-ASCII names.
    f["nested_upper"] = _save(root / "a" / "b" / "c" / "DEEP.PNG", Image.new("RGB", (16, 16), BLUE))
    f["upper_jpg"] = _save(root / "a" / "PHOTO.JPG", Image.new("RGB", (40, 20), RED))
    f["unicode"] = _save(root / "ünïcödé" / "画像 été.png", Image.new("RGB", (20, 20), BLUE))

    # Bad cases.
    bad = root / "bad"
    bad.mkdir()
    (bad / "notes.txt").write_text("not an image")
    f["txt"] = bad / "notes.txt"
    (bad / "fake.png").write_bytes(b"this is text pretending to be a png" * 10)
    f["fake"] = bad / "fake.png"
    good_png = _png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    (bad / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    f["trunc_png"] = bad / "truncated.png"
    jb = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jb, "JPEG")
    (bad / "truncated.jpg").write_bytes(jb.getvalue()[: len(jb.getvalue()) // 2])
    f["trunc_jpg"] = bad / "truncated.jpg"
    (bad / "empty.png").write_bytes(b"")
    f["empty"] = bad / "empty.png"
    (bad / "bomb.png").write_bytes(_bomb_png(100_000, 100_000))
    f["bomb"] = bad / "bomb.png"
    f["small"] = _save(bad / "small.png", Image.new("RGB", (4, 4), RED))
    f["unreadable"] = _save(bad / "locked.png", Image.new("RGB", (20, 20), RED))
    os.chmod(f["unreadable"], 0)
    f["broken_link"] = bad / "gone.png"
    os.symlink(root / "does-not-exist.png", f["broken_link"])
    os.symlink("..", root / "a" / "loop")  # a symlink loop back to the root
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: ignored
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "pipe.png")  # not a regular file: must not hang the loader (opening a FIFO blocks)
        f["fifo"] = root / "pipe.png"
    return f


@pytest.fixture
def mixed(tmp_path, monkeypatch):
    files = make_mixed_folder(tmp_path / "drop")
    if os.access(files["unreadable"], os.R_OK):  # running as root: chmod 000 cannot stop us
        real_open = open
        locked = str(files["unreadable"])

        def fake_open(path, *a, **k):
            if str(path) == locked:
                raise PermissionError(13, "Permission denied", locked)
            return real_open(path, *a, **k)

        monkeypatch.setattr(decode_mod, "open", fake_open, raising=False)
    return tmp_path / "drop", files


EXPECTED_REASONS = {
    "txt": "not an image file", "fake": "not an image", "trunc_png": "truncated",
    "trunc_jpg": "truncated", "empty": "empty file", "bomb": "too large", "small": "too small",
    "unreadable": "permission denied", "broken_link": "broken link",
    "fifo": "not a regular file (a named pipe",
}


def _row(s, path: Path) -> np.ndarray:
    return s.images[s.paths.index(str(path))]


def test_mixed_folder_loads_good_files_and_reports_every_bad_one(mixed):
    root, f = mixed
    s = load_images(DataConfig(folder=str(root), image_size=16, min_size=8), workers=2)
    good = [k for k in f if k not in EXPECTED_REASONS]
    assert sorted(s.paths) == sorted(str(f[k]) for k in good)  # each once, loop not followed twice
    assert s.images.shape == (len(good), 16, 16, 3) and s.images.dtype == np.uint8
    assert s.channels == 3 and s.image_size == 16 and s.source == str(root)
    reasons = {sk.path: sk.reason for sk in s.skipped}
    expected = {k: w for k, w in EXPECTED_REASONS.items() if k in f}  # no FIFO where mkfifo is missing
    for key, words in expected.items():
        assert str(f[key]) in reasons, f"{key} not reported"
        assert words in reasons[str(f[key])].lower(), (key, reasons[str(f[key])])
    assert len(s.skipped) == len(expected)  # nothing else (the hidden file) reported
    assert not any(".DS_Store" in p for p in s.paths + list(reasons))


def test_modes_convert_with_the_right_values(mixed):
    root, f = mixed
    s = load_images(DataConfig(folder=str(root), image_size=16, background="white"), workers=1)
    assert (_row(s, f["mode_RGBA"]) == 255).all()  # transparent on white
    assert tuple(_row(s, f["mode_RGB"])[8, 8]) == RED
    assert tuple(_row(s, f["gif_anim"])[8, 8]) == RED  # first frame, not the blue second one
    assert abs(int(_row(s, f["mode_I16"])[8, 8, 0]) - 128) <= 1  # 16-bit scaled, not clipped to 255
    assert (_row(s, f["mode_I"]) == 255).all()
    assert abs(int(_row(s, f["mode_F"])[8, 8, 0]) - 128) <= 1  # float [0, 1] -> 0..255
    cmyk = _row(s, f["mode_CMYK"])[8, 8].astype(int)  # C=0, M=Y=255: red
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60
    p = _row(s, f["mode_P_transparent"]).astype(int)  # left half blue, right half (index 0) transparent
    assert p[8, 2, 2] > 200 and p[8, 2, 0] < 60 and (p[8, 13:] == 255).all()
    ramp = _row(s, f["mode_L"])[8, :, 0].astype(int)  # horizontal ramp survives the resize
    assert ramp[0] < 40 and ramp[-1] > 215 and (np.diff(ramp) >= -3).all()
    black = load_images(DataConfig(folder=str(root), image_size=16, background="black"), workers=1)
    assert (_row(black, f["mode_RGBA"]) == 0).all()


def test_exif_orientation_is_applied(mixed):
    root, f = mixed
    s = load_images(DataConfig(folder=str(root), image_size=16), workers=1)
    img = _row(s, f["exif_rot"]).astype(int).mean(axis=2)  # (16, 16)
    # Stored: left half black. Orientation 6 turns the left edge into the top edge.
    assert img[:6].mean() < 40 and img[-6:].mean() > 215
    assert abs(img[:, :6].mean() - img[:, -6:].mean()) < 30


def test_value_range_and_channels_options(tmp_path):
    folder = tmp_path / "g"
    halves = np.zeros((16, 16), dtype=np.uint8)
    halves[:, 8:] = 255
    _save(folder / "gray.png", Image.fromarray(halves))
    _save(folder / "rgb_equal.png", Image.new("RGB", (16, 16), (90, 90, 90)))  # grey by content
    auto = load_images(DataConfig(folder=str(folder), image_size=8), workers=1)
    assert auto.channels == 1 and auto.images.shape == (2, 8, 8, 1)
    assert auto.images.min() == 0 and auto.images.max() == 255
    three = load_images(DataConfig(folder=str(folder), image_size=8, channels="3"), workers=1)
    assert three.images.shape == (2, 8, 8, 3)
    assert (three.images[..., 0] == three.images[..., 2]).all()
    _save(folder / "colour.png", Image.new("RGB", (20, 10), RED))
    auto2 = load_images(DataConfig(folder=str(folder), image_size=8), workers=1)
    assert auto2.channels == 3
    one = load_images(DataConfig(folder=str(folder), image_size=8, channels="1"), workers=1)
    assert one.channels == 1
    red_l = one.images[one.paths.index(str(folder / "colour.png"))]
    assert abs(int(red_l[4, 4, 0]) - round(0.299 * 220 + 0.587 * 30 + 0.114 * 30)) <= 1


def test_resize_short_side_then_center_crop(tmp_path):
    a = np.zeros((20, 60, 3), dtype=np.uint8)  # wide: left and right thirds black, middle white
    a[:, 20:40] = 255
    _save(tmp_path / "wide.png", Image.fromarray(a))
    s = load_images(DataConfig(folder=str(tmp_path), image_size=10), workers=1)
    assert s.images.shape == (1, 10, 10, 1)  # black and white: greyscale by content
    assert s.images[0, :, 2:8].min() >= 240  # the crop kept the white middle square


def test_missing_empty_and_all_bad_folders_raise_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not found.*nope"):
        load_images(DataConfig(folder=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty"):
        load_images(DataConfig(folder=str(tmp_path / "empty")))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    (bad / "b.txt").write_text("x")
    with pytest.raises(DatasetError, match=str(bad)) as e:
        load_images(DataConfig(folder=str(bad)))
    assert {os.path.basename(s.path) for s in e.value.skipped} == {"a.png", "b.txt"}


def test_lower_pixel_limit_reports_too_large(tmp_path):
    _save(tmp_path / "big.png", Image.new("RGB", (64, 64), RED))
    _save(tmp_path / "ok.png", Image.new("RGB", (16, 16), RED))
    s = load_images(DataConfig(folder=str(tmp_path), image_size=8), max_pixels=1000, workers=1)
    assert s.paths == [str(tmp_path / "ok.png")]
    assert "too large" in s.skipped[0].reason and s.skipped[0].path == str(tmp_path / "big.png")


def test_load_paths_combines_folders_and_files(tmp_path):
    _save(tmp_path / "x" / "1.png", Image.new("RGB", (16, 16), RED))
    _save(tmp_path / "y" / "2.png", Image.new("RGB", (16, 16), BLUE))
    _save(tmp_path / "z.jpg", Image.new("RGB", (16, 16), RED))
    s = load_paths([tmp_path / "x", tmp_path / "y", tmp_path / "z.jpg", tmp_path / "x" / "1.png"],
                   DataConfig(image_size=8), workers=1)
    assert len(s) == 3  # the file inside x given twice counts once
    assert "; " in s.source


def test_progress_and_cancel(tmp_path):
    for i in range(200):
        _save(tmp_path / f"{i:03d}.png", Image.new("RGB", (8, 8), (i, 0, 0)))
    calls = []
    s = load_images(DataConfig(folder=str(tmp_path), image_size=8), workers=2,
                    progress=lambda d, t, m: calls.append((d, t, m)))
    assert len(s) == 200 and calls[-1][0] == calls[-1][1] == 200
    assert all(isinstance(m, str) for _, _, m in calls)
    stop = threading.Event()

    def progress(done, total, message):
        if done > 0:
            stop.set()  # cancel after the first chunk

    with pytest.raises(Cancelled):
        load_images(DataConfig(folder=str(tmp_path), image_size=8), workers=2, use_cache=False,
                    progress=progress, should_stop=stop.is_set)


def test_big_images_with_alpha_are_reduced_then_composited(tmp_path):
    a = np.zeros((400, 600, 4), dtype=np.uint8)  # left half opaque blue, right half transparent red
    a[:, :300] = (*BLUE, 255)
    a[:, 300:] = (255, 0, 0, 0)
    _save(tmp_path / "big.png", Image.fromarray(a))
    s = load_images(DataConfig(folder=str(tmp_path), image_size=16, background="white"), workers=1)
    img = s.images[0].astype(int)  # center crop 400x400 of 600x400: x from 100 to 500, split at 300
    assert (abs(img[:, :6] - np.array(BLUE)) <= 2).all()
    assert (img[:, 10:] >= 253).all()  # the hidden red never bleeds through


def test_threads_give_the_same_set_as_one_worker(mixed, monkeypatch):
    root, _ = mixed
    from ddpm_studio.data import imageset

    monkeypatch.setattr(imageset, "CHUNK_FILES", 3)  # many small tasks finishing out of order
    one = load_images(DataConfig(folder=str(root), image_size=8), workers=1, use_cache=False)
    many = load_images(DataConfig(folder=str(root), image_size=8), workers=4, use_cache=False)
    assert many.paths == one.paths and many.skipped == one.skipped
    np.testing.assert_array_equal(many.images, one.images)


def test_importing_data_loads_neither_torch_nor_qt():
    import subprocess
    import sys

    code = ("import sys, ddpm_studio.data; "
            "print(sorted(m for m in ('torch', 'PySide6') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_set_too_big_for_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    _save(tmp_path / "a.png", Image.new("RGB", (16, 16), RED))
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1}[name])
    with pytest.raises(DatasetError, match="would need .* memory"):
        load_images(DataConfig(folder=str(tmp_path), image_size=256), workers=1)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_exif_orientation_in_other_formats(fmt):
    half = np.zeros((32, 32, 3), dtype=np.uint8)
    half[:, 16:] = 255  # stored: left half black
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display: the left edge goes to the bottom
    b = io.BytesIO()
    Image.fromarray(half).save(b, fmt, exif=exif.tobytes(), **({"lossless": True} if fmt == "WEBP" else {}))
    d = decode_mod.decode_bytes(b.getvalue(), decode_mod.Settings(16, "auto", "white", 0))
    img = d.array[..., 0].astype(int)
    assert img[-4:].mean() < 10 and img[:4].mean() > 245


def test_exclude_duplicates_names_the_kept_file_by_path_when_the_names_are_the_same(tmp_path):
    im = Image.new("RGB", (12, 12), RED)
    _save(tmp_path / "a" / "x.png", im)
    _save(tmp_path / "b" / "x.png", im)  # the same bytes in another folder
    _save(tmp_path / "b" / "y.png", Image.new("RGB", (12, 12), BLUE))
    s = load_images(DataConfig(folder=str(tmp_path), image_size=8, exclude_duplicates=True), workers=1)
    assert [os.path.relpath(p, tmp_path) for p in s.paths] == [os.path.join("a", "x.png"), os.path.join("b", "y.png")]
    assert [(s_.path, s_.reason) for s_ in s.skipped] == [
        (str(tmp_path / "b" / "x.png"), f"duplicate of {tmp_path / 'a' / 'x.png'}")]
    assert len(load_images(DataConfig(folder=str(tmp_path), image_size=8), workers=1)) == 3  # off: all kept
