"""Image folders in, training tensors out. No Qt here; torch only in ``loader`` (imported lazily).

Public API (see docs/ARCHITECTURE.md, "data/"): ``load_images``, ``load_paths``, ``ImageSet``,
``SkippedFile``, ``DatasetError``, ``Cancelled``, ``ImageDataset``, ``make_loader``.
"""

from ddpm_studio.data.imageset import (Cancelled, DatasetError, ImageSet, SkippedFile, clear_cache,
                                       load_images, load_paths)

__all__ = ["Cancelled", "DatasetError", "ImageSet", "SkippedFile", "clear_cache", "load_images",
           "load_paths", "ImageDataset", "make_loader", "BatchLoader"]


def __getattr__(name: str):
    # The torch-backed parts load on first use, so importing ddpm_studio.data stays fast.
    if name in ("ImageDataset", "make_loader", "BatchLoader"):
        from ddpm_studio.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'ddpm_studio.data' has no attribute {name!r}")
