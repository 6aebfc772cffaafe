"""Dataset loading speed and memory (issue 3). Run by hand:

    python benchmarks/bench_data.py                 # 20,000 32x32 PNGs, default workers
    python benchmarks/bench_data.py --n 5000 --workers 1 2

Generates a folder of PNGs (tiles of the built-in shapes, each with one pixel changed so every
file's contents differ), then, each in a fresh subprocess with an empty cache:
  * first open  (index + read + hash + decode + preprocess + write the cache), images/s;
  * cached open (index + stat + read the cached array), images/s;
  * memory: peak resident set size during the first open minus the resident size just before it,
    and tracemalloc's peak, each divided by the decoded set's uint8 size.
Goals (2 cores): >= 2,000 img/s first open, >= 50,000 img/s cached, memory <= 1.5x the uint8 size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_folder(folder: Path, n: int, size: int) -> None:
    from PIL import Image

    from ddpm_studio.config import DataConfig
    from ddpm_studio.data.builtin import load_builtin

    tiles = load_builtin(DataConfig(folder=None, image_size=size)).images  # (4096, s, s, 3)
    per_dir = 1000  # nested like a real photo library, not one huge folder
    for i in range(n):
        a = tiles[i % len(tiles)].copy()
        a[0, 0] = (i % 256, (i // 256) % 256, (i // 65536) % 256)  # unique contents
        sub = folder / f"part{i // per_dir:03d}"
        if i % per_dir == 0:
            sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(sub / f"img_{i:06d}.png")


CHILD = r"""
import json, os, resource, sys, time, tracemalloc
from ddpm_studio.config import DataConfig
from ddpm_studio.data import load_images
folder, size, workers, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
workers = None if workers == "default" else int(workers)
cfg = DataConfig(folder=folder, image_size=size)
def rss_now():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
out = {"load_before": os.getloadavg()[0]}
from PIL import Image
Image.init()  # import every format plugin now, so their code is not counted as data memory
if mode == "trace":
    tracemalloc.start()
before = rss_now()
times, cpu = [], []
s = None
for _ in range(3 if mode == "cached" else 1):
    s = None  # drop the previous set before loading again
    t, c = time.perf_counter(), time.process_time()
    s = load_images(cfg, workers=workers)
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
    if mode == "cached":
        assert s.from_cache
out["seconds"] = times
out["cpu_seconds"] = cpu
out["n"] = len(s)
out["from_cache"] = s.from_cache
out["nbytes"] = s.images.nbytes
out["rss_peak_growth"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
out["rss_held"] = rss_now() - before
if mode == "trace":
    out["trace_peak"] = tracemalloc.get_traced_memory()[1]
out["load_after"] = os.getloadavg()[0]
print(json.dumps(out))
"""


def run_child(folder: Path, size: int, workers: str, mode: str, cache: Path) -> dict:
    env = dict(os.environ, DDPM_STUDIO_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(size), workers, mode],
                       env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--workers", nargs="+", default=["default"], help="thread counts to try, or 'default'")
    p.add_argument("--folder", type=Path, default=None, help="reuse/keep this folder of generated images")
    args = p.parse_args()
    from ddpm_studio.data.imageset import default_workers

    with tempfile.TemporaryDirectory(prefix="ddpm-bench-data-") as tmp:
        folder = args.folder or Path(tmp) / "images"
        if not (folder.exists() and any(folder.iterdir())):
            t = time.perf_counter()
            make_folder(folder, args.n, args.size)
            print(f"generated {args.n:,} {args.size}x{args.size} PNGs in {time.perf_counter() - t:.1f} s")
        print(f"cpu cores usable: {default_workers()} (default decoding threads)")
        for w in args.workers:
            cache = Path(tempfile.mkdtemp(dir=tmp, prefix="cache-"))
            first = run_child(folder, args.size, w, "first", cache)
            cached = run_child(folder, args.size, w, "cached", cache)  # a fresh process, cache filled
            traced = run_child(folder, args.size, w, "trace", Path(tempfile.mkdtemp(dir=tmp, prefix="cache-")))
            n, nbytes = first["n"], first["nbytes"]
            t1, tc = first["seconds"][0], min(cached["seconds"])
            print(f"workers={w}: {n:,} images, uint8 set {nbytes / 2**20:.1f} MiB; "
                  f"load average {first['load_before']:.1f} -> {cached['load_after']:.1f}")
            print(f"  first open : {t1:.2f} s = {n / t1:,.0f} img/s (goal >= 2,000); "
                  f"CPU time {first['cpu_seconds'][0]:.2f} s")
            print(f"  cached open: {tc:.3f} s = {n / tc:,.0f} img/s, best of 3 in a fresh process "
                  f"(all: {', '.join(f'{n / t:,.0f}' for t in cached['seconds'])}) (goal >= 50,000); "
                  f"CPU time {min(cached['cpu_seconds']):.3f} s = {n / min(cached['cpu_seconds']):,.0f} img per CPU-s")
            print(f"  first open: peak RSS growth {first['rss_peak_growth'] / nbytes:.2f}x the uint8 set, "
                  f"held afterwards {first['rss_held'] / nbytes:.2f}x (goal <= 1.5x)")
            print(f"  cached open: peak RSS growth {cached['rss_peak_growth'] / nbytes:.2f}x, "
                  f"held {cached['rss_held'] / nbytes:.2f}x")
            print(f"  tracemalloc peak, first open: {traced['trace_peak'] / nbytes:.2f}x "
                  f"(Python + numpy allocations only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
