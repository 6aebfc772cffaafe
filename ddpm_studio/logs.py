"""The application log: ``paths.logs_dir() / "ddpm-studio.log"`` (rotated at 1 MB, 3 kept).

The window writes every error it shows (with its technical details) and every uncaught exception
here, so a user can attach the file to a bug report. No Qt, no torch.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable

from ddpm_studio import paths

LOG_NAME = "ddpm-studio.log"
logger = logging.getLogger("ddpm_studio")


def log_path() -> Path:
    return paths.logs_dir() / LOG_NAME


def setup_logging(level: int = logging.INFO) -> Path | None:
    """Attach the rotating file handler once; returns the log file, or None if it cannot be written."""
    path = log_path()
    for h in logger.handlers:
        if isinstance(h, logging.handlers.RotatingFileHandler) and Path(h.baseFilename) == path:
            return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=1_000_000, backupCount=3, encoding="utf-8")
    except OSError:
        return None  # a read-only home must not stop the app
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    return path


def install_excepthooks(report: Callable[[str, str], None]) -> None:
    """Route uncaught exceptions (UI thread and other threads) to the log and to ``report``.

    ``report(message, details)`` shows plain words with the traceback as details; it is called
    for exceptions on the main thread only (other threads log; their workers report themselves).
    """

    def _hook(exc_type, exc, tb) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        details = "".join(traceback.format_exception(exc_type, exc, tb))
        logger.error("uncaught exception\n%s", details)
        try:
            report(f"Something went wrong: {exc}" if str(exc) else f"Something went wrong ({exc_type.__name__}).",
                   details)
        except Exception:  # the report itself failed: the log still has it
            sys.__excepthook__(exc_type, exc, tb)

    def _thread_hook(args: threading.ExceptHookArgs) -> None:
        details = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        logger.error("uncaught exception in thread %s\n%s", getattr(args.thread, "name", "?"), details)

    sys.excepthook = _hook
    threading.excepthook = _thread_hook
