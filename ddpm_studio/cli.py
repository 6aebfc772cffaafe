"""Command line: ``ddpm-studio [train|sample|info|export]`` (no command opens the window)."""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpm-studio", description=__doc__)
    parser.add_subparsers(dest="command")
    return parser


def main(argv: list[str]) -> int:
    build_parser().print_help()
    return 0
