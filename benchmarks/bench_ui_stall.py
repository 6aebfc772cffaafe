"""Longest stall of the UI event loop while the window trains and while it samples.

    python benchmarks/bench_ui_stall.py [--seconds 15] [--image-size 32] [--preset tiny] [--history 0]

A QTimer fires every 10 ms on the UI thread; the largest gap between two firings is how long the
window was unable to respond. Training runs the chosen preset on the built-in dataset through the
real window (Start button path), with the loss plot, bucket plot and previews live; sampling runs
a DDPM chain (all T steps) on the model just trained, with the live canvas following it; then the
Lab (issue 16) on the checkpoint the training saved: the compare board (three samplers, 16 images
a row, the board recomposed as each row lands) and a 16-frame seed interpolation.
``--history N`` puts N synthetic losses on the loss plot before the run's own (steps -N+1 … 0),
as after hours of training, so the plot is measured at its heaviest.
Goal: longest gap < 50 ms. Settings, cache and runs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=15.0, help="how long to measure each phase")
    p.add_argument("--image-size", type=int, default=32, choices=(16, 32))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--history", type=int, default=0, help="synthetic loss points shown before the run's own")
    p.add_argument("--no-lab", action="store_true", help="skip the Lab's compare board and interpolation")
    args = p.parse_args(argv)

    from window_support import close_window, open_window, ui_gaps  # same folder

    app, win, run_for, _ = open_window(args.image_size, "ddpm-stall-")

    def measure(name: str, seconds: float, until=None) -> dict:
        g = sorted(ui_gaps(seconds, until)) or [0]
        res = dict(name=name, ticks=len(g), max_ms=g[-1], p99_ms=g[int(0.99 * (len(g) - 1))],
                   median_ms=statistics.median(g))
        print(f"{name:>10}: {res['ticks']:5d} ticks · longest gap {res['max_ms']:.0f} ms · "
              f"p99 {res['p99_ms']:.0f} ms · median {res['median_ms']:.0f} ms")
        return res

    print(f"dataset: {len(win.state.images.images)} images at {args.image_size} px · {win.device_label.text()}")
    idle = measure("idle", min(5.0, args.seconds))

    tp = win.training_panel
    tp.apply_preset(args.preset)
    tp.steps_spin.setValue(1_000_000)
    tp.batch_spin.setValue(args.batch_size)
    tp.preview_spin.setValue(20)
    tp.overrides = {"train": {"log_every": 1, "preview_count": 16, "preview_sampling_steps": 10}}
    win.tabs.setCurrentWidget(tp)
    tp.start()
    if args.history > 0:  # before the run's first step arrives
        import numpy as np

        s = np.arange(-args.history + 1, 1)
        smooth = 0.05 + 0.9 / np.sqrt(1 + (s + args.history) / 50)  # a falling loss, and noise on it
        raw = smooth + 0.08 * np.random.default_rng(0).standard_normal(len(s)) ** 2
        tp.loss_plot.add_points(s, raw, smooth)
    run_for(120, until=lambda: tp.metrics_received > 0)  # model built, first step done
    if args.history > 0:
        run_for(0.5)  # one redraw of the loss plot
        print(f"loss plot: {tp.loss_plot.num_points:,} losses, {tp.loss_plot.displayed_points():,} points drawn")
    training = measure("training", args.seconds)
    steps = tp.metrics_received
    tp.stop()
    run_for(120, until=lambda: not tp.is_running())
    print(f"           ({steps} steps reported during the run)")

    sp = win.sampling_panel
    sp.src_trained.setChecked(True)
    sp.sampler_combo.setCurrentIndex(sp.sampler_combo.findData("ddpm"))
    sp.num_spin.setValue(16)
    win.tabs.setCurrentWidget(sp)
    sp.generate()
    run_for(60, until=lambda: sp.frames_received > 0)
    sampling = measure("sampling", args.seconds, until=lambda: not sp.is_running())
    print(f"           ({sp.frames_received} chain frames received, canvas repainted {sp.canvas.frames_shown} times)")
    sp.cancel()
    run_for(60, until=lambda: not sp.is_running())

    lab_text = ""
    worst = max(training["max_ms"], sampling["max_ms"])
    if not args.no_lab and tp.run_dir:
        lab = win.lab_panel
        win.tabs.setCurrentWidget(lab)
        lab.open_model(tp.run_dir)
        lab.modes.setCurrentIndex(0)
        lab.specs_edit.setText("ddim:20,dpmpp-2m:20,ddpm")
        lab.num_spin.setValue(16)
        lab.run_compare()
        compare = measure("compare", args.seconds, until=lambda: not lab.is_running())
        print(f"           ({lab.session.board_updates} board updates)")
        lab.cancel()
        run_for(60, until=lambda: not lab.is_running())
        lab.modes.setCurrentIndex(2)
        lab.sampler_combo.setCurrentIndex(lab.sampler_combo.findData("ddim"))
        lab.steps_spin.setValue(20)
        lab.frames_spin.setValue(16)
        lab.seed_a.setValue(0)
        lab.seed_b.setValue(1)
        lab.run_interpolate()
        interp = measure("interpolate", args.seconds, until=lambda: not lab.is_running())
        print(f"           ({len(lab.session.interp.frames)} frames received)")
        lab.cancel()
        run_for(60, until=lambda: not lab.is_running())
        worst = max(worst, compare["max_ms"], interp["max_ms"])
        lab_text = f", compare {compare['max_ms']:.0f} ms, interpolate {interp['max_ms']:.0f} ms"
    print(f"machine load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"longest UI stall: training {training['max_ms']:.0f} ms, sampling {sampling['max_ms']:.0f} ms{lab_text} "
          f"(goal < 50 ms: {'met' if worst < 50 else 'NOT met'}); idle {idle['max_ms']:.0f} ms")
    close_window(win)
    return 0


if __name__ == "__main__":
    sys.exit(main())
