"""Test-wide setup: Qt offscreen, few threads, deterministic torch."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Tiny models gain nothing from intra-op threads, and the GUI tests run a worker thread beside the
# UI thread: one torch thread per process keeps 2-core CI machines from oversubscribing.
# (Set before torch is imported; subprocesses started by tests inherit it.)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Keep runs from the tests out of the user's real cache and settings.
os.environ.setdefault("DDPM_STUDIO_TEST", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Point the cache, settings and runs folders at a per-test temporary folder."""
    base = tmp_path_factory.mktemp("userdirs")
    monkeypatch.setenv("DDPM_STUDIO_CACHE_DIR", str(base / "cache"))
    monkeypatch.setenv("DDPM_STUDIO_CONFIG_DIR", str(base / "config"))
    monkeypatch.setenv("DDPM_STUDIO_DATA_DIR", str(base / "data"))
    yield


@pytest.fixture
def window(qtbot):
    """The real main window, shown offscreen; closed at the end with no worker thread left running."""
    from ddpm_studio.gui.main_window import MainWindow
    from ddpm_studio.gui.workers import running_tasks

    w = MainWindow(load_on_start=False, probe_device=False)
    qtbot.addWidget(w)
    w.show()
    yield w
    w.confirm = lambda question: True
    w.close()
    assert running_tasks() == []
