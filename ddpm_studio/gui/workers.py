"""Long work off the UI thread.

The pattern (napari, Orange3): a plain function ``fn(state)`` does the work and reports through a
:class:`TaskState` (``should_stop()``, ``progress()``, ``emit()``); a :class:`_Worker` QObject
moved to a fresh ``QThread`` runs it (``started → run``, ``finished → quit``) and only relays, then
moves itself back to the UI thread, where the Task deletes it once the thread has ended (never on its
own thread: see the end of ``_Worker.run``); the UI holds a :class:`Task`, whose signals it connects to.

- Stopping is a ``threading.Event`` set directly from the UI thread (a queued slot would never run
  while the worker's thread is busy); the service checks it between steps.
- Items are batched and flushed at most ``max_rate`` times a second, plus the last batch, so a
  fast loop cannot flood the UI's event queue. Progress is emitted only when the integer percent
  (or the message) changes.
- Errors are caught in the worker and emitted as ``failed(message, details)``: plain words and the
  traceback behind a button.

Nothing here knows about training or sampling; the job functions live in :mod:`.jobs`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from typing import Any, Callable

from PySide6.QtCore import QCoreApplication, QObject, Qt, QThread, Signal, Slot

from ..errors import Cancelled


def _is_cancellation(exc: BaseException) -> bool:
    return isinstance(exc, Cancelled)


def plain_message(exc: BaseException) -> str:
    """What the user reads: a ValueError's own words, otherwise the kind of failure."""
    if isinstance(exc, ValueError):
        return str(exc) or "The input was not valid."
    if isinstance(exc, MemoryError):
        return "Out of memory. Try a smaller image size, batch size or number of images."
    if isinstance(exc, OSError):
        return f"A file could not be read or written: {exc}"
    return f"Something went wrong ({type(exc).__name__}): {exc}"


class TaskState:
    """What a job function sees: the cancel flag and two ways to report. Used from the worker thread."""

    def __init__(self, worker: "_Worker", stop_event: threading.Event, max_rate: float):
        self._worker = worker
        self._stop = stop_event
        self._interval = 1.0 / max_rate if max_rate > 0 else 0.0
        self._pending: list[Any] = []
        self._last_flush = 0.0
        self._last_pct: int | None = None
        self._last_msg = ""
        self._last_msg_time = 0.0

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def progress(self, done: int, total: int, message: str = "", force: bool = False) -> None:
        """Report progress; a new message within 0.1 s of the last is dropped unless ``force`` (a message that
        must be seen, such as the start of a long stretch with no other report)."""
        pct = int(100 * done / total) if total else 0
        now = time.monotonic()
        msg_changed = message != self._last_msg and (force or now - self._last_msg_time > 0.1)
        if pct != self._last_pct or msg_changed:
            self._last_pct, self._last_msg, self._last_msg_time = pct, message, now
            self._worker.progress.emit(int(done), int(total), message)

    def emit(self, item: Any, flush: bool = False) -> None:
        """Queue ``item`` for the UI; the batch goes out now if ``flush`` or if the rate allows."""
        self._pending.append(item)
        if flush or time.monotonic() - self._last_flush >= self._interval:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            self._last_flush = time.monotonic()
            self._worker.items.emit(batch)


class _Worker(QObject):
    progress = Signal(int, int, str)
    items = Signal(list)
    succeeded = Signal(object)
    failed = Signal(str, str)
    cancelled = Signal()
    finished = Signal()

    def __init__(self, fn: Callable[[TaskState], Any], stop_event: threading.Event, max_rate: float):
        super().__init__()
        self._fn = fn
        self._stop = stop_event
        self._max_rate = max_rate

    @Slot()
    def run(self) -> None:
        lower_this_threads_priority()
        state = TaskState(self, self._stop, self._max_rate)
        try:
            result = self._fn(state)
        except BaseException as exc:  # noqa: BLE001 - everything is reported, nothing escapes the thread
            state.flush()
            if _is_cancellation(exc):
                self.cancelled.emit()
            else:
                self.failed.emit(plain_message(exc), traceback.format_exc())
        else:
            state.flush()  # the last items always arrive, before the result
            self.succeeded.emit(result)
        finally:
            self.finished.emit()
            # Handed back to the UI thread, to be destroyed there (when the Task lets go of it): a
            # Python-made QObject destroyed on this thread calls into Python (for the GIL) while Qt
            # holds a signal-slot lock, and a UI thread that holds the GIL and waits for a lock of
            # that pool (any connect, e.g. QStatusBar.showMessage) deadlocks with it.
            app = QCoreApplication.instance()
            if app is not None:
                self.moveToThread(app.thread())


def _worker_nice(environ=os.environ, default: int = 2) -> int:
    """How many nice levels below the UI thread worker threads run (Linux): DDPM_STUDIO_WORKER_NICE
    (0-19; 0 = the UI's own priority, with a core left for the UI), else ``default``.

    2 (BENCHMARKS.md, "Training from the window against the CLI"): on an idle 2-core machine nice 0,
    2, 5 and 10 all trained at 0.92-0.96x the CLI with UI stalls of 20-35 ms; beside two busy
    programs in the same scheduling group, the window trained at 78, 50, 23 and 3 images/s
    respectively, and at nice 0 the UI stalled 70 ms. Nice 2 keeps both."""
    text = environ.get("DDPM_STUDIO_WORKER_NICE", "")
    return int(text) if text.strip().isdigit() and 0 <= int(text) <= 19 else default


BACKGROUND_NICE = _worker_nice()


def lower_this_threads_priority(setpriority=None, getpriority=None, tid: int | None = None) -> bool:
    """Raise the calling thread's nice value by :data:`BACKGROUND_NICE` (Linux: nice is per thread,
    and the OpenMP threads torch starts from this thread inherit it), so that whenever the UI thread
    has work it wins a core at once and the worker runs on every core the rest of the time. Elsewhere
    Qt's LowPriority is asked for, which Windows and macOS honour. True where the Linux priority was
    lowered (then torch may use every core: :func:`ddpm_studio.gui.jobs.threads_for_workers`).
    """
    if not sys.platform.startswith("linux"):
        app, thread = QCoreApplication.instance(), QThread.currentThread()
        if app is not None and thread is not None and thread is not app.thread():
            thread.setPriority(QThread.Priority.LowPriority)
        return False
    setpriority = setpriority or os.setpriority
    getpriority = getpriority or os.getpriority
    tid = threading.get_native_id() if tid is None else tid
    if BACKGROUND_NICE == 0:
        return False
    try:
        setpriority(os.PRIO_PROCESS, tid, min(19, getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE))
    except OSError:
        return False
    return True


def runs_below_the_ui() -> bool:
    """Whether the calling (worker) thread's nice value is above the UI thread's (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        main = threading.main_thread().native_id
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) > os.getpriority(os.PRIO_PROCESS, main)
    except (OSError, TypeError):
        return False


_RUNNING: set["Task"] = set()


def running_tasks() -> list["Task"]:
    """Tasks whose thread has not finished yet (for close handling and tests)."""
    return [t for t in _RUNNING if t.is_running()]


class Task(QObject):
    """UI-side handle of one job running on its own QThread.

    Signals (all delivered on the UI thread): ``progress(done, total, message)``,
    ``items(list)``, ``succeeded(result)``, ``failed(message, details)``, ``cancelled()``, and
    ``finished()`` last, once the thread has ended.
    """

    progress = Signal(int, int, str)
    items = Signal(list)
    succeeded = Signal(object)
    failed = Signal(str, str)
    cancelled = Signal()
    finished = Signal()

    def __init__(self, fn: Callable[[TaskState], Any], *, name: str = "task", max_rate: float = 30.0,
                 on_cancel: Callable[[], None] | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.name = name
        self._stop = threading.Event()
        self._on_cancel = on_cancel
        self._thread: QThread | None = QThread()
        self._thread.setObjectName(f"ddpm-studio-{name}")
        self._worker: _Worker | None = _Worker(fn, self._stop, max_rate)
        self._worker.moveToThread(self._thread)
        w, th = self._worker, self._thread
        th.started.connect(w.run)
        w.progress.connect(self.progress)
        w.items.connect(self.items)
        w.succeeded.connect(self.succeeded)
        w.failed.connect(self.failed)
        w.cancelled.connect(self.cancelled)
        # quit() is thread-safe; calling it directly from the worker's thread lets the thread end
        # even while the UI thread is blocked in wait() (a queued call would deadlock there).
        w.finished.connect(th.quit, Qt.ConnectionType.DirectConnection)
        th.finished.connect(self._on_thread_finished)
        self._started = False
        self._done = False

    def start(self) -> "Task":
        if self._started:
            raise RuntimeError(f"task {self.name} was already started")
        self._started = True
        _RUNNING.add(self)
        assert self._thread is not None
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the job to stop; safe to call from the UI thread at any time, any number of times."""
        self._stop.set()
        if self._on_cancel is not None:
            self._on_cancel()

    @property
    def cancel_requested(self) -> bool:
        return self._stop.is_set()

    def is_running(self) -> bool:
        if not self._started or self._done:
            return False
        th = self._thread
        return th is not None and not th.isFinished()

    def wait(self, msecs: int = 30000) -> bool:
        """Block until the thread has ended (used on close). True if it ended."""
        th = self._thread
        if th is None:
            return True
        return th.wait(msecs)

    @Slot()
    def _on_thread_finished(self) -> None:
        th = self._thread
        if th is not None:
            th.wait()
            th.deleteLater()
        if self._worker is not None:  # back on this thread (see _Worker.run); after what it has queued
            self._worker.deleteLater()
        self._thread = None
        self._done = True
        _RUNNING.discard(self)
        self.finished.emit()
