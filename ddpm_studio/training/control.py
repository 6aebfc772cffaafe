"""Pause / resume / stop for a running trainer: plain threading, no torch, so a UI can create one
before the (slow) torch import has finished."""

from __future__ import annotations

import threading


class TrainControl:
    """Pause / resume / stop a running trainer from any thread.

    Stopping and pausing are cooperative: the trainer looks between steps, so either takes effect
    within one training step. While paused it blocks on an Event (no busy-waiting); ``stop()``
    also wakes a paused trainer.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()

    def pause(self) -> None:
        if not self._stop.is_set():
            self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set() and not self._stop.is_set()

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def wait_while_paused(self, timeout: float | None = None) -> bool:
        """Block while paused (until resume or stop); True when no longer paused."""
        return self._running.wait(timeout)
