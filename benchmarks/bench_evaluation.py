"""Issue 17 timings: the quality readout and the nearest-neighbour search, without sampling.

    OMP_NUM_THREADS=2 python benchmarks/bench_evaluation.py

1. Readout: 256 "samples" of 16 px scored against the built-in set at 16 px (4,096 images): conv
   features of every set, KID with 200 bootstrap draws (model and floor), pixel KID, Fréchet
   distance, precision / recall / density / coverage (``metrics.score_images``). Sampling is timed
   separately by the sampling benchmarks; the samples here are held-out-like real images.
2. Nearest neighbours: 64 samples against 10,000 training images at 32 px
   (``memorization.nearest_training_images``: pixel search, features of all 10,000, typical distance).

Each figure is the median of --repeats runs after one warm-up, with torch on --threads threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ddpm_studio.config import DataConfig
    from ddpm_studio.data import load_images
    from ddpm_studio.evaluation import memorization, metrics

    real = load_images(DataConfig(folder=None, image_size=16)).images  # (4096, 16, 16, 3)
    rng = np.random.default_rng(0)
    samples = real[rng.permutation(len(real))[:256]]
    print(f"load: {os.getloadavg()[0]:.1f} (1 min), threads {args.threads}")
    from ddpm_studio.evaluation import features

    def readout():
        features._CACHE.clear()  # nothing reused from an earlier call
        metrics.score_images(samples, real)

    med, runs = timed(readout, args.repeats)
    print(f"readout, 256 samples at 16 px vs {len(real):,} training images: median {med:.2f} s "
          f"(runs {', '.join(f'{r:.2f}' for r in runs)})")

    big = load_images(DataConfig(folder=None, image_size=32)).images  # (4096, 32, 32, 3)
    train = np.concatenate([big, big[:, :, ::-1], big[:, ::-1]])[:10000]  # 10,000 distinct 32 px images
    s64 = train[rng.permutation(len(train))[:64]] // 2 + 60  # 64 "samples" unlike any training image

    def first_time():
        features._CACHE.clear()  # the training set's features computed afresh
        memorization.nearest_training_images(s64, train)

    med, runs = timed(first_time, args.repeats)
    print(f"nearest neighbours, 64 samples vs {len(train):,} training images at 32 px, first check of the set "
          f"(its features computed): median {med:.2f} s (runs {', '.join(f'{r:.2f}' for r in runs)})")
    med, runs = timed(lambda: memorization.nearest_training_images(s64, train), args.repeats)
    print(f"nearest neighbours, the same again (training features cached): median {med:.2f} s "
          f"(runs {', '.join(f'{r:.2f}' for r in runs)})")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
