#!/usr/bin/env bash
# Put DDPM Studio in the Linux application menu: the .desktop entry, the icons (hicolor theme) and
# the AppStream metainfo, optionally with a PyInstaller bundle.
#
#   packaging/linux/install.sh [--prefix DIR] [--bundle DIR] [--uninstall]
#
#   --prefix DIR   install under DIR (default: ~/.local; use /usr/local as root for all users)
#   --bundle DIR   also copy a built bundle (e.g. dist/ddpm-studio) to DIR/lib/ddpm-studio and
#                  link DIR/bin/ddpm-studio to it; without it, the menu entry starts the
#                  `ddpm-studio` that pip installed, which must be on PATH
#   --uninstall    remove what an earlier run installed under the prefix
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
ICONS="$ROOT/resources/icons"
PREFIX="$HOME/.local"
BUNDLE=""
UNINSTALL=0
SIZES="16 24 32 48 64 128 256 512"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --bundle) BUNDLE="$2"; shift 2 ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
done

SHARE="$PREFIX/share"
if [[ "$UNINSTALL" == 1 ]]; then
    rm -f "$SHARE/applications/ddpm-studio.desktop" "$SHARE/metainfo/ddpm-studio.metainfo.xml" \
          "$SHARE/icons/hicolor/scalable/apps/ddpm-studio.svg"
    for s in $SIZES; do rm -f "$SHARE/icons/hicolor/${s}x${s}/apps/ddpm-studio.png"; done
    if [[ -L "$PREFIX/bin/ddpm-studio" ]]; then rm -f "$PREFIX/bin/ddpm-studio"; fi
    rm -rf "$PREFIX/lib/ddpm-studio"
    echo "Removed DDPM Studio from $PREFIX"
    exit 0
fi

if [[ -n "$BUNDLE" ]]; then
    if [[ ! -x "$BUNDLE/ddpm-studio" ]]; then
        echo "install.sh: --bundle $BUNDLE: no executable ddpm-studio in it (build it with packaging/build.sh)" >&2
        exit 1
    fi
    rm -rf "$PREFIX/lib/ddpm-studio"
    mkdir -p "$PREFIX/lib" "$PREFIX/bin"
    cp -a "$BUNDLE" "$PREFIX/lib/ddpm-studio"
    ln -sfn "$PREFIX/lib/ddpm-studio/ddpm-studio" "$PREFIX/bin/ddpm-studio"
fi

install -D -m 644 "$HERE/ddpm-studio.desktop" "$SHARE/applications/ddpm-studio.desktop"
install -D -m 644 "$HERE/ddpm-studio.metainfo.xml" "$SHARE/metainfo/ddpm-studio.metainfo.xml"
install -D -m 644 "$ICONS/ddpm-studio.svg" "$SHARE/icons/hicolor/scalable/apps/ddpm-studio.svg"
for s in $SIZES; do
    install -D -m 644 "$ICONS/ddpm-studio-$s.png" "$SHARE/icons/hicolor/${s}x${s}/apps/ddpm-studio.png"
done

# Refresh the menu and icon caches where the tools exist (harmless when they do not).
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$SHARE/applications" || true
command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q -t "$SHARE/icons/hicolor" || true

echo "Installed the DDPM Studio menu entry, icons and metainfo under $SHARE"
if ! command -v ddpm-studio >/dev/null 2>&1; then
    echo "Note: ddpm-studio is not on PATH yet; the menu entry runs 'ddpm-studio'." \
         "Add $PREFIX/bin to PATH (or pip install the app)." >&2
fi
