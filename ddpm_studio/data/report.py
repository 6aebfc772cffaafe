"""Plain-words reports of the files a load skipped (the CLI's lines; run.json's records)."""

from __future__ import annotations

from collections import Counter
from typing import Iterable


def skipped_records(skipped: Iterable) -> list[dict[str, str]]:
    """Every skipped file as {"path", "reason"}, for run.json."""
    return [{"path": str(s.path), "reason": str(s.reason)} for s in skipped]


def _kind(reason: str) -> str:
    """The reason without its particulars: 'damaged or truncated image (broken data stream)' -> its first words,
    'duplicate of a.png' -> 'duplicate of another image'."""
    if reason.startswith("duplicate of "):
        return "duplicate of another image"
    return reason.split(" (")[0]


def describe_skipped(skipped: list, *, first: int = 5, where: str | None = None) -> list[str]:
    """Lines saying how many files were skipped and why, naming the first few.

    E.g. ``["skipped 3 file(s): 2 damaged or truncated image, 1 empty file", "  a.png: empty file (0 bytes)",
    ..., "  (all 3 in run.json)"]``; no lines when nothing was skipped.
    """
    if not skipped:
        return []
    kinds = Counter(_kind(str(s.reason)) for s in skipped)
    lines = [f"skipped {len(skipped):,} file(s): " + ", ".join(f"{n:,} {k}" for k, n in kinds.most_common())]
    lines += [f"  {s.path}: {s.reason}" for s in skipped[:first]]
    if len(skipped) > first:
        lines.append(f"  ... and {len(skipped) - first:,} more" + (f" (all of them in {where})" if where else ""))
    elif where:
        lines.append(f"  (listed in {where})")
    return lines
