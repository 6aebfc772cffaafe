"""Training speed in the window against the CLI, on the same machine, alternating, and the UI's longest
stall while the window trains.

    python benchmarks/bench_window_train.py [--seconds 30] [--rounds 2] [--image-size 16] [--preset tiny]

Each round trains the same configuration twice: once as ``ddpm-studio train`` in a subprocess (the
CLI, torch on every core) and once through the real window's Start button (the worker thread at the
window's thread count and priority), each for ``--seconds`` of training. The rate is read back from
each run's own metrics.jsonl (steps over training seconds, the first ``--warmup`` seconds left out, so
the model build and the first step do not count), so both sides are measured the same way. Rounds
alternate CLI and window, so a change in the machine's load hits both; the ratio is printed per round.
While the window trains, a 10 ms QTimer on the UI thread records its longest gap. Goal (issue 11):
window >= 0.9x the CLI's images/s with the longest stall <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def rate_from_metrics(run_dir: Path, warmup: float) -> tuple[float, int]:
    """Steps per training second after ``warmup`` seconds, and the steps that rate is over."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "elapsed_sec" in r and r["elapsed_sec"] >= warmup]
    if len(rows) < 2:
        raise SystemExit(f"{run_dir}: too few logged steps after {warmup} s; give more --seconds")
    first, last = rows[0], rows[-1]
    return (last["step"] - first["step"]) / (last["elapsed_sec"] - first["elapsed_sec"]), last["step"] - first["step"]


def cli_round(args, out: Path) -> float:
    cmd = [sys.executable, "-m", "ddpm_studio", "train", "--preset", args.preset, "--image-size",
           str(args.image_size), "--batch-size", str(args.batch_size), "--log-every", str(args.log_every),
           "--minutes", str((args.seconds + args.warmup) / 60), "--out", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rate, steps = rate_from_metrics(out, args.warmup)
    return rate * args.batch_size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0, help="training seconds measured per side and round")
    p.add_argument("--warmup", type=float, default=3.0, help="training seconds left out at the start")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--image-size", type=int, default=16, choices=(16, 32))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--log-every", type=int, default=10, help="steps between logged losses (the default)")
    args = p.parse_args(argv)

    from window_support import close_window, open_window, ui_gaps  # same folder

    app, win, run_for, tmp = open_window(args.image_size, "ddpm-wintrain-")

    print(f"{args.preset} at {args.image_size} px, batch {args.batch_size}; window: {win.device_label.text()}")

    tp = win.training_panel
    ratios, stalls = [], []
    for r in range(args.rounds):
        cli = cli_round(args, tmp / f"cli{r}")
        if tp.run_dir:
            tp.new_run()
        tp.apply_preset(args.preset)
        tp.steps_spin.setValue(1_000_000)
        tp.batch_spin.setValue(args.batch_size)
        tp.overrides = {"train": {"log_every": args.log_every}}
        win.tabs.setCurrentWidget(tp)
        tp.start()
        run_for(120, until=lambda: tp.metrics_received > 0)
        run_for(args.warmup)
        stall = max(ui_gaps(args.seconds) or [0])
        run_dir = Path(tp.run_dir)
        tp.stop()
        run_for(120, until=lambda: not tp.is_running())
        window = rate_from_metrics(run_dir, args.warmup)[0] * args.batch_size
        ratios.append(window / cli)
        stalls.append(stall)
        print(f"round {r + 1}: CLI {cli:.0f} img/s · window {window:.0f} img/s · ratio {window / cli:.2f} · "
              f"longest UI stall while training {stall:.0f} ms · load {os.getloadavg()[0]:.1f}")
    print(f"window / CLI images/s: median {statistics.median(ratios):.2f} (goal >= 0.9); "
          f"longest stall {max(stalls):.0f} ms (goal <= 50 ms); {os.cpu_count()} cores")
    close_window(win)
    return 0


if __name__ == "__main__":
    sys.exit(main())
