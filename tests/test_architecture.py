"""The layering, checked: import-linter's contracts (pyproject.toml, [tool.importlinter]) and the
engine's outside imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter")
    proc = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "BROKEN" not in proc.stdout


def test_the_engine_imports_only_torch_numpy_and_the_standard_library():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("ddpm_studio", include_external_packages=True, exclude_type_checking_imports=True)
    outside = set()
    for module in graph.find_descendants("ddpm_studio.engine") | {"ddpm_studio.engine"}:
        for imported in graph.find_modules_directly_imported_by(module):
            top = imported.split(".")[0]
            if not imported.startswith("ddpm_studio.engine") and top not in sys.stdlib_module_names:
                outside.add(imported)
    assert outside <= {"torch", "numpy"}, sorted(outside)


def test_config_imports_without_torch_or_qt():
    code = ("import sys; import ddpm_studio.config, ddpm_studio.paths, ddpm_studio.engine.choices; "
            "bad = [m for m in ('torch', 'numpy', 'PySide6', 'pyqtgraph') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _package_modules():
    return sorted((ROOT / "ddpm_studio").rglob("*.py"))


def test_no_function_over_60_lines():
    import ast

    long = []
    for path in _package_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


def test_a_module_over_500_lines_says_why_at_its_top():
    import ast

    unexplained = []
    for path in _package_modules():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > 500:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "Length (over 500 lines" not in doc:
                unexplained.append(str(path.relative_to(ROOT)))
    assert unexplained == []
