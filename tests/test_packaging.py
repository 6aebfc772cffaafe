"""Packaging: the PyInstaller spec, the Linux desktop files and the icons name files that exist and
are well formed, and the installed ``ddpm-studio`` script opens the window offscreen and quits.

Nothing heavy is built here; packaging/build.sh builds the real bundle (see packaging/README.md).
"""

from __future__ import annotations

import ast
import configparser
import os
import shutil
import subprocess
import sys
import sysconfig
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
SPEC = PACKAGING / "ddpm-studio.spec"
DESKTOP = PACKAGING / "linux" / "ddpm-studio.desktop"
METAINFO = PACKAGING / "linux" / "ddpm-studio.metainfo.xml"
ICONS = ROOT / "resources" / "icons"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _spec_constants() -> dict[str, object]:
    """The spec's top-level literal assignments (ENTRY_POINT, RESOURCES, ICONS, …)."""
    tree = ast.parse(SPEC.read_text(encoding="utf-8"), filename=str(SPEC))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass  # not a literal (ROOT, computed lists)
    return found


def _run_spec(monkeypatch) -> dict[str, list]:
    """Execute the spec with PyInstaller's build classes replaced by recorders; return their calls."""
    calls: dict[str, list] = {"Analysis": [], "PYZ": [], "EXE": [], "COLLECT": [], "BUNDLE": []}

    class Analysis:
        def __init__(self, scripts, **kw):
            calls["Analysis"].append({"scripts": scripts, "instance": self, **kw})
            # What PyInstaller's torch hook adds: the spec must drop the tests and headers only.
            self.datas = list(kw["datas"]) + [("torch/test/test_api", "/x", "DATA"),
                                              ("torch/include/ATen/ATen.h", "/x", "DATA"),
                                              ("torch/_C/__init__.pyi", "/x", "DATA"),
                                              ("torch/utils/model_dump/code.js", "/x", "DATA")]
            self.binaries = [("torch/lib/libtorch_cpu.so", "/x", "BINARY"),
                             ("torch/lib/libtorchbind_test.so", "/x", "BINARY"),
                             ("torch/bin/torch_shm_manager", "/x", "BINARY"),
                             ("torch/bin/test_jit", "/x", "BINARY")]
            self.pure, self.scripts = [], []

    def recorder(name):
        def record(*args, **kw):
            calls[name].append({"args": args, **kw})
            return object()
        return record

    hooks = types.ModuleType("PyInstaller.utils.hooks")
    hooks.collect_submodules = lambda package, **kw: [package]
    for name in ("PyInstaller", "PyInstaller.utils"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "PyInstaller.utils.hooks", hooks)
    namespace = {"SPECPATH": str(PACKAGING), "__name__": "__main__", "__file__": str(SPEC),
                 "Analysis": Analysis, "PYZ": recorder("PYZ"), "EXE": recorder("EXE"),
                 "COLLECT": recorder("COLLECT"), "BUNDLE": recorder("BUNDLE")}
    exec(compile(SPEC.read_text(encoding="utf-8"), str(SPEC), "exec"), namespace)
    return calls


def test_spec_names_only_existing_files():
    consts = _spec_constants()
    assert (ROOT / consts["ENTRY_POINT"]).is_file(), consts["ENTRY_POINT"]
    for src, _dest in consts["RESOURCES"]:
        assert (ROOT / src).is_dir(), src
    for platform, icon in consts["ICONS"].items():
        assert (ROOT / icon).is_file(), f"{platform} icon {icon} is missing"
    # Any other repository path written in the spec must exist too.
    strings = [n.value for n in ast.walk(ast.parse(SPEC.read_text(encoding="utf-8")))
               if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    repo_paths = [s for s in strings if s.startswith(("resources/", "packaging/", "ddpm_studio/"))
                  and not s.startswith("ddpm_studio/resources")]  # bundle-side destination
    assert repo_paths, "expected the spec to name repository files"
    for rel in repo_paths:
        assert (ROOT / rel).exists(), f"the spec names {rel}, which does not exist"


def test_spec_bundles_resources_where_paths_looks(monkeypatch):
    calls = _run_spec(monkeypatch)
    (analysis,) = calls["Analysis"]
    assert analysis["scripts"] == [str(ROOT / "ddpm_studio" / "__main__.py")]
    assert {"safetensors.torch", "tqdm.auto", "PySide6.QtOpenGL"} <= set(analysis["hiddenimports"])
    assert "tkinter" in analysis["excludes"]
    # paths.resources_dir() falls back to <_MEIPASS>/ddpm_studio/resources in a frozen app.
    datas = {(Path(src).resolve(), dest.replace("\\", "/")) for src, dest in analysis["datas"]}
    for size in ICON_SIZES:
        assert (ICONS / f"ddpm-studio-{size}.png", "ddpm_studio/resources/icons") in datas
    assert (ICONS / "ddpm-studio.svg", "ddpm_studio/resources/icons") in datas
    assert (ROOT / "resources" / "__init__.py", "ddpm_studio/resources") in datas
    assert not any("__pycache__" in str(src) for src, _ in datas)
    # Every file under resources/ is carried (built-in dataset, screenshots, …).
    shipped = {p.resolve() for p in (ROOT / "resources").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert shipped == {src for src, _ in datas}
    kept = {entry[0] for entry in analysis["instance"].datas + analysis["instance"].binaries}
    assert {"torch/lib/libtorch_cpu.so", "torch/bin/torch_shm_manager", "torch/utils/model_dump/code.js"} <= kept
    assert not kept & {"torch/test/test_api", "torch/include/ATen/ATen.h", "torch/_C/__init__.pyi",
                       "torch/lib/libtorchbind_test.so", "torch/bin/test_jit"}
    exe = calls["EXE"][0]
    assert exe["name"] == "ddpm-studio" and Path(exe["icon"]).is_file()
    assert len(calls["COLLECT"]) == 1 and calls["COLLECT"][0]["name"] == "ddpm-studio"


def test_pyproject_lists_every_package():
    """A package missing from [tool.setuptools] packages is silently left out of wheels."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ddpm_studio").rglob("__init__.py")
             if "__pycache__" not in p.parts}
    assert found - listed == set(), f"add to pyproject.toml: {sorted(found - listed)}"
    assert "ddpm_studio.resources" in listed
    assert _pyproject()["tool"]["setuptools"]["package-dir"]["ddpm_studio.resources"] == "resources"


def test_desktop_entry():
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(DESKTOP, encoding="utf-8")
    entry = parser["Desktop Entry"]
    assert entry["Type"] == "Application"
    assert entry["Name"] == "DDPM Studio"
    scripts = _pyproject()["project"]["scripts"]
    assert entry["Exec"].split()[0] in scripts, "Exec must be the installed console script"
    assert entry["Icon"] == "ddpm-studio"
    assert (ICONS / f"{entry['Icon']}.svg").is_file()
    assert {"Graphics", "Science"} <= set(filter(None, entry["Categories"].split(";")))
    assert entry["Categories"].endswith(";") and entry["Keywords"].endswith(";")
    assert entry["Terminal"] == "false"
    if shutil.which("desktop-file-validate"):
        result = subprocess.run(["desktop-file-validate", str(DESKTOP)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_metainfo():
    root = ET.parse(METAINFO).getroot()
    assert root.tag == "component" and root.get("type") == "desktop-application"
    project = _pyproject()["project"]
    text = {tag: (root.findtext(tag) or "").strip() for tag in
            ("id", "name", "summary", "metadata_license", "project_license")}
    assert all(text.values()), f"empty or missing: {[k for k, v in text.items() if not v]}"
    assert text["project_license"] == project["license"]["text"]
    assert root.find("description/p") is not None
    launchable = root.find("launchable[@type='desktop-id']")
    assert launchable is not None and launchable.text == DESKTOP.name
    assert root.findtext("provides/binary") in project["scripts"]
    assert root.findtext("icon[@type='stock']") == "ddpm-studio"
    versions = [r.get("version") for r in root.iterfind("releases/release")]
    assert project["version"] in versions, "add a <release> for the current version"
    consts = _spec_constants()
    assert consts["BUNDLE_ID"] == text["id"]
    if shutil.which("appstreamcli"):
        # The id is not reverse-DNS until the project has a domain (see packaging/README.md).
        result = subprocess.run(["appstreamcli", "validate", "--no-net",
                                 "--override=cid-desktopapp-is-not-rdns=info", str(METAINFO)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_icons_exist_at_every_size():
    for size in ICON_SIZES:
        path = ICONS / f"ddpm-studio-{size}.png"
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (size, size), path
            rgba = im.convert("RGBA")
        assert rgba.getpixel((0, 0))[3] < 64, f"{path.name}: the rounded corner should be transparent"
        assert rgba.getpixel((size // 2, size // 2))[3] == 255, f"{path.name}: the centre should be opaque"
    with Image.open(ICONS / "ddpm-studio.ico") as ico:
        assert {(16, 16), (32, 32), (48, 48), (256, 256)} <= set(ico.info["sizes"])
    svg = ET.parse(ICONS / "ddpm-studio.svg").getroot()
    assert svg.tag.endswith("svg") and svg.get("viewBox") == "0 0 256 256"


def test_pngs_are_renders_of_the_svg(qapp, tmp_path):
    """The PNGs were rendered from the current SVG (re-run packaging/make_icons.py after editing it)."""
    sys.path.insert(0, str(PACKAGING))
    try:
        import make_icons
    finally:
        sys.path.remove(str(PACKAGING))
    assert (ICONS / "ddpm-studio.svg").read_text(encoding="utf-8") == make_icons.make_svg()
    for size in (16, 64):
        fresh = tmp_path / f"{size}.png"
        make_icons.render_png(ICONS / "ddpm-studio.svg", size, fresh)
        with Image.open(fresh) as a, Image.open(ICONS / f"ddpm-studio-{size}.png") as b:
            pa, pb = a.convert("RGBA").tobytes(), b.convert("RGBA").tobytes()
        assert max(abs(x - y) for x, y in zip(pa, pb)) <= 2, f"ddpm-studio-{size}.png is stale"


def test_build_script_is_valid_bash():
    script = PACKAGING / "build.sh"
    assert os.access(script, os.X_OK), "packaging/build.sh must be executable"
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not available")
    result = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    help_text = subprocess.run([bash, str(script), "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--dist" in help_text.stdout
    bad = subprocess.run([bash, str(script), "--no-such-flag"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--no-such-flag" in bad.stderr


def test_linux_install_script_places_menu_entry_icons_and_bundle(tmp_path):
    bash = shutil.which("bash")
    if bash is None or sys.platform == "win32":
        pytest.skip("needs bash on a Unix-like system")
    script = PACKAGING / "linux" / "install.sh"
    assert os.access(script, os.X_OK), "packaging/linux/install.sh must be executable"
    bundle = tmp_path / "dist" / "ddpm-studio"
    (bundle / "_internal").mkdir(parents=True)
    exe = bundle / "ddpm-studio"
    exe.write_text("#!/bin/sh\necho bundled\n")
    exe.chmod(0o755)
    prefix = tmp_path / "prefix"
    env = dict(os.environ, HOME=str(tmp_path))
    result = subprocess.run([bash, str(script), "--prefix", str(prefix), "--bundle", str(bundle)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    share = prefix / "share"
    assert (share / "applications" / "ddpm-studio.desktop").read_bytes() == DESKTOP.read_bytes()
    assert (share / "metainfo" / "ddpm-studio.metainfo.xml").is_file()
    assert (share / "icons" / "hicolor" / "scalable" / "apps" / "ddpm-studio.svg").is_file()
    for size in ICON_SIZES:
        with Image.open(share / "icons" / "hicolor" / f"{size}x{size}" / "apps" / "ddpm-studio.png") as im:
            assert im.size == (size, size)
    launcher = prefix / "bin" / "ddpm-studio"
    assert subprocess.run([str(launcher)], capture_output=True, text=True).stdout == "bundled\n"

    missing = subprocess.run([bash, str(script), "--prefix", str(prefix), "--bundle", str(tmp_path / "nope")],
                             capture_output=True, text=True, env=env)
    assert missing.returncode == 1 and "no executable ddpm-studio" in missing.stderr

    removed = subprocess.run([bash, str(script), "--prefix", str(prefix), "--uninstall"],
                             capture_output=True, text=True, env=env)
    assert removed.returncode == 0, removed.stderr
    assert not launcher.exists() and not (share / "applications" / "ddpm-studio.desktop").exists()
    assert not (prefix / "lib" / "ddpm-studio").exists()


def _console_script() -> Path | None:
    name = "ddpm-studio.exe" if sys.platform == "win32" else "ddpm-studio"
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.is_file():
        return candidate
    found = shutil.which("ddpm-studio")
    return Path(found) if found else None


def _smoke_env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, QT_QPA_PLATFORM="offscreen",
                DDPM_STUDIO_CACHE_DIR=str(tmp_path / "cache"),
                DDPM_STUDIO_CONFIG_DIR=str(tmp_path / "config"),
                DDPM_STUDIO_DATA_DIR=str(tmp_path / "data"))


def _assert_smoke_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert "smoke: window opened" in result.stdout, result.stdout


def test_gui_smoke_opens_window_offscreen(tmp_path):
    """What the bundle runs with no command: the GUI's own --smoke path, in a fresh process."""
    result = subprocess.run([sys.executable, "-m", "ddpm_studio.gui.app", "--smoke"], env=_smoke_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    _assert_smoke_ok(result)


def test_console_script_smoke_opens_window_offscreen(tmp_path):
    script = _console_script()
    if script is None:
        pytest.skip("the ddpm-studio console script is not installed (pip install -e .)")
    result = subprocess.run([str(script), "--smoke"], env=_smoke_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    _assert_smoke_ok(result)
