"""Are the samples copies? The nearest training images of each sample, against a typical distance.

For every sample the nearest training images by pixel distance (RMSE on a 0-1 scale over the
full-resolution image) and the nearest by feature distance (the fixed conv net of
:mod:`.features`). Each distance is divided by the *typical* real-to-real nearest distance: the
median, over up to ``TYPICAL_PROBE`` training images, of the distance from one training image to
its nearest other training image (exact twins within the set left out). A sample closer to a
training image than a third of that (``NEAR_COPY_RATIO``) is counted as a near-copy: the model
reproduces that image more faithfully than any two pictures of the set resemble each other (the
rule of thumb of Somepalli et al. 2023 and Carlini et al. 2023, who call a sample memorised when it
is much closer to one training image than to the rest).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import features as feats
from .metrics import pairwise_distances

NEAR_COPY_RATIO = 1.0 / 3.0
TYPICAL_PROBE = 300
CHUNK = 2048  # training images per distance block


@dataclass
class SampleMatch:
    index: int  # the sample's row
    pixel_neighbours: list[int]  # training rows, nearest first
    pixel_distances: list[float]  # RMSE, 0-1 scale
    feature_neighbour: int
    feature_distance: float
    pixel_ratio: float  # nearest pixel distance / typical real-to-real
    feature_ratio: float

    @property
    def near_copy(self) -> bool:
        return self.pixel_ratio < NEAR_COPY_RATIO


@dataclass
class NearestReport:
    matches: list[SampleMatch]
    typical_pixel: float
    typical_feature: float
    train_paths: list[str] = field(default_factory=list)
    sample_names: list[str] = field(default_factory=list)

    @property
    def near_copies(self) -> list[SampleMatch]:
        return [m for m in self.matches if m.near_copy]

    def summary(self) -> str:
        n, c = len(self.matches), len(self.near_copies)
        verb = "is a near-copy" if c == 1 else "are near-copies"
        return (f"{c} of {n} samples {verb} of training images (nearest pixel distance under "
                f"{NEAR_COPY_RATIO:.2f} x the typical {self.typical_pixel:.3f} between training images)")

    def to_dict(self) -> dict:
        def name(rows, i):
            return rows[i] if i < len(rows) else str(i)

        return {
            "summary": self.summary(), "typical_pixel": self.typical_pixel, "typical_feature": self.typical_feature,
            "near_copy_ratio": NEAR_COPY_RATIO, "near_copies": len(self.near_copies),
            "samples": [{"sample": name(self.sample_names, m.index), "near_copy": m.near_copy,
                         "pixel_ratio": m.pixel_ratio, "feature_ratio": m.feature_ratio,
                         "nearest_pixel": [name(self.train_paths, j) for j in m.pixel_neighbours],
                         "pixel_distances": m.pixel_distances,
                         "nearest_feature": name(self.train_paths, m.feature_neighbour),
                         "feature_distance": m.feature_distance} for m in self.matches],
        }


SHORTLIST = 32  # candidates per sample from the coarse search, measured exactly at full resolution


def _coarse(images: np.ndarray):
    """Images area-averaged to at most 8 x 8 per channel (a float32 tensor (N, d))."""
    import torch

    return torch.from_numpy(feats.pixel_features(images).astype(np.float32))


def _nearest_pixels(samples: np.ndarray, train: np.ndarray, k: int, should_stop=None,
                    coarse_train=None) -> tuple[np.ndarray, np.ndarray]:
    """Rows (S, k) of the k nearest training images by RMSE, and their RMSEs (S, k).

    Two stages: the SHORTLIST nearest by the 8 x 8 averaged images (a lower bound of the full-size
    RMSE, up to the averaging: two images equal at full size are equal there too), then the exact
    RMSE of those candidates at full resolution. A copy is always found; a neighbour outside the
    shortlist could only be one whose averaged image is farther than 32 others.
    """
    import torch

    s = _coarse(samples)  # (S, d)
    coarse_train = _coarse(train) if coarse_train is None else coarse_train  # (N, d)
    s2 = (s * s).sum(1, keepdim=True)  # (S, 1)
    kk = min(len(train), max(k, SHORTLIST))
    best_d = torch.full((len(s), 0), float("inf"))
    best_i = torch.zeros((len(s), 0), dtype=torch.long)
    for start in range(0, len(train), CHUNK * 4):
        if should_stop is not None and should_stop():
            from ddpm_studio.data import Cancelled

            raise Cancelled("stopped")
        t = coarse_train[start:start + CHUNK * 4]  # (c, d)
        d2 = s2 + (t * t).sum(1)[None, :] - 2.0 * (s @ t.T)  # (S, c) squared distances
        cand_d = torch.cat([best_d, d2], 1)
        cand_i = torch.cat([best_i, torch.arange(start, start + len(t)).expand(len(s), -1)], 1)
        best_d, pos = cand_d.topk(min(kk, cand_d.shape[1]), dim=1, largest=False)
        best_i = cand_i.gather(1, pos)
    cand = best_i.numpy()  # (S, kk)
    exact = np.empty(cand.shape, np.float64)
    flat_s = np.asarray(samples, np.float32).reshape(len(samples), -1)  # (S, D)
    for i in range(len(samples)):
        diff = (train[cand[i]].reshape(cand.shape[1], -1).astype(np.float32) - flat_s[i]) / 255.0  # (kk, D)
        exact[i] = np.sqrt((diff.astype(np.float64) ** 2).mean(1))
    order = np.argsort(exact, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand, order, 1), np.take_along_axis(exact, order, 1)


def typical_distances(train: np.ndarray, train_features: np.ndarray, seed: int = 0,
                      coarse_train=None) -> tuple[float, float]:
    """Median nearest-other-training-image distance (pixel RMSE, feature), over up to TYPICAL_PROBE images."""
    n = len(train)
    if n < 2:
        raise ValueError("the memorisation check needs at least 2 training images")
    probe = np.random.default_rng(seed).permutation(n)[:TYPICAL_PROBE]
    # The nearest *distinct* image: the image itself and exact twins inside the training set
    # (distance 0) say nothing about how far apart distinct images are.
    _, dist = _nearest_pixels(train[probe], train, min(n, 8), coarse_train=coarse_train)  # (P, k), nearest first
    dist = np.where(dist > 1e-9, dist, np.inf)
    pix = dist.min(1)
    fd = pairwise_distances(train_features[probe], train_features)  # (P, N)
    feat = np.where(fd > 1e-9, fd, np.inf).min(1)
    pix, feat = pix[np.isfinite(pix)], feat[np.isfinite(feat)]
    if len(pix) == 0:
        raise ValueError("every training image has an exact twin in the set; "
                         "remove the duplicates (ddpm-studio doctor)")
    return float(np.median(pix)), float(np.median(feat)) if len(feat) else 1.0


def nearest_training_images(samples: np.ndarray, train: np.ndarray, *, k: int = 3, train_paths=None,
                            sample_names=None, should_stop=None) -> NearestReport:
    """For each sample (uint8 (S, H, W, C)) its nearest training images (uint8 (N, H, W, C))."""
    samples, train = np.asarray(samples), np.asarray(train)
    if samples.shape[1:] != train.shape[1:]:
        raise ValueError(f"the samples are {samples.shape[1:]} (H, W, C) but the training images are {train.shape[1:]}")
    if len(samples) == 0:
        raise ValueError("no samples to check")
    f_train = feats.conv_features(train, should_stop=should_stop)
    f_train, f_s = feats.standardize(f_train, feats.conv_features(samples))
    coarse = _coarse(train)
    typ_pix, typ_feat = typical_distances(train, f_train, coarse_train=coarse)
    idx, dist = _nearest_pixels(samples, train, k, should_stop, coarse_train=coarse)
    fd = pairwise_distances(f_s, f_train)  # (S, N)
    fi = fd.argmin(1)
    matches = [SampleMatch(index=i, pixel_neighbours=[int(j) for j in idx[i]],
                           pixel_distances=[float(v) for v in dist[i]],
                           feature_neighbour=int(fi[i]), feature_distance=float(fd[i, fi[i]]),
                           pixel_ratio=float(dist[i, 0] / max(typ_pix, 1e-12)),
                           feature_ratio=float(fd[i, fi[i]] / max(typ_feat, 1e-12)))
               for i in range(len(samples))]
    return NearestReport(matches, typ_pix, typ_feat, list(train_paths or []), list(sample_names or []))
