"""The one cancellation exception, importable by every layer (stdlib only)."""

from __future__ import annotations


class Cancelled(Exception):
    """Long work stopped because ``should_stop()`` became true (loading, sampling, a GUI job)."""
