"""Work-arounds for known defects of the Qt bindings, applied once when ``ddpm_studio.gui`` is imported.

PySide6 / shiboken6 6.12.0 on CPython < 3.12 drops one reference to ``None`` on every call of a
void method (``QLabel.setText``, ``QWidget.update``, every ``QPainter`` setter, ...), and to
``True``/``False`` in some paths (pyqtgraph's axis painting). Measured here: 100 ``setText``
calls lower ``sys.getrefcount(None)`` by 100 on 6.12.0 and by 0 on 6.11.3. A live plot repaints
many times a second, so after some minutes of training the count reaches zero and the
interpreter aborts ("Fatal Python error: none_dealloc"). On CPython >= 3.12 these objects are
immortal and nothing happens. The real fix is a binding without the defect (the project excludes
6.12.0); until then, on the affected combination only, we give these three singletons a reference
count so large that the leak can never exhaust it.
"""

from __future__ import annotations

import ctypes
import sys

_AFFECTED = {"6.12.0"}
_CUSHION = 1 << 40  # ~10^12 leaked references: centuries of repainting
applied = False


def binding_version() -> str:
    try:
        import shiboken6

        return str(getattr(shiboken6, "__version__", ""))
    except ImportError:
        return ""


def protect_singletons() -> bool:
    """Apply the cushion when needed; returns whether it was applied (idempotent)."""
    global applied
    if applied or sys.version_info >= (3, 12) or binding_version() not in _AFFECTED:
        return applied
    if sys.implementation.name != "cpython":
        return False
    for obj in (None, True, False):
        ctypes.c_ssize_t.from_address(id(obj)).value += _CUSHION  # ob_refcnt is the first field
    applied = True
    return True
