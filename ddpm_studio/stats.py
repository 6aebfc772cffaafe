"""Statistics that more than one service needs (torch and numpy only): the Fréchet distance.

Outside the layers, like config and paths: evaluation scores samples with it, and the sampling
service's step tuning compares a chain's images with the training images.
"""

from __future__ import annotations

import numpy as np
import torch


def as_float64(a) -> torch.Tensor:
    """A numpy array or tensor as a float64 tensor (a tensor is used as it is)."""
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """|mu_x - mu_y|^2 + tr(S_x + S_y - 2 (S_x^1/2 S_y S_x^1/2)^1/2), eq. (6) of Heusel et al. 2017.

    The matrix square roots come from symmetric eigendecompositions (stable when a covariance is
    singular, as it is when N < d).
    """
    tx, ty = as_float64(x), as_float64(y)
    mu_x, mu_y = tx.mean(0), ty.mean(0)
    s_x, s_y = torch.cov(tx.T), torch.cov(ty.T)  # (d, d)
    w, v = torch.linalg.eigh(s_x)
    root_x = (v * w.clamp(min=0).sqrt()) @ v.T
    inner = torch.linalg.eigvalsh(root_x @ s_y @ root_x)
    value = ((mu_x - mu_y) ** 2).sum() + s_x.trace() + s_y.trace() - 2.0 * inner.clamp(min=0).sqrt().sum()
    return float(max(float(value), 0.0))
