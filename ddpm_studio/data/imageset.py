"""Folders of images in, one uint8 array out: indexing, parallel decoding, the disk cache.

``load_images(cfg)`` / ``load_paths(paths, cfg)`` are the only entry points the rest of the program
needs. They never raise for a bad file (each becomes a :class:`SkippedFile` with a plain reason);
they raise :class:`DatasetError` when there is nothing usable at all (or a path does not exist)
and :class:`Cancelled` when ``should_stop()`` turns true.

Length (over 500 lines, on purpose): indexing, parallel decoding and the disk cache share one
file-identity key (the stat key) and one row order; kept together so they cannot disagree.

Indexing walks each folder recursively, following symlinked folders but never entering the same
folder twice (so symlink loops end), and ignores names starting with "." (``.DS_Store``,
``._photo.jpg``, ``.git``) and special files (pipes, sockets). Files whose extension is not an image
extension (``decode.IMAGE_EXTENSIONS``, any case) are reported as "not an image file" without
being opened; the same file reached twice (links, overlapping drops) counts once. Files are
ordered by path (case-folded) so the same folder always gives the same order, which the loader's
data order relies on. While indexing, progress is reported as ``(files_found, 0, message)``:
a total of 0 means "not known yet".

Channels: with ``cfg.channels == "auto"`` the set is greyscale when every usable image is
greyscale, decided per image by mode (1, L, LA, I, I;16, F) and by content (RGB whose channels
differ by at most ``decode.GRAY_TOLERANCE`` levels, a greyscale palette, ...); otherwise RGB, with
greyscale images repeated across the three channels. "1" converts colour with ITU-R 601 luma.

The cache (``paths.cache_dir()/datasets``) holds, per (set of roots, preprocessing settings), the
decoded array as ``.npy`` and a JSON index of every file with its stat key (size, mtime_ns,
ctime_ns, inode, device) and the blake2b hash of its bytes (unusable files: their reason).
Reopening stats every file and reuses an entry only when the stat key is unchanged; a changed
file (new size, mtime or ctime — writing a file always updates its ctime, even when its mtime is
set back by hand) is read and hashed again. Added or
changed files are decoded, unchanged ones are copied from the cache. The set's ``fingerprint``
is computed from the content hashes and the settings, so it identifies the data, not the paths.
The cache is written atomically (array under a new name, then the index), a corrupt or unreadable
entry is ignored and rebuilt, and beyond ``CACHE_LIMIT_BYTES`` the oldest sets are deleted.

Duplicates: with ``cfg.exclude_duplicates`` the files ``data.duplicates`` groups as exact or near
duplicates (the dataset doctor's rule) are left out after decoding, all but the first of each group,
each a SkippedFile "duplicate of NAME"; the cached array stays the whole set, and the grouping is
cached beside it under the list of (path, content hash).

Memory: before decoding, a set that would need more than 60% of the physical memory is refused
with a DatasetError that says how much it needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ddpm_studio import paths as _paths
from ddpm_studio.config import DataConfig, atomic_write, atomic_write_text
from ddpm_studio.errors import Cancelled
from ddpm_studio.data.duplicates import NEAR_DUPLICATE_RMSE, find_duplicates
from ddpm_studio.data.decode import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, Decoded, Settings,
                                     decode_file, luminance)

CACHE_VERSION = 2
CACHE_SUBDIR = "datasets"
CACHE_LIMIT_BYTES = 4 * 1024**3  # the oldest cached sets are deleted beyond this

Progress = Callable[[int, int, str], None]
ShouldStop = Callable[[], bool]


class DatasetError(ValueError):
    """Nothing usable: a missing path, an empty folder, or no file that decodes. ``skipped`` says why."""

    def __init__(self, message: str, skipped: list["SkippedFile"] | None = None):
        super().__init__(message)
        self.skipped = list(skipped or [])


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
    from_cache: bool = False  # True when nothing was decoded: the whole set came from the disk cache

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

    image_files, others, skipped = _index(roots, stop, report)
    for path in others:
        ext = os.path.splitext(path)[1]
        skipped.append(SkippedFile(path, f"not an image file ({ext or 'no extension'})"))
    if not image_files:
        _raise_empty(roots, skipped)
    _check_memory(len(image_files), settings)

    cache = _Cache(roots, settings) if use_cache else None
    cached = cache.read() if cache else None
    result = _assemble(image_files, settings, cached, stop, report, workers)
    del cached
    if result.images is None:
        _raise_empty(roots, skipped + result.skipped)
    channels = int(result.images.shape[3])
    if cache and not result.from_cache:
        cache.write(result, channels)  # the whole set: leaving duplicates out or not reuses it
    images, kept, digests = result.images, result.paths, result.digests
    if cfg.exclude_duplicates:
        images, kept, digests, dropped = _leave_out_duplicates(result, stop, report, cache)
        skipped += dropped
    skipped = sorted(skipped + result.skipped, key=lambda s: _sort_key(s.path))
    fingerprint = _fingerprint(settings, channels, digests)
    report(len(image_files), len(image_files), f"Loaded {len(kept):,} images")
    return ImageSet(images=images, paths=kept, skipped=skipped, channels=channels,
                    image_size=settings.size, source=source, fingerprint=fingerprint,
                    from_cache=result.from_cache)


def _leave_out_duplicates(result: "_Result", stop: ShouldStop, report: Progress,
                          cache: "_Cache | None") -> tuple[np.ndarray, list[str], list[str], list[SkippedFile]]:
    """The decoded set without the files the dataset doctor calls duplicates (``data.duplicates``'s rule:
    the first of each group stays); -> (images, paths, digests, one SkippedFile per file left out).

    Finding them reads every file again; the answer is kept in the cache folder under the (path, content
    hash) list, so reopening an unchanged folder (a resume, an evaluation) does not."""
    paths = result.paths
    key = hashlib.blake2b(f"duplicates-v1;{NEAR_DUPLICATE_RMSE}\n".encode()
                          + "\n".join(f"{p}\t{d}" for p, d in zip(paths, result.digests)).encode(),
                          digest_size=16).hexdigest()
    saved = cache.dir / f"duplicates-{key}.json" if cache is not None else None
    drop = _read_duplicates(saved, len(paths))
    if drop is None:
        groups, _ = find_duplicates(paths, should_stop=stop, progress=report)
        drop = groups.excluded()
        if saved is not None:
            try:
                atomic_write_text(saved, json.dumps({"drop": sorted(drop.items())}))
            except OSError:
                pass  # only costs time next time
    if not drop:
        return result.images, paths, result.digests, []
    skipped = []
    for i, k in sorted(drop.items()):
        name = os.path.basename(paths[k])
        same_name = name == os.path.basename(paths[i])  # then the whole path says which
        skipped.append(SkippedFile(paths[i], f"duplicate of {paths[k] if same_name else name}"))
    keep = [i for i in range(len(paths)) if i not in drop]
    return (result.images[keep], [paths[i] for i in keep], [result.digests[i] for i in keep], skipped)


def _read_duplicates(path: Path | None, n: int) -> dict[int, int] | None:
    """A saved {left out: kept} row map, or None when there is none (or it does not fit ``n`` rows)."""
    if path is None:
        return None
    try:
        drop = {int(i): int(k) for i, k in json.loads(path.read_text(encoding="utf-8"))["drop"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(not (0 <= i < n and 0 <= k < n) or k in drop for i, k in drop.items()):
        return None
    return drop


# ---------------------------------------------------------------------------------------------
# indexing


# A file found by indexing: (path, stat key). The stat key (size, mtime_ns, ctime_ns, inode,
# device) is the cache's "unchanged" test. Plain tuples: 20,000 of them are made on every open.
_File = tuple[str, tuple[int, int, int, int, int]]


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _sort_key(path: str) -> tuple[str, str]:
    return (path.casefold(), path)


def _index(roots: list[str], stop: ShouldStop,
           report: Progress) -> tuple[list[_File], list[str], list[SkippedFile]]:
    """-> (image files sorted by path, other files, skipped). Each file is listed once."""
    files: list[_File] = []
    others: list[str] = []
    skipped: list[SkippedFile] = []
    seen_dirs: set[tuple[int, int]] = set()
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
        if stat.S_ISDIR(st.st_mode):
            _walk(root, files, others, skipped, seen_dirs, stop, report)
        elif not stat.S_ISREG(st.st_mode):
            skipped.append(SkippedFile(root, special_file_reason(root)))
        elif os.path.splitext(root)[1].lower() in IMAGE_EXTENSIONS:
            files.append((root, _stat_key(st)))
        else:
            others.append(root)
    if missing:
        raise DatasetError(f"Folder not found: {missing[0]}" if len(missing) == 1
                           else f"Folders not found: {', '.join(missing)}")
    files.sort(key=lambda f: _sort_key(f[0]))
    if len({st[3:] for _, st in files}) != len(files):  # the same file reached twice: keep the first
        seen: set[tuple[int, int]] = set()
        unique = []
        for f in files:
            if f[1][3:] not in seen:
                seen.add(f[1][3:])
                unique.append(f)
        files = unique
    others = sorted(set(others), key=_sort_key)
    return files, others, skipped


def _walk(root: str, files: list, others: list, skipped: list, seen_dirs: set, stop: ShouldStop,
          report: Progress) -> None:
    stack = [root]
    next_report = 1000
    exts = IMAGE_EXTENSIONS
    while stack:
        if stop():
            raise Cancelled("loading was cancelled")
        folder = stack.pop()
        try:
            st = os.stat(folder)
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:  # a symlink loop, or a folder reached twice
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
            name = entry.name
            if name[0] == ".":
                continue  # hidden: .DS_Store, ._AppleDouble files, .git, ...
            try:
                if entry.is_file():  # follows symlinks
                    dot = name.rfind(".")
                    if dot > 0 and name[dot:].lower() in exts:
                        est = entry.stat()
                        files.append((entry.path, (est.st_size, est.st_mtime_ns, est.st_ctime_ns,
                                                   est.st_ino, est.st_dev)))
                    else:
                        others.append(entry.path)
                elif entry.is_dir():
                    stack.append(entry.path)
                else:  # a broken link, a device (or a link to one), a named pipe, a socket
                    skipped.append(SkippedFile(entry.path, special_file_reason(entry.path)))
            except PermissionError:
                skipped.append(SkippedFile(entry.path, "cannot be read (permission denied)"))
            except OSError as e:
                skipped.append(SkippedFile(entry.path, f"cannot be read ({e.strerror or e})"))
        if len(files) >= next_report:
            next_report = len(files) + 1000
            report(len(files), 0, f"Indexing: {len(files):,} images found")


def special_file_reason(path: str) -> str:
    """Why a directory entry that is neither a regular file nor a folder is skipped (never opened:
    opening a named pipe blocks, reading a device never ends)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken link (its target does not exist)"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    kind = _paths.file_kind(mode)
    if kind in (None, "a folder"):
        return "not a regular file"
    return f"not a regular file ({kind}{'; not opened' if kind == 'a named pipe' else ''})"


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
# parallel decoding

# Decoding runs in threads: Pillow releases the GIL while it inflates, decodes and resamples, so
# big images scale with the cores. Worker processes were tried and dropped: "spawn" re-imports the
# caller's main module (a script without an ``if __name__ == "__main__"`` guard then re-runs in
# every worker), and fork is unsafe in a Qt application with threads running.
CHUNK_FILES = 64  # files per task, at most
CHUNK_BYTES = 8 * 1024 * 1024  # file bytes per task, at most (big photos: small tasks, prompt cancel)


def default_workers() -> int:
    """Decoding threads: the cores this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _chunks(files: list[_File]) -> list[list[int]]:
    out, cur, size = [], [], 0
    for i, f in enumerate(files):
        if cur and (len(cur) >= CHUNK_FILES or size + f[1][0] > CHUNK_BYTES):
            out.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += f[1][0]
    if cur:
        out.append(cur)
    return out


def _decode_all(files: list[_File], settings: Settings, workers: int | None,
                stop: ShouldStop) -> Iterator[tuple[list[int], list[Decoded]]]:
    """Decode ``files`` in chunks on ``workers`` threads; yields (indices, results) as chunks finish."""
    chunks = _chunks(files)

    def run(idx: list[int]) -> list[Decoded]:
        # decode_file is looked up at call time, so tests can count the calls
        return [decode_file(files[i][0], settings) for i in idx]

    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(chunks) == 1:
        for idx in chunks:
            if stop():
                raise Cancelled("loading was cancelled")
            yield idx, run(idx)
        return
    todo = list(reversed(chunks))  # popped from the end, so in order
    pending: dict[Future, list[int]] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ddpm-decode") as pool:
        try:
            while todo or pending:
                while todo and len(pending) < 2 * workers:  # a short queue: cancel is prompt
                    idx = todo.pop()
                    pending[pool.submit(run, idx)] = idx
                done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                if stop():
                    raise Cancelled("loading was cancelled")
                for fut in done:
                    yield pending.pop(fut), fut.result()
        finally:
            for fut in pending:
                fut.cancel()


# ---------------------------------------------------------------------------------------------
# assembling


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
        """Resolve the channel count and drop unfilled rows in place.

        At most the result plus a greyscale third of it is held (the 1.5x memory goal)."""
        if self.color is not None and (self.gray is None or channels != "1"):
            out = self.color
            if self.gray is not None:
                for i in np.flatnonzero(self.is_gray & self.filled):
                    out[i] = self.gray[i]  # broadcast (H, W, 1) -> (H, W, 3)
        elif self.color is not None:  # channels == "1" (colour rows only come from an old cache)
            out = self.gray
            for i in np.flatnonzero(~self.is_gray & self.filled):
                out[i] = luminance(self.color[i])
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


@dataclass
class _Result:
    images: np.ndarray | None
    paths: list[str]
    stats: list[tuple]
    digests: list[str]
    gray: list[bool]
    skipped: list[SkippedFile]  # decoding failures (and unchanged ones remembered by the cache)
    skipped_stats: list[tuple]
    from_cache: bool


def _assemble(files: list[_File], s: Settings, cached: "_Cached | None", stop: ShouldStop,
              report: Progress, workers: int | None) -> _Result:
    n = len(files)
    paths = [f[0] for f in files]
    stats = [f[1] for f in files]

    skip_of = cached.skip_index() if cached else {}
    reasons: dict[int, str] = {}  # row -> why it is skipped
    for i, path in enumerate(paths) if skip_of else ():  # unchanged bad files keep their reason
        k = skip_of.get(path)
        if k is not None and cached.skipped_stats[k] == stats[i]:
            reasons[i] = cached.skipped_reasons[k]

    # Fast path: the same files with the same stat keys as last time -> the cached array as it is.
    if cached is not None and len(cached.paths) == n - len(reasons):
        rest = [i for i in range(n) if i not in reasons] if reasons else range(n)
        if [paths[i] for i in rest] == cached.paths and [stats[i] for i in rest] == cached.stats:
            images = cached.load_images()
            if images is not None:
                report(n, n, "Loaded from the cache")
                bad = sorted(reasons)
                return _Result(images, cached.paths, cached.stats, cached.digests, cached.gray,
                               [SkippedFile(paths[i], reasons[i]) for i in bad], [stats[i] for i in bad], True)

    buf = _Buffers(n, s.size)
    digests: list[str] = [""] * n
    todo = _copy_unchanged(paths, stats, cached, reasons, buf, digests)
    done = n - len(todo)
    report(done, n, f"Decoding {len(todo):,} images")
    todo_files = [files[i] for i in todo]
    for idx, results in _decode_all(todo_files, s, workers, stop):
        for k, d in zip(idx, results):
            i = todo[k]
            if d.array is None:
                reasons[i] = d.reason
            else:
                buf.put(i, d.array, d.gray)
                digests[i] = d.digest
        done += len(idx)
        report(done, n, f"Decoding images ({done:,} of {n:,})")

    bad = sorted(reasons)
    skipped = [SkippedFile(paths[i], reasons[i]) for i in bad]
    skipped_stats = [stats[i] for i in bad]
    keep = np.flatnonzero(buf.filled).tolist()
    if not keep:
        return _Result(None, [], [], [], [], skipped, skipped_stats, False)
    gray = buf.is_gray[keep].tolist()
    images = buf.finish(s.channels)
    return _Result(images, [paths[i] for i in keep], [stats[i] for i in keep], [digests[i] for i in keep],
                   gray, skipped, skipped_stats, False)


def _copy_unchanged(paths: list[str], stats: list, cached: "_Cached | None", reasons: dict[int, str],
                    buf: "_Buffers", digests: list[str]) -> list[int]:
    """Copy the rows of files unchanged since the cache was written; returns the rows still to decode."""
    row_of = cached.row_index() if cached else {}
    from_cache: list[tuple[int, int]] = []
    todo: list[int] = []
    for i, path in enumerate(paths):
        if i in reasons:
            continue
        r = row_of.get(path)
        if r is not None and cached.stats[r] == stats[i]:
            from_cache.append((i, r))
        else:
            todo.append(i)
    if from_cache:
        old = cached.load_images(mmap=True)
        if old is None:  # the cached array is unreadable: decode everything
            todo = sorted(todo + [i for i, _ in from_cache])
        else:
            for i, r in from_cache:
                buf.put(i, old[r], cached.gray[r])
                digests[i] = cached.digests[r]
            del old
    return todo


def _fingerprint(s: Settings, channels: int, digests: list[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"ddpm-studio-data-v{CACHE_VERSION};{s.key()};C={channels}\n".encode())
    h.update("\n".join(digests).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the disk cache

# Reasons that may change without the file changing (permissions, memory): never remembered.
_TRANSIENT = ("permission", "cannot be read", "disappeared", "out of memory", "into memory")


@dataclass
class _Cached:
    paths: list[str]
    stats: list[tuple]
    digests: list[str]
    gray: list[bool]
    skipped_paths: list[str]
    skipped_stats: list[tuple]
    skipped_reasons: list[str]
    npy: Path
    shape: tuple[int, ...]

    def row_index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}

    def skip_index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.skipped_paths)}

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
            rows, sk = meta["rows"], meta["skipped"]
            c = _Cached(paths=rows["paths"], stats=[tuple(x) for x in rows["stats"]], digests=rows["digests"],
                        gray=[bool(g) for g in rows["gray"]], skipped_paths=sk["paths"],
                        skipped_stats=[tuple(x) for x in sk["stats"]], skipped_reasons=sk["reasons"],
                        npy=self.dir / os.path.basename(str(meta["npy"])),
                        shape=tuple(int(x) for x in meta["shape"]))
            n = len(c.paths)
            if not (len(c.stats) == len(c.digests) == len(c.gray) == n == c.shape[0]):
                return None
            if not (len(c.skipped_stats) == len(c.skipped_reasons) == len(c.skipped_paths)):
                return None
            return c
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            return None  # missing or corrupt: rebuilt

    def write(self, r: _Result, channels: int) -> None:
        """Array first (under a new name), then the index pointing at it, then older arrays go."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            npy_name = f"{self.key}-{secrets.token_hex(4)}.npy"
            _atomic_save_npy(self.dir / npy_name, r.images)
            keep = [k for k, sk in enumerate(r.skipped) if not any(t in sk.reason for t in _TRANSIENT)]
            meta = {
                "version": CACHE_VERSION, "settings": self.settings_key, "roots": self.roots,
                "channels": channels, "npy": npy_name, "shape": list(r.images.shape),
                "rows": {"paths": r.paths, "stats": r.stats, "digests": r.digests, "gray": r.gray},
                "skipped": {"paths": [r.skipped[k].path for k in keep],
                            "stats": [r.skipped_stats[k] for k in keep],
                            "reasons": [r.skipped[k].reason for k in keep]},
            }
            # ensure_ascii (the default) also escapes undecodable file names (lone surrogates)
            atomic_write_text(self.index, json.dumps(meta, separators=(",", ":")))
            for old in self.dir.glob(f"{self.key}-*.npy"):
                if old.name != npy_name:  # a reader holding the old index just rebuilds
                    old.unlink(missing_ok=True)
            _prune(self.dir)
        except OSError:
            pass  # a cache that cannot be written only costs time next time


def _atomic_save_npy(path: Path, a: np.ndarray) -> None:
    """Streams the array into the file (no copy into bytes), atomically."""
    atomic_write(path, lambda f: np.save(f, a, allow_pickle=False))


_prune_lock = threading.Lock()


def _prune(folder: Path, limit: int = CACHE_LIMIT_BYTES) -> None:
    """Delete the least recently written cached sets while the cache is over ``limit``."""
    with _prune_lock:
        try:
            sets = []
            for index in folder.glob("*.json"):
                arrays = list(folder.glob(f"{index.stem}-*.npy"))
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
    if folder.is_dir():
        for p in list(folder.glob("*.json")) + list(folder.glob("*.npy")):
            p.unlink(missing_ok=True)
