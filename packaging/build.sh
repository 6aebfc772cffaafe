#!/usr/bin/env bash
# Build the one-folder DDPM Studio bundle with PyInstaller (see packaging/README.md).
#
#   packaging/build.sh [--dist DIR] [--work DIR] [--smoke]
#
#   --dist DIR   where the bundle goes (default: dist/ in the repository) -> DIR/ddpm-studio/
#   --work DIR   PyInstaller's scratch folder (default: build/pyinstaller in the repository)
#   --smoke      afterwards, start the bundled app offscreen with --smoke and report its exit code
#
# Uses $PYTHON (default: python3, or python on Windows) which must have the app and PyInstaller
# installed, e.g. `pip install . pyinstaller`. Build on the platform you ship for: PyInstaller
# does not cross-compile.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIST="$ROOT/dist"
WORK="$ROOT/build/pyinstaller"
SMOKE=0

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dist) DIST="$2"; shift 2 ;;
        --work) WORK="$2"; shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
done

if [[ -z "${PYTHON:-}" ]]; then
    if command -v python3 >/dev/null 2>&1; then PYTHON=python3; else PYTHON=python; fi
fi
if ! "$PYTHON" -c "import PyInstaller" 2>/dev/null; then
    echo "build.sh: PyInstaller is not installed for $PYTHON; run: $PYTHON -m pip install pyinstaller" >&2
    exit 1
fi
if ! "$PYTHON" -c "import ddpm_studio, torch, PySide6, pyqtgraph" 2>/dev/null; then
    echo "build.sh: DDPM Studio or its dependencies are missing for $PYTHON; run: $PYTHON -m pip install ." >&2
    exit 1
fi

echo "Building with $("$PYTHON" -m PyInstaller --version 2>/dev/null | head -1) into $DIST/ddpm-studio"
start=$(date +%s)
"$PYTHON" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" "$ROOT/packaging/ddpm-studio.spec"
echo "Built in $(( $(date +%s) - start )) s: $(du -sh "$DIST/ddpm-studio" | cut -f1) in $DIST/ddpm-studio"

if [[ "$SMOKE" == 1 ]]; then
    exe="$DIST/ddpm-studio/ddpm-studio"
    [[ -x "$exe" ]] || exe="$exe.exe"
    set +e
    limit=()
    if command -v timeout >/dev/null 2>&1; then limit=(timeout 120); fi  # not on stock macOS
    QT_QPA_PLATFORM=offscreen "${limit[@]}" "$exe" --smoke
    rc=$?
    set -e
    echo "Smoke test (QT_QPA_PLATFORM=offscreen $exe --smoke): exit code $rc"
    exit "$rc"
fi
