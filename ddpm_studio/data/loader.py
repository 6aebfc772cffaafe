"""Training batches from an ImageSet: uint8 held, float made per batch, order fixed by (seed, step).

The data order is an endless stream of epochs. Epoch ``e`` is a permutation of the N images,
with a flip coin per position, both drawn from ``numpy.random.default_rng([seed, e + epoch_offset])``.
Global step ``k`` takes stream positions ``k*B ... k*B + B - 1`` (B = the global batch size), so
the batch of step k depends only on (seed, k) (and the set and B): resuming at step k gives exactly
the batches an uninterrupted run would have seen, with no state to save.

Under DDP each rank takes a disjoint, contiguous slice of the global batch
(``numpy.array_split(range(B), world_size)[rank]``): together the ranks see exactly the global
batch a single process would see, so a run's data does not depend on how many processes ran it.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from ddpm_studio.data.imageset import ImageSet


def to_float(batch: np.ndarray) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)  # (B, C, H, W), strided view
    x = x.to(torch.float32, memory_format=torch.contiguous_format)  # a plain NCHW tensor
    return x.mul_(2.0 / 255.0).sub_(1.0)


class ImageDataset(Dataset):
    """A map-style torch Dataset over an ImageSet: item i -> float (C, H, W) in [-1, 1].

    With ``flip`` each item is mirrored left-right with probability 1/2 (torch's global RNG; for a
    reproducible order use :func:`make_loader`).
    """

    def __init__(self, imageset: ImageSet, flip: bool = False):
        self.images = imageset.images  # (N, H, W, C) uint8, shared, never copied
        self.flip = bool(flip)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.images[i]  # (H, W, C)
        if self.flip and torch.rand(()) < 0.5:
            img = img[:, ::-1]
        return to_float(img[None])[0]  # (C, H, W)


class BatchLoader:
    """Infinite, seedable, resumable batches; see the module docstring for the order."""

    def __init__(self, imageset: ImageSet, batch_size: int, *, flip: bool, seed: int, rank: int = 0,
                 world_size: int = 1, epoch_offset: int = 0):
        n = len(imageset)
        if n < 1:
            raise ValueError("the image set is empty")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1; got {batch_size!r}")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a whole number >= 1; got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be from 0 to {world_size - 1}; got {rank!r}")
        if batch_size < world_size:
            raise ValueError(f"batch_size ({batch_size}) must be at least the number of processes ({world_size})")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a whole number >= 0; got {seed!r}")
        if not isinstance(epoch_offset, int) or epoch_offset < 0:
            raise ValueError(f"epoch_offset must be a whole number >= 0; got {epoch_offset!r}")
        self.images = imageset.images
        self.n = n
        self.batch_size = batch_size  # global
        self.flip = bool(flip)
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.epoch_offset = epoch_offset
        part = np.array_split(np.arange(batch_size), world_size)[rank]
        self._lo, self._hi = int(part[0]), int(part[-1]) + 1  # this rank's slice of the global batch
        self.local_batch_size = self._hi - self._lo
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def steps_per_epoch(self) -> float:
        return self.n / self.batch_size

    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        got = self._epochs.get(e)
        if got is None:
            rng = np.random.default_rng([self.seed, e + self.epoch_offset])
            perm = rng.permutation(self.n)
            flips = rng.random(self.n) < 0.5
            if len(self._epochs) >= 4:
                self._epochs.pop(min(self._epochs))
            got = self._epochs[e] = (perm, flips)
        return got

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's (image indices, flip flags) for global step ``step`` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be >= 0; got {step}")
        pos = step * self.batch_size + np.arange(self._lo, self._hi, dtype=np.int64)  # stream positions
        epochs, offsets = np.divmod(pos, self.n)
        idx = np.empty(len(pos), dtype=np.int64)
        flips = np.zeros(len(pos), dtype=bool)
        for e in np.unique(epochs):
            m = epochs == e
            perm, f = self._epoch(int(e))
            idx[m] = perm[offsets[m]]
            flips[m] = f[offsets[m]]
        if not self.flip:
            flips[:] = False
        return idx, flips

    def batch(self, step: int) -> torch.Tensor:
        """This rank's batch for global step ``step``: (B_local, C, H, W) float32 in [-1, 1]."""
        idx, flips = self.indices(step)
        x = self.images[idx]  # (B, H, W, C) uint8 copy
        if flips.any():
            x[flips] = x[flips, :, ::-1]  # horizontal flip
        return to_float(x)

    def batches(self, start_step: int = 0) -> Iterator[torch.Tensor]:
        """Batches for steps start_step, start_step + 1, ... forever."""
        step = start_step
        while True:
            yield self.batch(step)
            step += 1

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches(0)


def make_loader(imageset: ImageSet, batch_size: int, *, flip: bool, seed: int, rank: int = 0,
                world_size: int = 1, epoch_offset: int = 0) -> BatchLoader:
    """The trainer's data: ``make_loader(...).batches(start_step)``; see :class:`BatchLoader`."""
    return BatchLoader(imageset, batch_size, flip=flip, seed=seed, rank=rank, world_size=world_size,
                       epoch_offset=epoch_offset)
