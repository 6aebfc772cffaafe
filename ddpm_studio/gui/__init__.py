"""The Qt layer (PySide6 + pyqtgraph). Nothing outside this package imports Qt."""

from ._compat import protect_singletons as _protect_singletons

_protect_singletons()
