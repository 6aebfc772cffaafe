"""Sample-quality figures against the training images, each beside its real-vs-real floor.

- **KID** (Bińkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic
  polynomial kernel ``k(x, y) = (x·y / d + 1)^3``, unbiased at any N (so usable at N = 256), with a
  95 % bootstrap interval (percentiles of resampled estimates; a resampled pair that is the same
  image twice is left out of the within-set means, so the resamples stay unbiased; at most
  BOOTSTRAP_MAX draws per side).
- **Fréchet distance** (Heusel et al. 2017) on the same features: biased by N, so it is *comparable
  only at the same N* (the table says so).
- **Precision / recall** (Kynkäänniemi et al. 2019) and **density / coverage** (Naeem et al. 2020),
  k = 5 nearest neighbours.

Features are the fixed random conv net of :mod:`.features`, standardised by the reference set.
The **floor** is what real images score: a held-out part of the training images (as many as the
samples, at most half the set) against the rest, the *reference*, which the samples are also scored
against. A model at its floor is as close to the data as the data is to itself.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ddpm_studio.stats import as_float64, frechet_distance

from . import features as feats

EVAL_SEED = 1234  # the noise of the evaluation samples (fixed: checkpoints are compared on the same draws)
MIN_REAL = 10  # fewer training images than this cannot give a floor
MAX_REFERENCE = 2000  # reference images used at most (a random subset, seeded)
BOOTSTRAP = 200
BOOTSTRAP_MAX = 1000  # images per side in one bootstrap draw at most
NEIGHBOURS = 5
DEFAULT_NUM = 256
DEFAULT_NUM_GPU = 1024


# -- the estimators ---------------------------------------------------------------------------------
# The linear algebra runs in torch (float64): numpy's OpenBLAS with two threads on a busy machine
# took 1.8 s for one 224 x 224 eigendecomposition that torch does in 20 ms (bench_evaluation.py).
def polynomial_kernel(a, b) -> np.ndarray:
    a, b = as_float64(a), as_float64(b)
    return ((a @ b.T) / a.shape[1] + 1.0).pow(3).numpy()  # (len(a), len(b))


def _kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a @ b.T) / a.shape[1] + 1.0).pow(3)  # (len(a), len(b))


def _mmd2_unbiased(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> float:
    n, m = len(kxx), len(kyy)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def _within_means(k: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean kernel over pairs of distinct draws, for each resample given by ``counts`` (B, n).

    A resample that draws image i c_i times has sum_ij c_i c_j k_ij over all pairs of draws; pairs
    of one image with itself (c_i^2 of them for image i) are left out of the sum and the count.
    """
    total = ((counts @ k) * counts).sum(1)  # (B,)
    same = (counts * counts) @ k.diagonal()  # (B,)
    pairs = counts.sum(1) ** 2 - (counts * counts).sum(1)  # (B,)
    return (total - same) / pairs


def _resample_counts(rng: np.random.Generator, n: int, draws: int, b: int) -> torch.Tensor:
    return torch.from_numpy(rng.multinomial(draws, np.full(n, 1.0 / n), size=b).astype(np.float64))  # (B, n)


def kid(x: np.ndarray, y: np.ndarray, *, bootstrap: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float, float]:
    """(KID, lower, upper) of feature sets x (N, d) and y (M, d); the bounds are a 95 % bootstrap interval."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"KID needs at least 2 images per set; got {len(x)} and {len(y)}")
    tx, ty = as_float64(x), as_float64(y)
    kxx, kyy, kxy = _kernel(tx, tx), _kernel(ty, ty), _kernel(tx, ty)
    value = _mmd2_unbiased(kxx, kyy, kxy)
    if bootstrap <= 0:
        return value, value, value
    rng = np.random.default_rng(seed)
    cx = _resample_counts(rng, len(x), min(len(x), BOOTSTRAP_MAX), bootstrap)  # (B, N)
    cy = _resample_counts(rng, len(y), min(len(y), BOOTSTRAP_MAX), bootstrap)  # (B, M)
    cross = ((cx @ kxy) * cy).sum(1) / (cx.sum(1) * cy.sum(1))  # (B,)
    draws = (_within_means(kxx, cx) + _within_means(kyy, cy) - 2.0 * cross).numpy()
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return value, float(lo), float(hi)


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)), from the expansion |a|^2 + |b|^2 - 2 a·b."""
    ta, tb = as_float64(a), as_float64(b)
    d2 = (ta * ta).sum(1)[:, None] + (tb * tb).sum(1)[None, :] - 2.0 * (ta @ tb.T)
    return d2.clamp(min=0).sqrt().numpy()


def _knn_radius(d: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row point to its k-th nearest other point (``d`` square, self at distance 0)."""
    k = min(k, len(d) - 1)
    return np.partition(d, k, axis=1)[:, k]


def prdc(real: np.ndarray, fake: np.ndarray, k: int = NEIGHBOURS) -> dict[str, float]:
    """Precision, recall (k-NN manifolds) and density, coverage (Naeem et al. 2020, eqs. 3-4)."""
    d_rr = pairwise_distances(real, real)
    d_ff = pairwise_distances(fake, fake)
    d_rf = pairwise_distances(real, fake)  # (R, F)
    r_real = _knn_radius(d_rr, k)  # (R,)
    r_fake = _knn_radius(d_ff, k)  # (F,)
    inside = d_rf <= r_real[:, None]  # fake j inside real i's ball
    return {
        "precision": float(inside.any(axis=0).mean()),
        "recall": float((d_rf <= r_fake[None, :]).any(axis=1).mean()),
        "density": float(inside.sum(axis=0).mean() / k),
        "coverage": float((d_rf.min(axis=1) <= r_real).mean()),
    }


# -- the readout ----------------------------------------------------------------------------------
@dataclass
class Readout:
    """What an evaluation says; ``floor_*`` are the same figures for held-out real images."""

    num_samples: int
    num_reference: int
    num_floor: int
    kid: float
    kid_lo: float
    kid_hi: float
    floor_kid: float
    floor_kid_lo: float
    floor_kid_hi: float
    kid_pixels: float
    floor_kid_pixels: float
    fd: float
    floor_fd: float
    precision: float
    recall: float
    density: float
    coverage: float
    floor_precision: float
    floor_recall: float
    floor_density: float
    floor_coverage: float
    step: int | None = None
    source: str = ""
    sampling: str = ""
    seconds_scoring: float = 0.0
    seconds_sampling: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(metric, model, floor, what it means) for a table."""
        def iv(v, lo, hi):
            return f"{v:.4f} [{lo:.4f}, {hi:.4f}]"

        fd_note = f"comparable only at the same N (model N={self.num_samples}, floor N={self.num_floor})"
        return [
            ("KID (conv features)", iv(self.kid, self.kid_lo, self.kid_hi),
             iv(self.floor_kid, self.floor_kid_lo, self.floor_kid_hi), "lower is better; 95% bootstrap interval"),
            ("KID (pixels)", f"{self.kid_pixels:.4f}", f"{self.floor_kid_pixels:.4f}",
             "lower is better; 8x8 averaged pixels"),
            ("Fréchet distance", f"{self.fd:.3f}", f"{self.floor_fd:.3f}", fd_note),
            ("precision", f"{self.precision:.3f}", f"{self.floor_precision:.3f}", "samples that look like real images"),
            ("recall", f"{self.recall:.3f}", f"{self.floor_recall:.3f}", "real images the samples cover"),
            ("density", f"{self.density:.3f}", f"{self.floor_density:.3f}",
             "about 1 when samples sit where real images do"),
            ("coverage", f"{self.coverage:.3f}", f"{self.floor_coverage:.3f}", "real images with a sample nearby"),
        ]

    def summary(self) -> str:
        if self.kid_lo <= self.floor_kid_hi:
            verdict = "its interval reaches the floor's: no better is measurable at this N"
        else:
            verdict = "above the floor (the intervals do not overlap)"
        at = f"step {self.step:,}: " if self.step is not None else ""
        return (f"{at}KID {self.kid:.4f} [{self.kid_lo:.4f}, {self.kid_hi:.4f}], real-vs-real floor "
                f"{self.floor_kid:.4f} [{self.floor_kid_lo:.4f}, {self.floor_kid_hi:.4f}]; {verdict} "
                f"(N={self.num_samples}, {self.num_reference} reference images)")


def format_table(r: Readout) -> str:
    rows = [("metric", "model", "floor (real vs real)", "note")] + r.rows()
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3] for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 4)
    return "\n".join(lines)


def split_real(real: np.ndarray, num_samples: int, seed: int = EVAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(reference, held_out): a seeded split; held-out = as many as the samples, at most half the set."""
    n = len(real)
    if n < MIN_REAL:
        raise ValueError(f"scoring needs at least {MIN_REAL} training images to compare with; this set has {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_held = max(2, min(num_samples, n // 2))
    held, ref = order[:n_held], order[n_held:][:MAX_REFERENCE]
    return real[ref], real[held]


def score_images(samples: np.ndarray, real: np.ndarray, *, seed: int = EVAL_SEED, should_stop=None,
                 bootstrap: int = BOOTSTRAP) -> Readout:
    """Score uint8 ``samples`` (N, H, W, C) against the training images ``real`` (same H, W, C)."""
    samples, real = np.asarray(samples), np.asarray(real)
    if len(samples) < 2:
        raise ValueError(f"scoring needs at least 2 samples; got {len(samples)}")
    if samples.shape[1:] != real.shape[1:]:
        raise ValueError(f"the samples are {samples.shape[1:]} (H, W, C) but the training images are {real.shape[1:]}")
    t0 = time.perf_counter()
    ref, held = split_real(real, len(samples), seed)
    f_ref, f_held, f_s = feats.standardize(*(feats.conv_features(a, should_stop=should_stop)
                                             for a in (ref, held, samples)))
    p_ref, p_held, p_s = feats.standardize(*(feats.pixel_features(a) for a in (ref, held, samples)))
    k, klo, khi = kid(f_s, f_ref, bootstrap=bootstrap, seed=seed)
    fk, fklo, fkhi = kid(f_held, f_ref, bootstrap=bootstrap, seed=seed + 1)
    model_prdc, floor_prdc = prdc(f_ref, f_s), prdc(f_ref, f_held)
    notes = []
    if len(held) < len(samples):
        notes.append(f"only {len(held)} held-out real images for the floor (the set has {len(real)}); "
                     "its interval is wider than the model's")
    return Readout(
        num_samples=len(samples), num_reference=len(ref), num_floor=len(held),
        kid=k, kid_lo=klo, kid_hi=khi, floor_kid=fk, floor_kid_lo=fklo, floor_kid_hi=fkhi,
        kid_pixels=kid(p_s, p_ref, bootstrap=0)[0], floor_kid_pixels=kid(p_held, p_ref, bootstrap=0)[0],
        fd=frechet_distance(f_s, f_ref), floor_fd=frechet_distance(f_held, f_ref),
        **model_prdc, **{f"floor_{k_}": v for k_, v in floor_prdc.items()},
        seconds_scoring=time.perf_counter() - t0, notes=notes)


# -- models and runs --------------------------------------------------------------------------------
def default_num(device) -> int:
    return DEFAULT_NUM_GPU if getattr(device, "type", str(device)) == "cuda" else DEFAULT_NUM


def sample_for_eval(loaded, num: int, *, sampling=None, batch_size: int = 128, seed: int = EVAL_SEED,
                    should_stop: Callable[[], bool] | None = None,
                    progress: Callable[[int, int, str], None] | None = None) -> np.ndarray:
    """``num`` samples (uint8) of a LoadedModel with its own sampling settings (or ``sampling``), fixed seeds."""
    from ddpm_studio.sampling.service import sample_images

    sampling = sampling or loaded.config.sampling
    out, done = [], 0
    for b, start in enumerate(range(0, num, batch_size)):
        if should_stop is not None and should_stop():
            from ddpm_studio.data import Cancelled

            raise Cancelled("stopped")
        n = min(batch_size, num - start)
        out.append(sample_images(loaded, sampling, num_images=n, seed=seed + b, should_stop=should_stop))
        done += n
        if progress is not None:
            progress(done, num, f"sampled {done} of {num}")
    return np.concatenate(out)


def evaluate(loaded, real: np.ndarray, num: int = DEFAULT_NUM, *, sampling=None, batch_size: int = 128,
             seed: int = EVAL_SEED, should_stop=None, progress=None) -> Readout:
    """Sample ``num`` images of ``loaded`` and score them against ``real``."""
    if num < 2:
        raise ValueError(f"the number of samples must be at least 2; got {num}")
    if tuple(real.shape[1:]) != (loaded.image_shape[1], loaded.image_shape[2], loaded.image_shape[0]):
        raise ValueError(f"the model makes {loaded.image_shape[1]} px images with {loaded.image_shape[0]} channel(s) "
                         f"but the training images are {real.shape[1]} px with {real.shape[3]}")
    t0 = time.perf_counter()
    samples = sample_for_eval(loaded, num, sampling=sampling, batch_size=batch_size, seed=seed,
                              should_stop=should_stop, progress=progress)
    t_sample = time.perf_counter() - t0
    r = score_images(samples, real, seed=seed, should_stop=should_stop)
    from ddpm_studio.config import describe_sampling

    r.step, r.source, r.seconds_sampling = loaded.step, loaded.source, t_sample
    r.sampling = describe_sampling(sampling or loaded.config.sampling, loaded.diffusion.T)
    return r


def evaluate_checkpoints(run_dir, real: np.ndarray, num: int = DEFAULT_NUM, *, device=None, should_stop=None,
                         progress=None) -> Iterator[Readout]:
    """Evaluate every readable checkpoint of a run, oldest first (a damaged one is skipped with a note)."""
    from ddpm_studio.artifacts.loading import load_model
    from ddpm_studio.artifacts.checkpoints import CheckpointError, list_checkpoints

    paths = list_checkpoints(run_dir)
    if not paths:
        raise ValueError(f"{run_dir} has no checkpoints yet")
    for i, path in enumerate(paths):
        if should_stop is not None and should_stop():
            return
        try:
            loaded = load_model(path, device=device)
        except CheckpointError as e:
            if progress is not None:
                progress(i + 1, len(paths), f"skipped {path.name}: {e}")
            continue

        def inner(done, total, message, i=i, name=path.name):
            if progress is not None:
                progress(i * total + done, len(paths) * total, f"{name}: {message}")

        yield evaluate(loaded, real, num, should_stop=should_stop, progress=inner)


def run_real_images(run_dir, data_folder=None, *, should_stop=None, progress=None):
    """The training images of a run, decoded as the run decodes them (``data_folder`` replaces its folder)."""
    from pathlib import Path

    from ddpm_studio.data import load_images
    from ddpm_studio.artifacts.runs import read_config

    cfg = read_config(run_dir)
    data = cfg.data
    if data_folder is not None:
        if not Path(data_folder).is_dir():
            raise ValueError(f"--data: folder not found: {data_folder}")
        data = dataclasses.replace(data, folder=str(Path(data_folder).resolve()))
    elif data.folder is not None and not Path(data.folder).is_dir():
        raise ValueError(f"the run's image folder {data.folder} is gone; give the images with --data DIR")
    if data.channels == "auto":
        data = dataclasses.replace(data, channels=str(cfg.model.in_channels))
    return load_images(data, should_stop=should_stop, progress=progress)


def tuning_images(loaded, data_folder=None, *, open_images=None, should_stop=None) -> tuple[np.ndarray | None, str]:
    """The images the step tuning's last-step check compares with, and which they are; or None and why none.

    In order: the training images of the run behind ``loaded.source`` (a run folder, or a checkpoint in its
    checkpoints/ folder), from ``data_folder`` when given (the run's folder moved); for a model without a run
    (a diffusers folder), the images in ``data_folder``, decoded at the model's size and channels; failing both,
    ``open_images`` (an ImageSet, e.g. the Dataset panel's) when they are the model's size and channels."""
    from pathlib import Path

    from ddpm_studio.artifacts.runs import CONFIG_FILE
    from ddpm_studio.data import load_images

    path = Path(loaded.source)
    run = path if path.is_dir() else path.parent.parent
    why = "not a run folder, so no training images to compare with"
    try:
        if (run / CONFIG_FILE).is_file():
            return run_real_images(run, data_folder, should_stop=should_stop).images, "the run's training images"
        if data_folder is not None:
            if not Path(data_folder).is_dir():
                raise ValueError(f"--data: folder not found: {data_folder}")
            m = loaded.config.model
            cfg = dataclasses.replace(loaded.config.data, folder=str(Path(data_folder).resolve()),
                                      image_size=m.image_size, channels=str(m.in_channels))
            return load_images(cfg, should_stop=should_stop).images, f"the images in {data_folder}"
    except (ValueError, OSError) as e:  # DatasetError is a ValueError
        why = f"the training images could not be read ({e})"
    if open_images is not None:
        c, size, _ = loaded.image_shape
        if open_images.images.shape[1:] == (size, size, c):
            return open_images.images, "the images open in the Dataset panel"
        why += (f"; the images open in the Dataset panel are {open_images.summary()}, not the model's "
                f"{size}x{size} {'greyscale' if c == 1 else 'RGB'}")
    return None, why


def sampling_cost_note(seconds_per_image: float, num: int) -> str:
    return f"about {human_seconds(seconds_per_image * num)} for {num} samples"


def human_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "unknown"
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


# -- results kept in the run folder -------------------------------------------------------------------
RESULTS_FILE = "evaluation.jsonl"  # one Readout per line; the GUI plots KID per step from it


def save_results(run_dir, readouts: list[Readout]) -> None:
    """Merge ``readouts`` into RUN/evaluation.jsonl (a new figure for the same step and N replaces the old)."""
    import json
    from pathlib import Path

    from ddpm_studio.config import atomic_write_text

    old = read_results(run_dir)
    new_keys = {(r.step, r.num_samples) for r in readouts}
    keep = [d for d in old if (d.get("step"), d.get("num_samples")) not in new_keys] + [r.to_dict() for r in readouts]
    keep.sort(key=lambda d: (d.get("step") or 0, d.get("num_samples") or 0))
    atomic_write_text(Path(run_dir) / RESULTS_FILE, "".join(json.dumps(d) + "\n" for d in keep))


def read_results(run_dir) -> list[dict]:
    """The saved readouts of a run (a line that does not parse is skipped)."""
    import json
    from pathlib import Path

    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(d, dict) and isinstance(d.get("kid"), (int, float)):
            out.append(d)
    return out


def load_samples_folder(folder, like) -> np.ndarray:
    """The images of ``folder`` decoded at the size and channels of the ImageSet ``like``."""
    from pathlib import Path

    from ddpm_studio.config import DataConfig
    from ddpm_studio.data import load_images

    if not Path(folder).is_dir():
        raise ValueError(f"--samples: folder not found: {folder}")
    cfg = DataConfig(folder=str(Path(folder).resolve()), image_size=like.image_size, channels=str(like.channels))
    return load_images(cfg, use_cache=False)
