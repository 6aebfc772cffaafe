"""Placeholder package (issues 16/17 fill it); listed so the import contracts cover it."""
