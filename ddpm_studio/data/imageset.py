"""Folders of images in, one uint8 array out: indexing, parallel decoding, the disk cache.

``load_images(cfg)`` / ``load_paths(paths, cfg)`` are the only entry points the rest of the program
needs. They never raise for a bad file (each becomes a :class:`SkippedFile` with a plain reason);
they raise :class:`DatasetError` when there is nothing usable at all (or a path does not exist)
and :class:`Cancelled` when ``should_stop()`` turns true.

Indexing walks each folder recursively, following symlinked folders but never entering the same
folder twice (so symlink loops end), and ignores names starting with "." (``.DS_Store``,
``._photo.jpg``, ``.git``). Files are ordered by path (case-folded) so the same folder always gives
the same order, which the loader's data order relies on.

Channels: with ``cfg.channels == "auto"`` the set is greyscale when every usable image is
greyscale, decided per image by mode (1, L, LA, I, I;16, F) and by content (RGB whose channels
differ by at most ``decode.GRAY_TOLERANCE`` levels, a greyscale palette, ...); otherwise RGB, with
greyscale images repeated across the three channels. "1" converts colour with ITU-R 601 luma.

The cache (``paths.cache_dir()/datasets``) holds, per (set of roots, preprocessing settings), the
decoded array as ``.npy`` and a JSON index of every file with its stat key (size, mtime_ns,
ctime_ns, inode) and its blake2b content hash. Reopening stats every file and reuses an entry only
when the stat key is unchanged; a changed file (new size, mtime or ctime — writing a file always
updates its ctime, even when its mtime is set back by hand) is read and hashed again. Added or
changed files are decoded, unchanged ones are copied from the cache. The set's ``fingerprint``
is computed from the content hashes and the settings, so it identifies the data, not the paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ddpm_studio import paths as _paths
from ddpm_studio.config import DataConfig, atomic_write_text
from ddpm_studio.data.decode import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, Decoded, Settings,
                                     decode_file, luminance)

CACHE_VERSION = 1
CACHE_SUBDIR = "datasets"
CACHE_LIMIT_BYTES = 4 * 1024**3  # the oldest cached sets are deleted beyond this
CHUNK = 64  # files per decoding task

Progress = Callable[[int, int, str], None]
ShouldStop = Callable[[], bool]


class DatasetError(ValueError):
    """Nothing usable: a missing path, an empty folder, or no file that decodes. ``skipped`` says why."""

    def __init__(self, message: str, skipped: list["SkippedFile"] | None = None):
        super().__init__(message)
        self.skipped = list(skipped or [])


class Cancelled(Exception):
    """``should_stop()`` became true while loading."""


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str  # plain words, e.g. "empty file (0 bytes)"


@dataclass
class ImageSet:
    """A preprocessed image set; ``images`` doubles as the GUI's thumbnails."""

    images: np.ndarray  # (N, H, W, C) uint8, C in {1, 3}
    paths: list[str]  # one per image, in row order
    skipped: list[SkippedFile] = field(default_factory=list)
    channels: int = 3
    image_size: int = 32
    source: str = ""  # the folder(s), "; "-joined, or "built-in"
    fingerprint: str = ""  # contents + preprocessing
    from_cache: bool = False

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def summary(self) -> str:
        """One line for a status bar: "1,234 images, 32x32 RGB (5 skipped)"."""
        kind = "greyscale" if self.channels == 1 else "RGB"
        s = f"{len(self):,} images, {self.image_size}x{self.image_size} {kind}"
        return s + (f" ({len(self.skipped):,} skipped)" if self.skipped else "")


# ---------------------------------------------------------------------------------------------
# public entry points


def settings_from_config(cfg: DataConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> Settings:
    cfg.validate()
    return Settings(size=cfg.image_size, channels=cfg.channels, background=cfg.background,
                    min_size=cfg.min_size, max_pixels=max_pixels)


def load_images(cfg: DataConfig, *, progress: Progress | None = None, should_stop: ShouldStop | None = None,
                use_cache: bool = True, workers: int | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSet:
    """The training set ``cfg`` describes: ``cfg.folder``, or the built-in set when it is None."""
    if cfg.folder is None or str(cfg.folder) == "":
        from ddpm_studio.data.builtin import load_builtin

        return load_builtin(cfg, progress=progress, should_stop=should_stop)
    return load_paths([cfg.folder], cfg, progress=progress, should_stop=should_stop,
                      use_cache=use_cache, workers=workers, max_pixels=max_pixels)


def load_paths(paths: Iterable[str | os.PathLike], cfg: DataConfig, *, progress: Progress | None = None,
               should_stop: ShouldStop | None = None, use_cache: bool = True, workers: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSet:
    """One set from several dropped folders and/or files (``cfg.folder`` is ignored)."""
    settings = settings_from_config(cfg, max_pixels)
    roots = [os.path.abspath(os.fspath(p)) for p in paths]
    if not roots:
        raise DatasetError("No folder or file was given.")
    stop = should_stop or (lambda: False)
    report = progress or (lambda done, total, message: None)
    source = "; ".join(roots)

    files, skipped = _index(roots, stop, report)
    image_files = [f for f in files if Path(f.path).suffix.lower() in IMAGE_EXTENSIONS]
    for f in files:
        if Path(f.path).suffix.lower() not in IMAGE_EXTENSIONS:
            ext = Path(f.path).suffix or "no extension"
            skipped.append(SkippedFile(f.path, f"not an image file ({ext})"))
    if not image_files:
        _raise_empty(roots, skipped)
    _check_memory(len(image_files), settings)

    cache = _Cache(roots, settings) if use_cache else None
    cached = cache.read() if cache else None
    result = _assemble(image_files, skipped, settings, cached, stop, report, workers)
    if result is None:
        _raise_empty(roots, skipped)
    images, rows, row_gray, new_skipped, from_cache = result
    skipped = sorted(skipped + new_skipped, key=lambda s: _sort_key(s.path))
    channels = int(images.shape[3])
    fingerprint = _fingerprint(settings, channels, [r.digest for r in rows])
    if cache and not from_cache:
        cache.write(images, rows, row_gray, new_skipped, {f.path: f.stat for f in image_files}, channels)
    report(len(image_files), len(image_files), f"Loaded {len(rows):,} images")
    return ImageSet(images=images, paths=[r.path for r in rows], skipped=skipped, channels=channels,
                    image_size=settings.size, source=source, fingerprint=fingerprint, from_cache=from_cache)


# ---------------------------------------------------------------------------------------------
# indexing


@dataclass(frozen=True)
class _File:
    path: str
    stat: tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode: the cache's "unchanged" test


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _sort_key(path: str) -> tuple[str, str]:
    return (path.casefold(), path)


def _index(roots: list[str], stop: ShouldStop, report: Progress) -> tuple[list[_File], list[SkippedFile]]:
    files: dict[str, _File] = {}
    skipped: list[SkippedFile] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()

    def add_file(path: str, st: os.stat_result) -> None:
        real = os.path.realpath(path)
        if real in seen_files:  # the same file reached twice (overlapping drops, links)
            return
        seen_files.add(real)
        files[path] = _File(path, _stat_key(st))

    missing = []
    for root in roots:
        try:
            st = os.stat(root)
        except FileNotFoundError:
            missing.append(root)
            continue
        except OSError as e:
            skipped.append(SkippedFile(root, f"cannot be read ({e.strerror or e})"))
            continue
        if os.path.isdir(root):
            _walk(root, files, skipped, seen_dirs, add_file, stop, report)
        else:
            add_file(root, st)
    if missing:
        raise DatasetError(f"Folder not found: {missing[0]}" if len(missing) == 1
                           else f"Folders not found: {', '.join(missing)}")
    ordered = sorted(files.values(), key=lambda f: _sort_key(f.path))
    return ordered, skipped


def _walk(root: str, files: dict, skipped: list, seen_dirs: set, add_file, stop: ShouldStop,
          report: Progress) -> None:
    stack = [root]
    while stack:
        if stop():
            raise Cancelled("loading was cancelled")
        folder = stack.pop()
        try:
            st = os.stat(folder)
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:  # a symlink loop or a folder reached twice
                continue
            seen_dirs.add(key)
            with os.scandir(folder) as it:
                entries = list(it)
        except PermissionError:
            skipped.append(SkippedFile(folder, "folder cannot be read (permission denied)"))
            continue
        except OSError as e:
            skipped.append(SkippedFile(folder, f"folder cannot be read ({e.strerror or e})"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue  # hidden: .DS_Store, ._AppleDouble, .git, ...
            try:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    add_file(entry.path, entry.stat(follow_symlinks=True))
                elif entry.is_symlink():
                    skipped.append(SkippedFile(entry.path, "broken link (its target does not exist)"))
            except PermissionError:
                skipped.append(SkippedFile(entry.path, "cannot be read (permission denied)"))
            except OSError as e:
                skipped.append(SkippedFile(entry.path, f"cannot be read ({e.strerror or e})"))
        if len(files) and len(files) % 1000 < len(entries):
            report(len(files), 0, f"Indexing: {len(files):,} files found")


def _raise_empty(roots: list[str], skipped: list[SkippedFile]) -> None:
    where = roots[0] if len(roots) == 1 else f"{len(roots)} dropped items ({roots[0]}, ...)"
    if not skipped:
        raise DatasetError(f"No images found in {where}: it is empty.", skipped)
    first = skipped[0]
    raise DatasetError(
        f"No usable images in {where}: {len(skipped)} file(s) skipped "
        f"(for example {os.path.basename(first.path)}: {first.reason}).", skipped)


def _check_memory(n: int, s: Settings) -> None:
    need = n * s.size * s.size * (1 if s.channels == "1" else 3)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return
    if need > 0.6 * total:
        raise DatasetError(
            f"{n:,} images at {s.size}x{s.size} px would need {need / 1024**3:.1f} GB of memory "
            f"(this computer has {total / 1024**3:.1f} GB); choose a smaller image size or fewer images.")


# ---------------------------------------------------------------------------------------------
# decoding and assembling


@dataclass(frozen=True)
class _Row:
    path: str
    stat: tuple[int, int, int, int]
    digest: str


def _decode_all(files: list[_File], settings: Settings, workers: int | None,
                stop: ShouldStop) -> Iterator[tuple[list[int], list[Decoded]]]:
    """Decode ``files`` in chunks, in parallel; yields (indices, results) as chunks finish."""
    n = len(files)
    chunks = [list(range(i, min(i + CHUNK, n))) for i in range(0, n, CHUNK)]

    def run(idx: list[int]) -> list[Decoded]:
        return [decode_file(files[i].path, settings) for i in idx]

    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(chunks) == 1:
        for idx in chunks:
            if stop():
                raise Cancelled("loading was cancelled")
            yield idx, run(idx)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ddpm-decode")
    try:
        pending: dict[Future, list[int]] = {}
        it = iter(chunks)
        for idx in it:
            pending[pool.submit(run, idx)] = idx
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            if stop():
                raise Cancelled("loading was cancelled")
            for fut in done:
                idx = pending.pop(fut)
                nxt = next(it, None)
                if nxt is not None:
                    pending[pool.submit(run, nxt)] = nxt
                yield idx, fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def default_workers() -> int:
    """Decoding threads: the cores this process may use (Pillow releases the GIL while decoding)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


class _Buffers:
    """Rows land in a greyscale and/or an RGB buffer, allocated on first use; see ``finish``."""

    def __init__(self, n: int, size: int):
        self.n, self.size = n, size
        self.gray: np.ndarray | None = None
        self.color: np.ndarray | None = None
        self.is_gray = np.zeros(n, dtype=bool)
        self.filled = np.zeros(n, dtype=bool)

    def put(self, i: int, arr: np.ndarray, gray: bool) -> None:
        if gray:
            if self.gray is None:
                self.gray = np.empty((self.n, self.size, self.size, 1), dtype=np.uint8)
            self.gray[i] = arr[..., :1]
        else:
            if self.color is None:
                self.color = np.empty((self.n, self.size, self.size, 3), dtype=np.uint8)
            self.color[i] = arr
        self.is_gray[i] = gray
        self.filled[i] = True

    def finish(self, channels: str) -> np.ndarray:
        """Resolve the channel count, drop unfilled rows in place; at most 4/3 of the result's size is held."""
        if self.color is not None and (self.gray is None or channels != "1"):
            out = self.color
            if self.gray is not None:
                for i in np.flatnonzero(self.is_gray & self.filled):
                    out[i] = self.gray[i]  # broadcast (H, W, 1) -> (H, W, 3)
            self.gray = None
        elif self.color is not None:  # channels == "1" but colour rows were cached as colour
            out = self.gray
            ci = np.flatnonzero(~self.is_gray & self.filled)
            out[ci] = luminance(self.color[ci])
            self.color = None
        else:
            out = self.gray
        self.color = self.gray = None
        keep = np.flatnonzero(self.filled)
        if len(keep) < self.n:
            for j, i in enumerate(keep):  # compact in place: j <= i, so nothing is overwritten early
                if j != i:
                    out[j] = out[i]
            out.resize((len(keep),) + out.shape[1:], refcheck=False)
        return out


def _assemble(files: list[_File], skipped: list[SkippedFile], s: Settings, cached: "_Cached | None",
              stop: ShouldStop, report: Progress, workers: int | None):
    n = len(files)
    todo: list[int] = []
    rows: list[_Row | None] = [None] * n
    from_cache_idx: list[tuple[int, int]] = []  # (new index, cached row)
    new_skipped: list[SkippedFile] = []
    skipped_at: dict[int, SkippedFile] = {}
    for i, f in enumerate(files):
        hit = cached.rows.get(f.path) if cached else None
        if hit is not None and hit[0] == f.stat:
            from_cache_idx.append((i, hit[1]))
            rows[i] = _Row(f.path, f.stat, hit[2])
            continue
        miss = cached.skipped.get(f.path) if cached else None
        if miss is not None and miss[0] == f.stat:
            skipped_at[i] = SkippedFile(f.path, miss[1])
            continue
        todo.append(i)

    # Fast path: nothing changed, the cached array is the answer as it is.
    if cached is not None and not todo and [c for _, c in from_cache_idx] == list(range(cached.count)) \
            and cached.count == len(cached.rows):
        images = cached.load_images()
        if images is not None:
            for sk in skipped_at.values():
                new_skipped.append(sk)
            report(n, n, "Loaded from cache")
            return images, [r for r in rows if r is not None], cached.gray_flags(), new_skipped, True

    buf = _Buffers(n, s.size)
    if from_cache_idx:
        images = cached.load_images(mmap=True) if cached else None
        if images is None:  # unreadable cache array: decode everything
            todo = sorted(todo + [i for i, _ in from_cache_idx])
            for i, _ in from_cache_idx:
                rows[i] = None
        else:
            c_gray = cached.gray_flags()
            for i, c in from_cache_idx:
                buf.put(i, images[c], bool(c_gray[c]))
            del images
    done = n - len(todo)
    report(done, n, f"Decoding {len(todo):,} images")
    todo_files = [files[i] for i in todo]
    for idx, results in _decode_all(todo_files, s, workers, stop):
        for k, d in zip(idx, results):
            i = todo[k]
            f = files[i]
            if d.array is None:
                skipped_at[i] = SkippedFile(f.path, d.reason)
            else:
                buf.put(i, d.array, d.gray)
                rows[i] = _Row(f.path, f.stat, d.digest)
        done += len(idx)
        report(done, n, f"Decoding images ({done:,} of {n:,})")
    new_skipped.extend(skipped_at[i] for i in sorted(skipped_at))
    # Remember skip reasons so an unchanged bad file is not read again (transient ones are retried).
    if not buf.filled.any():
        skipped.extend(new_skipped)
        return None
    gray_flags = buf.is_gray[buf.filled].copy()
    images = buf.finish(s.channels)
    return images, [r for r in rows if r is not None], gray_flags, new_skipped, False


def _fingerprint(s: Settings, channels: int, digests: list[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"ddpm-studio-data-v{CACHE_VERSION};{s.key()};C={channels}\n".encode())
    for d in digests:
        h.update(d.encode() + b"\n")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the disk cache


_TRANSIENT = ("permission", "cannot be read", "disappeared", "out of memory", "into memory")


@dataclass
class _Cached:
    rows: dict[str, tuple[tuple, int, str]]  # path -> (stat key, row, digest)
    skipped: dict[str, tuple[tuple, str]]  # path -> (stat key, reason)
    count: int
    gray: list[bool]
    npy: Path
    shape: tuple[int, ...]

    def gray_flags(self) -> np.ndarray:
        return np.asarray(self.gray, dtype=bool)

    def load_images(self, mmap: bool = False) -> np.ndarray | None:
        try:
            a = np.load(self.npy, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if a.dtype != np.uint8 or tuple(a.shape) != self.shape:
            return None
        return a


class _Cache:
    def __init__(self, roots: list[str], s: Settings):
        self.dir = _paths.cache_dir() / CACHE_SUBDIR
        key = json.dumps({"v": CACHE_VERSION, "roots": roots, "settings": s.key()})
        self.key = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
        self.index = self.dir / f"{self.key}.json"
        self.settings_key = s.key()
        self.roots = roots

    def read(self) -> _Cached | None:
        try:
            meta = json.loads(self.index.read_text(encoding="utf-8"))
            if meta.get("version") != CACHE_VERSION or meta.get("settings") != self.settings_key:
                return None
            rows = {r[0]: (tuple(r[1]), i, r[2]) for i, r in enumerate(meta["rows"])}
            skipped = {r[0]: (tuple(r[1]), r[2]) for r in meta["skipped"]}
            gray = [bool(r[3]) for r in meta["rows"]]
            shape = tuple(int(x) for x in meta["shape"])
            npy = self.dir / str(meta["npy"])
            if len(rows) != len(meta["rows"]) or shape[0] != len(rows) or os.sep in str(meta["npy"]):
                return None
            return _Cached(rows, skipped, len(rows), gray, npy, shape)
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            return None  # missing or corrupt: rebuilt

    def write(self, images: np.ndarray, rows: list[_Row], gray: np.ndarray, skipped: list[SkippedFile],
              stats: dict[str, tuple], channels: int) -> None:
        """Array first (new name), then the index pointing at it, then the old array goes."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            old = None
            try:
                old = json.loads(self.index.read_text(encoding="utf-8")).get("npy")
            except (OSError, ValueError, AttributeError):
                pass
            npy_name = f"{self.key}-{secrets.token_hex(4)}.npy"
            _atomic_save_npy(self.dir / npy_name, images)
            meta = {
                "version": CACHE_VERSION, "settings": self.settings_key, "roots": self.roots,
                "channels": channels, "npy": npy_name, "shape": list(images.shape),
                "rows": [[r.path, list(r.stat), r.digest, bool(g)] for r, g in zip(rows, gray)],
                "skipped": [[sk.path, list(stats[sk.path]), sk.reason] for sk in skipped
                            if sk.path in stats and not any(t in sk.reason for t in _TRANSIENT)],
            }
            atomic_write_text(self.index, json.dumps(meta, separators=(",", ":")))
            if old and old != npy_name and os.sep not in str(old):
                try:
                    (self.dir / old).unlink()
                except OSError:
                    pass
            _prune(self.dir)
        except OSError:
            pass  # a cache that cannot be written only costs time next time


def _atomic_save_npy(path: Path, a: np.ndarray) -> None:
    """Like config.atomic_write_bytes, but streams the array instead of copying it into bytes."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, a, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_prune_lock = threading.Lock()


def _prune(folder: Path, limit: int = CACHE_LIMIT_BYTES) -> None:
    """Delete the least recently written cached sets while the cache is over ``limit``."""
    with _prune_lock:
        try:
            sets = []
            for index in folder.glob("*.json"):
                key = index.stem
                arrays = list(folder.glob(f"{key}-*.npy"))
                size = index.stat().st_size + sum(a.stat().st_size for a in arrays)
                sets.append((index.stat().st_mtime, size, index, arrays))
            total = sum(s[1] for s in sets)
            for _, size, index, arrays in sorted(sets, key=lambda s: s[0]):
                if total <= limit:
                    break
                for p in [index, *arrays]:
                    p.unlink(missing_ok=True)
                total -= size
        except OSError:
            pass


def clear_cache() -> None:
    """Delete every cached dataset (the cache is always safe to delete)."""
    folder = _paths.cache_dir() / CACHE_SUBDIR
    for p in list(folder.glob("*.json")) + list(folder.glob("*.npy")):
        p.unlink(missing_ok=True)
