"""Exact and near duplicate image files: one rule for the dataset doctor and the loader.

Exact duplicates are files with the same bytes (SHA-256). Near duplicates are distinct files whose
16 x 16 grayscale thumbnails of the whole image (box-filtered; a JPEG decoded at reduced size first)
lie within ``NEAR_DUPLICATE_RMSE`` of each other, grouped transitively (union-find). In every group
the file to keep comes first: the shortest name, then path order, so "a.png" stays and
"a copy.png" goes.

``evaluation.doctor`` reports the groups and offers to leave the extra files out; ``load_paths``
leaves them out itself when ``DataConfig.exclude_duplicates`` is on (each listed as skipped,
"duplicate of NAME"). Pillow and numpy only.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ddpm_studio.data.decode import DEFAULT_MAX_PIXELS, MAX_FILE_BYTES
from ddpm_studio.errors import Cancelled

THUMB = 16
NEAR_DUPLICATE_RMSE = 0.03  # 0-1 scale, 16 x 16 grayscale: a re-save, a resize, a small crop


def read_bytes(path: str) -> bytes:
    """A file's bytes, refusing one over ``MAX_FILE_BYTES`` (ValueError)."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError("larger than the 1 GB file limit")
    return data


def open_small(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, int, int, str]:
    """(the image as RGB at a fraction of its size where the format allows, full width, height, mode)."""
    with Image.open(io.BytesIO(data)) as im:
        width, height, mode = im.width, im.height, im.mode
        if width * height > max_pixels:
            raise ValueError(f"{width}x{height} is over the {max_pixels // (1024 * 1024)} Mpx limit; "
                             "it is refused when loading")
        im.draft("RGB", (THUMB * 4, THUMB * 4))  # JPEG: decode at a fraction of the size
        rgb = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB").convert("RGB")
    return rgb, width, height, mode


def gray_thumbnail(rgb: Image.Image) -> np.ndarray:
    """(THUMB, THUMB) float32 in 0-1: the whole image squeezed, in grayscale."""
    return np.asarray(rgb.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX), np.float32) / 255.0


def fingerprint_file(path: str) -> tuple[str, np.ndarray]:
    """(SHA-256 of the bytes, gray thumbnail) of one image file; ValueError / OSError when unreadable."""
    data = read_bytes(path)
    rgb = open_small(data)[0]
    return hashlib.sha256(data).hexdigest(), gray_thumbnail(rgb)


def keeper_first(group: list[int], names: Sequence[str]) -> list[int]:
    """A duplicate group with the file to keep first: the shortest name, then path order."""
    return sorted(group, key=lambda i: (len(os.path.basename(names[i])), names[i].casefold(), names[i]))


def union_groups(pairs: list[tuple[int, int]], n: int) -> list[list[int]]:
    """The connected groups (of more than one) of ``n`` items joined by ``pairs``, each sorted."""
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    out: dict[int, list[int]] = {}
    for i in range(n):
        out.setdefault(find(i), []).append(i)
    return [sorted(g) for g in out.values() if len(g) > 1]


def near_pairs(g: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs (i < j) of rows of ``g`` (U, THUMB * THUMB) within ``NEAR_DUPLICATE_RMSE``."""
    pairs = []
    g2 = (g * g).sum(1)
    for start in range(0, len(g), 1024):
        blk = g[start:start + 1024]
        d2 = (blk * blk).sum(1)[:, None] + g2[None, :] - 2.0 * blk @ g.T  # (blk, U)
        rmse = np.sqrt(np.clip(d2, 0, None) / g.shape[1])
        a, b = np.nonzero(rmse < NEAR_DUPLICATE_RMSE)
        pairs += [(start + i, j) for i, j in zip(a.tolist(), b.tolist()) if start + i < j]
    return pairs


@dataclass
class DuplicateGroups:
    """Indices into the names given to :func:`group_duplicates`; each group has its keeper first."""

    exact: list[list[int]]
    near: list[list[int]]  # among the distinct files (the first of each exact group stands for it)
    distinct: list[int]  # one index per distinct file content, in input order

    def excluded(self) -> dict[int, int]:
        """index left out -> the index kept in its place (exact groups first, then near groups)."""
        out: dict[int, int] = {}
        for group in self.exact + self.near:
            for i in group[1:]:
                out[i] = group[0]
        return out


def group_duplicates(names: Sequence[str], shas: Sequence[str], thumbs: Sequence[np.ndarray]) -> DuplicateGroups:
    """The exact groups (same SHA-256) and, among the distinct files, the near groups."""
    by_sha: dict[str, list[int]] = {}
    for i, sha in enumerate(shas):
        by_sha.setdefault(sha, []).append(i)
    exact = [keeper_first(g, names) for g in by_sha.values() if len(g) > 1]
    first_of = {i: g[0] for g in exact for i in g}
    distinct = [i for i in range(len(shas)) if first_of.get(i, i) == i]
    near: list[list[int]] = []
    if len(distinct) > 1:
        g = np.stack([np.asarray(thumbs[i], np.float32).ravel() for i in distinct])  # (U, THUMB * THUMB)
        near = [keeper_first([distinct[i] for i in grp], names) for grp in union_groups(near_pairs(g), len(distinct))]
    return DuplicateGroups(exact, near, distinct)


def find_duplicates(paths: Sequence[str], *, should_stop: Callable[[], bool] | None = None,
                    progress: Callable[[int, int, str], None] | None = None) -> tuple[DuplicateGroups, list[int]]:
    """Read every file of ``paths`` and group the duplicates; -> (groups, indices of unreadable files).

    An unreadable file is in no group (the loader has already skipped or decoded it on its own terms).
    """
    readable, shas, thumbs, bad = [], [], [], []
    for i, p in enumerate(paths):
        if should_stop is not None and should_stop():
            raise Cancelled("loading was cancelled")
        try:
            sha, thumb = fingerprint_file(p)
        except Exception:  # noqa: BLE001 - a file Pillow cannot read is simply in no group
            bad.append(i)
            continue
        readable.append(i)
        shas.append(sha)
        thumbs.append(thumb)
        if progress is not None and (i % 64 == 0 or i == len(paths) - 1):
            progress(i + 1, len(paths), f"Looking for duplicates ({i + 1:,} of {len(paths):,})")
    local = group_duplicates([paths[i] for i in readable], shas, thumbs)

    def back(groups: list[list[int]]) -> list[list[int]]:
        return [[readable[j] for j in g] for g in groups]

    return DuplicateGroups(back(local.exact), back(local.near), [readable[j] for j in local.distinct]), bad
