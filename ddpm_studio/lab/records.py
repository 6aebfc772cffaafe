"""What the lab's jobs hand to the window: plain records of numpy images (no tensors but a chain's
recorded steps, no Qt). The window's job functions (``gui/lab_jobs.py``) make them and
:class:`.session.LabSession` keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import SamplingConfig


@dataclass
class LabModelReady:
    loaded: Any  # artifacts.loaded.LoadedModel


@dataclass
class BoardUpdate:
    board: np.ndarray  # (H, W, 3) uint8, the rows so far
    rows: list[list[str]]  # each row's label lines, so far


@dataclass
class LabFrame:
    index: int
    t: int
    total: int
    views: tuple[np.ndarray, np.ndarray, np.ndarray]  # x_t, x̂0, ε̂ (or v̂) grids, (H, W, C) uint8


@dataclass
class LabChain:
    steps: dict[int, Any]  # index -> lab.chain.ChainStep (tensors), the recorded ones
    final: np.ndarray  # (H, W, C) uint8 grid of x_0
    noise_label: str
    sampling: SamplingConfig
    stride: int
    images: np.ndarray | None = None  # (N, H, W, C) uint8, the chain's x_0 (usable as interpolation images)


@dataclass
class BranchRow:
    tiles: list[np.ndarray]  # x_t, x̂0 at the branch point, then the branches' x_0
    captions: list[str]
    label: list[str]
    board: np.ndarray | None = None  # every strip so far, this one last, as one board


@dataclass
class InterpFrame:
    index: int
    weight: float
    image: np.ndarray  # (H, W, C) uint8


@dataclass
class InterpResult:
    frames: list[InterpFrame] = field(default_factory=list)
    title: str = ""
    strip: np.ndarray | None = None
    recipe: Any = None  # lab.interpolate.WalkRecipe: the walk, for a frame at any other weight


@dataclass
class ExactFrame:
    """The frame at one slider position's weight, computed on its own (not one of the strip's)."""

    position: int  # the weight slider's position
    weight: float
    image: np.ndarray  # (H, W, C) uint8
    walk_id: int  # which interpolation it belongs to (a result for an older walk is dropped)
