"""Image folders in, training tensors out. No Qt here; torch only in ``loader`` (imported lazily).

Public API (see docs/ARCHITECTURE.md, "data/"): ``load_images``, ``load_paths``, ``ImageSet``,
``SkippedFile``, ``DatasetError``, ``Cancelled``, ``ImageDataset``, ``make_loader``.
"""

from __future__ import annotations

from ddpm_studio.data.builtin import load_builtin
from ddpm_studio.data.decode import DEFAULT_MAX_PIXELS
from ddpm_studio.data.imageset import (DatasetError, ImageSet, Progress, ShouldStop, SkippedFile, clear_cache,
                                       load_paths)
from ddpm_studio.errors import Cancelled

__all__ = ["Cancelled", "DatasetError", "ImageSet", "SkippedFile", "clear_cache", "load_images",
           "load_paths", "ImageDataset", "make_loader", "BatchLoader"]


def load_images(cfg, *, progress: Progress | None = None, should_stop: ShouldStop | None = None,
                use_cache: bool = True, workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSet:
    """The training set ``cfg`` (a DataConfig) describes: ``cfg.folder``, or the built-in set when it is None."""
    if cfg.folder is None or str(cfg.folder) == "":
        return load_builtin(cfg, progress=progress, should_stop=should_stop)
    return load_paths([cfg.folder], cfg, progress=progress, should_stop=should_stop,
                      use_cache=use_cache, workers=workers, max_pixels=max_pixels)


def __getattr__(name: str):
    # The torch-backed parts load on first use, so importing ddpm_studio.data stays fast.
    if name in ("ImageDataset", "make_loader", "BatchLoader"):
        from ddpm_studio.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'ddpm_studio.data' has no attribute {name!r}")
