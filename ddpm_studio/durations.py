"""Durations in words, for people: "35 s", "16 min 35 s", "1 h 05 min" (never "16:35", which reads as a time of day).

Plain Python (no torch, no Qt): the trainer's messages, the CLI's progress bar and the window share it.
"""

from __future__ import annotations

import math


def format_duration(seconds: float | None) -> str:
    """``seconds`` rounded to what a person needs: seconds under an hour, minutes above; "–" if unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, s = divmod(s, 60)
        return f"{m} min {s:02d} s"
    m = int(round(seconds / 60))  # whole minutes from here on
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def format_time_left(seconds: float | None) -> str:
    """ "16 min 35 s left", "1 h 05 min left"; "" while nobody knows yet."""
    text = format_duration(seconds)
    return "" if text == "–" else f"{text} left"
