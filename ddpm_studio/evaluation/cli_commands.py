"""The ``eval``, ``nearest``, ``timelapse`` and ``doctor`` subcommands (registered by ``cli.py``), and
``train``'s checkpoint scorer (``train --eval-every``: its flags come from the config schema).

Heavy imports (torch) happen inside the commands; building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def add_parsers(sub, positive_int, positive_float) -> None:
    """Add the four subcommands to ``sub`` (argparse subparsers of cli.build_parser)."""
    e = sub.add_parser("eval", help="score a run's samples against its training images (KID, FD, precision/recall)",
                       description="Sample --num images from a run's newest good checkpoint (or --checkpoint, or "
                       "every checkpoint) and score them against the training images on features that ship "
                       "with the app (a fixed random-weight conv net and pixel statistics). Beside each figure: "
                       "the floor, what held-out real images score. Results are also kept in RUN/evaluation.jsonl.")
    e.add_argument("--run", required=True, metavar="RUN_DIR", help="the run folder")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", metavar="FILE", help="score this checkpoint instead of the newest good one")
    g.add_argument("--all-checkpoints", action="store_true", help="score every checkpoint: KID per training step")
    e.add_argument("--num", type=positive_int, metavar="N",
                   help="samples to score (default 256 on a CPU, 1024 on CUDA); figures compare only at the same N")
    e.add_argument("--data", metavar="DIR", help="the training images, when the run's folder moved")
    e.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="default auto")
    e.add_argument("--json", action="store_true", help="print JSON instead of the table")

    n = sub.add_parser("nearest", help="find each sample's nearest training images (memorisation check)",
                       description="For each image in --samples its nearest training images by pixel distance and "
                       "by feature distance, with the ratio to the typical distance between two training images; "
                       "a sample under a third of it is counted as a near-copy.")
    n.add_argument("--run", required=True, metavar="RUN_DIR", help="the run folder (its training images and size)")
    n.add_argument("--samples", required=True, metavar="DIR",
                   help="a folder of generated images (e.g. from sample --out)")
    n.add_argument("--data", metavar="DIR", help="the training images, when the run's folder moved")
    n.add_argument("--top", type=positive_int, default=3, metavar="K",
                   help="training images listed per sample (default 3)")
    n.add_argument("--json", action="store_true", help="print JSON instead of text")

    t = sub.add_parser("timelapse", help="a run's preview grids as a GIF and a contact sheet",
                       description="The fixed-seed preview grids of a run (RUN/samples/step_*.png), the step written "
                       "under each, as an animated GIF and/or a contact sheet PNG.")
    t.add_argument("--run", required=True, metavar="RUN_DIR", help="the run folder")
    t.add_argument("--out", metavar="FILE.gif", help="the GIF to write")
    t.add_argument("--sheet", metavar="FILE.png", help="also (or only) a contact sheet PNG")
    t.add_argument("--fps", type=positive_float, default=4.0, help="GIF frames per second (default 4)")

    d = sub.add_parser("doctor", help="check an image folder before training on it",
                       description="Exact and near duplicates, mixed sizes and modes, images whose mirror is unlike "
                       "the set, very small sets, very large images; each finding with its files.")
    d.add_argument("--data", required=True, metavar="DIR", help="the image folder")
    d.add_argument("--image-size", type=positive_int, default=32, metavar="PX", help="the training size (default 32)")
    d.add_argument("--flip", action="store_true", help="you mean to train with random horizontal flips")
    d.add_argument("--json", action="store_true", help="print JSON instead of text")


def train_listener(args: argparse.Namespace, cfg, reporter):
    """The ``on_event`` for ``train``: the reporter, and the checkpoint scorer when ``train.eval_every`` > 0
    (``--eval-every K [--eval-num N]``, flags of the schema; a resumed run keeps its own). The cost is printed
    first."""
    if not cfg.train.eval_every:
        return reporter
    from ddpm_studio.engine.devices import select_device
    from ddpm_studio.evaluation.during_training import (
        ScoreCheckpoints,
        estimate_seconds,
        plan_lines,
        samples_per_score,
    )

    device = select_device(cfg.train.device)
    num = samples_per_score(cfg, device)
    for line in plan_lines(cfg, num, estimate_seconds(cfg, num, device=str(device))):
        reporter.write(line)
    return ScoreCheckpoints(args.out, cfg.train.eval_every, num, device=device, then=reporter, report=reporter.write)


def _progress(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None

    def report(done, total, message):
        print(f"\r{message[:100]:<100}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    return report


def cmd_eval(args: argparse.Namespace) -> int:
    from ddpm_studio.engine.devices import select_device
    from ddpm_studio.evaluation import metrics
    from ddpm_studio.artifacts.loading import load_model
    from ddpm_studio.artifacts.runs import is_run_dir

    if not Path(args.run).is_dir() or not is_run_dir(args.run):
        raise ValueError(f"--run: {args.run} is not a run folder")
    device = select_device(args.device)
    num = args.num or metrics.default_num(device)
    real = metrics.run_real_images(args.run, args.data)
    progress = _progress(args.json)
    if args.all_checkpoints:
        results = list(metrics.evaluate_checkpoints(args.run, real.images, num, device=device, progress=progress))
    else:
        loaded = load_model(args.checkpoint or args.run, device=device)
        for note in loaded.notes:
            print(f"note: {note}", file=sys.stderr)
        results = [metrics.evaluate(loaded, real.images, num, progress=progress)]
    metrics.save_results(args.run, results)
    if args.json:
        print(json.dumps([r.to_dict() for r in results] if args.all_checkpoints else results[0].to_dict(), indent=2))
        return 0
    print(f"training images: {real.source} ({len(real):,} at {real.image_size} px)")
    if args.all_checkpoints:
        print(f"{'step':>8}  {'KID':>8}  {'95% interval':>19}  {'FD':>8}  {'prec.':>5}  {'recall':>6}")
        for r in results:
            print(f"{r.step:>8,}  {r.kid:>8.4f}  [{r.kid_lo:>8.4f}, {r.kid_hi:>7.4f}]  {r.fd:>8.3f}  "
                  f"{r.precision:>5.2f}  {r.recall:>6.2f}")
        f = results[-1]
        print(f"floor (real vs real): KID {f.floor_kid:.4f} [{f.floor_kid_lo:.4f}, {f.floor_kid_hi:.4f}], "
              f"FD {f.floor_fd:.3f} (N={num}; FD comparable only at the same N)")
    else:
        r = results[0]
        print(f"model: {r.source} (step {r.step:,}); {num} samples: {r.sampling}")
        print(metrics.format_table(r))
        print(r.summary())
        for note in r.notes:
            print(f"note: {note}")
        print(f"took {r.seconds_sampling:.1f} s sampling + {r.seconds_scoring:.1f} s scoring")
    return 0


def cmd_nearest(args: argparse.Namespace) -> int:
    from ddpm_studio.evaluation import memorization, metrics

    real = metrics.run_real_images(args.run, args.data)
    samples = metrics.load_samples_folder(args.samples, real)
    rep = memorization.nearest_training_images(samples.images, real.images, k=args.top,
                                               train_paths=real.paths, sample_names=samples.paths)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
        return 0
    print(rep.summary())
    order = sorted(rep.matches, key=lambda m: m.pixel_ratio)
    shown = [m for m in order if m.near_copy] or order[:5]
    head = "near-copies:" if rep.near_copies else "closest samples (none is a near-copy):"
    print(head)
    for m in shown:
        near = ", ".join(f"{Path(real.paths[j]).name} ({d:.3f})" for j, d in zip(m.pixel_neighbours, m.pixel_distances))
        print(f"  {Path(samples.paths[m.index]).name}: {m.pixel_ratio:.2f}x typical; nearest by pixels {near}; "
              f"by features {Path(real.paths[m.feature_neighbour]).name} ({m.feature_ratio:.2f}x typical)")
    return 0


def cmd_timelapse(args: argparse.Namespace) -> int:
    from ddpm_studio.evaluation.timelapse import write_timelapse

    if not args.out and not args.sheet:
        raise ValueError("give --out FILE.gif, --sheet FILE.png or both")
    for flag, value, ext in (("--out", args.out, ".gif"), ("--sheet", args.sheet, ".png")):
        if value and Path(value).suffix.lower() != ext:
            raise ValueError(f"{flag} must name a {ext} file; got {value}")
    got = write_timelapse(args.run, args.out, args.sheet, fps=args.fps)
    steps = got["steps"]
    span = f"steps {steps[0]:,} to {steps[-1]:,}"
    if got["gif"]:
        print(f"wrote GIF {got['gif']} ({got['frames']} frames, {span})")
    if got["sheet"]:
        print(f"wrote contact sheet {got['sheet']}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from ddpm_studio.evaluation.doctor import diagnose

    rep = diagnose(args.data, image_size=args.image_size, flip=args.flip, progress=_progress(args.json))
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
        return 0
    print(rep.summary())
    for f in rep.findings:
        print(f"[{f.severity}] {f.title}")
        print(f"    {f.advice}")
        for group in f.groups[:5]:
            print("    same image: " + ", ".join(group))
        if not f.groups:
            for p in f.files[:8]:
                print(f"    {p}")
            if len(f.files) > 8:
                print(f"    ... and {len(f.files) - 8} more")
        if f.exclude:
            print(f"    fix: train with --exclude-duplicates (leaves out these {len(f.exclude)} file(s); "
                  "the Dataset tab's Exclude Duplicates button does the same)")
    return 0


COMMANDS = {"eval": cmd_eval, "nearest": cmd_nearest, "timelapse": cmd_timelapse, "doctor": cmd_doctor}
