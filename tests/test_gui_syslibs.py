"""Item 1 of issue 14: before Qt can abort, name the missing system libraries and the packages."""

from __future__ import annotations

import subprocess

import pytest

from ddpm_studio.gui import app, syslibs

LDD_OUTPUT = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibQt6XcbQpa.so.6 => /venv/PySide6/Qt/lib/libQt6XcbQpa.so.6 (0x00007f)
\tlibxcb-cursor.so.0 => /lib/x86_64-linux-gnu/libxcb-cursor.so.0 (0x00007f)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibxcb-icccm.so.4 => not found
"""


def test_ldd_not_found_lines_become_packages_and_one_apt_line(tmp_path, monkeypatch):
    plugin = tmp_path / "libqxcb.so"
    plugin.write_bytes(b"")
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, LDD_OUTPUT, "")

    monkeypatch.setattr(syslibs.shutil, "which", lambda name: "/usr/bin/ldd")
    missing = syslibs.missing_libraries(plugin, run=fake_run)
    assert calls == [["ldd", str(plugin)]]
    assert missing == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]
    msg = syslibs.install_message(missing)
    assert "\n" not in msg
    assert "sudo apt install libxcb-icccm4 libxcb-keysyms1" in msg
    assert "cursor" not in msg  # Qt's own message blames xcb-cursor0, which is installed


def test_without_ldd_each_library_is_loaded(monkeypatch):
    monkeypatch.setattr(syslibs.shutil, "which", lambda name: None)

    def fake_load(name):
        if name in ("libxkbcommon-x11.so.0", "libxcb-render-util.so.0"):
            raise OSError(f"{name}: cannot open shared object file")
        return object()

    missing = syslibs.missing_libraries(None, load=fake_load)
    assert missing == ["libxkbcommon-x11.so.0", "libxcb-render-util.so.0"]
    assert "sudo apt install libxkbcommon-x11-0 libxcb-render-util0" in syslibs.install_message(missing)
    assert syslibs.missing_libraries(None, load=lambda name: object()) == []


@pytest.mark.parametrize("soname, package", [
    ("libxcb-icccm.so.4", "libxcb-icccm4"), ("libxcb-keysyms.so.1", "libxcb-keysyms1"),
    ("libxcb-cursor.so.0", "libxcb-cursor0"), ("libxkbcommon-x11.so.0", "libxkbcommon-x11-0"),
    ("libxcb-image.so.0", "libxcb-image0"), ("libxcb-render-util.so.0", "libxcb-render-util0"),
    ("libxcb-shape.so.0", "libxcb-shape0"), ("libxcb-xinerama.so.0", "libxcb-xinerama0"),
    ("libX11-xcb.so.1", "libx11-xcb1"), ("libEGL.so.1", "libegl1"), ("libfontconfig.so.1", "libfontconfig1"),
])
def test_debian_package_names(soname, package):
    assert syslibs.debian_package(soname) == package


def test_only_the_xcb_platform_is_checked():
    assert syslibs.uses_xcb({}, [], "linux")
    assert syslibs.uses_xcb({"QT_QPA_PLATFORM": "xcb"}, [], "linux")
    assert not syslibs.uses_xcb({"QT_QPA_PLATFORM": "offscreen"}, [], "linux")
    assert not syslibs.uses_xcb({}, ["-platform", "offscreen"], "linux")
    assert not syslibs.uses_xcb({"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}, [], "linux")
    assert syslibs.uses_xcb({"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland",
                             "QT_QPA_PLATFORM": "xcb"}, [], "linux")
    assert not syslibs.uses_xcb({}, [], "darwin") and not syslibs.uses_xcb({}, [], "win32")


def test_the_app_prints_one_line_and_exits_1_before_creating_qt(monkeypatch, capsys):
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(syslibs.sys, "platform", "linux")
    monkeypatch.setattr(syslibs, "missing_libraries", lambda **kw: ["libxcb-icccm.so.4"])
    assert app.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sudo apt install libxcb-icccm4" in err and "Traceback" not in err
    monkeypatch.delenv("DISPLAY")
    assert app.main([]) == 1
    assert "no X display" in capsys.readouterr().err


def test_a_missing_library_of_qt_itself_is_one_line():
    e = ImportError("libEGL.so.1: cannot open shared object file: No such file or directory")
    msg = syslibs.import_failure_message(e)
    assert "\n" not in msg and "sudo apt install libegl1" in msg
