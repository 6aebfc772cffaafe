"""The decoded-set cache: hit on reopen, invalidated by a changed file, corrupt entries rebuilt."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_studio import paths
from ddpm_studio.config import DataConfig
from ddpm_studio.data import imageset, load_images


def _folder(root: Path, n: int = 12) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (20, 16), (10 * i, 100, 200 - 10 * i)).save(root / f"{i:02d}.png")
    (root / "bad.png").write_bytes(b"")
    return root


class _CountingDecode:
    def __init__(self):
        self.paths: list[str] = []
        self.real = imageset.decode_file

    def __call__(self, path, settings):
        self.paths.append(path)
        return self.real(path, settings)


@pytest.fixture
def counting(monkeypatch):
    c = _CountingDecode()
    monkeypatch.setattr(imageset, "decode_file", c)
    return c


def test_second_open_is_a_cache_hit_without_decoding(tmp_path, counting):
    folder = _folder(tmp_path / "imgs")
    cfg = DataConfig(folder=str(folder), image_size=8)
    first = load_images(cfg, workers=1)
    assert not first.from_cache and len(counting.paths) == 13  # 12 images + the empty file
    counting.paths.clear()
    second = load_images(cfg, workers=1)
    assert second.from_cache and counting.paths == []
    np.testing.assert_array_equal(first.images, second.images)
    assert second.paths == first.paths and second.fingerprint == first.fingerprint
    assert [s.reason for s in second.skipped] == [s.reason for s in first.skipped] == ["empty file (0 bytes)"]
    assert any((paths.cache_dir() / "datasets").glob("*.npy"))
    # Different preprocessing settings are a different cache entry.
    other = load_images(DataConfig(folder=str(folder), image_size=16), workers=1)
    assert not other.from_cache and other.fingerprint != first.fingerprint


def test_changed_file_is_redecoded_even_with_the_same_size_and_mtime(tmp_path, counting):
    folder = _folder(tmp_path / "imgs")
    cfg = DataConfig(folder=str(folder), image_size=8)
    first = load_images(cfg, workers=1)
    target = folder / "03.png"
    st = os.stat(target)
    # Same size, same mtime, different pixels: only the ctime (and the contents) change.
    data = target.read_bytes()
    im = Image.new("RGB", (20, 16), (255, 255, 0))
    im.save(target)
    new = target.read_bytes()
    if len(new) != len(data):  # keep the size identical by padding/truncating after IEND
        new = new + b"\0" * (len(data) - len(new)) if len(new) < len(data) else new
    target.write_bytes(new)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(target).st_size == st.st_size and os.stat(target).st_mtime_ns == st.st_mtime_ns
    counting.paths.clear()
    second = load_images(cfg, workers=1)
    assert not second.from_cache
    assert counting.paths == [str(target)]  # only the changed file was decoded again
    row = second.images[second.paths.index(str(target))]
    assert tuple(row[4, 4]) == (255, 255, 0)
    assert second.fingerprint != first.fingerprint
    others = [i for i, p in enumerate(second.paths) if p != str(target)]
    np.testing.assert_array_equal(second.images[others], first.images[others])
    # A third open is a clean hit again.
    counting.paths.clear()
    assert load_images(cfg, workers=1).from_cache and counting.paths == []


def test_added_and_removed_files(tmp_path, counting):
    folder = _folder(tmp_path / "imgs")
    cfg = DataConfig(folder=str(folder), image_size=8)
    load_images(cfg, workers=1)
    Image.new("RGB", (9, 9), (1, 2, 3)).save(folder / "new.png")
    (folder / "00.png").unlink()
    counting.paths.clear()
    s = load_images(cfg, workers=1)
    assert counting.paths == [str(folder / "new.png")]
    assert len(s) == 12 and str(folder / "00.png") not in s.paths and str(folder / "new.png") in s.paths


def test_corrupt_cache_entries_are_ignored_and_rebuilt(tmp_path, counting):
    folder = _folder(tmp_path / "imgs")
    cfg = DataConfig(folder=str(folder), image_size=8)
    first = load_images(cfg, workers=1)
    cache = paths.cache_dir() / "datasets"
    (npy,) = cache.glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:100])  # truncated array
    s = load_images(cfg, workers=1)
    assert not s.from_cache
    np.testing.assert_array_equal(s.images, first.images)
    (index,) = cache.glob("*.json")
    index.write_text("{ not json")
    s = load_images(cfg, workers=1)
    assert not s.from_cache
    np.testing.assert_array_equal(s.images, first.images)
    assert load_images(cfg, workers=1).from_cache


def test_fingerprint_follows_contents_not_location(tmp_path):
    a = _folder(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    fa = load_images(DataConfig(folder=str(a), image_size=8), workers=1).fingerprint
    fb = load_images(DataConfig(folder=str(b), image_size=8), workers=1).fingerprint
    assert fa == fb
    fc = load_images(DataConfig(folder=str(b), image_size=8, background="black"), workers=1).fingerprint
    assert fc != fa


def test_use_cache_false_writes_nothing(tmp_path):
    folder = _folder(tmp_path / "imgs")
    load_images(DataConfig(folder=str(folder), image_size=8), use_cache=False, workers=1)
    folder = paths.cache_dir() / "datasets"
    assert not folder.exists() or not any(folder.iterdir())


def test_undecodable_file_names_load_and_cache(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9-latin1.png")  # not UTF-8: a lone surrogate in the str
    Image.new("RGB", (10, 10), (5, 6, 7)).save(os.path.join(folder, name))
    (folder / "ok.png").write_bytes((folder / name).read_bytes())
    cfg = DataConfig(folder=str(folder), image_size=8)
    first = load_images(cfg, workers=1)
    assert len(first) == 2 and os.path.join(str(folder), name) in first.paths
    again = load_images(cfg, workers=1)
    assert again.from_cache and again.paths == first.paths
