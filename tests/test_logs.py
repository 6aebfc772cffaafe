"""The application log: errors shown to the user and uncaught exceptions end up in the log file."""

from __future__ import annotations

import sys
import threading

import pytest

from ddpm_studio import logs


@pytest.fixture(autouse=True)
def _detach_handlers():
    yield
    for h in list(logs.logger.handlers):
        logs.logger.removeHandler(h)
        h.close()


def _flush():
    for h in logs.logger.handlers:
        h.flush()


def test_log_file_lives_in_the_logs_folder_and_records_errors(tmp_path):
    path = logs.setup_logging()
    assert path is not None and path.parent.is_dir()
    assert logs.setup_logging() == path  # idempotent: one handler
    logs.logger.error("a plain message\nwith details")
    _flush()
    assert "a plain message" in path.read_text(encoding="utf-8")


def test_uncaught_exceptions_are_logged_and_reported(monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    path = logs.setup_logging()
    shown: list[tuple[str, str]] = []
    logs.install_excepthooks(lambda message, details: shown.append((message, details)))
    try:
        raise ValueError("the disk is full")
    except ValueError:
        sys.excepthook(*sys.exc_info())
    assert shown and shown[0][0] == "Something went wrong: the disk is full"
    assert "Traceback" in shown[0][1] and "ValueError" in shown[0][1]

    t = threading.Thread(target=lambda: 1 / 0, name="worker-x")
    t.start()
    t.join()
    _flush()
    text = path.read_text(encoding="utf-8")
    assert "the disk is full" in text and "worker-x" in text and "ZeroDivisionError" in text
    assert len(shown) == 1  # other threads are logged, not shown
