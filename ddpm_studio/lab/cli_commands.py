"""The lab's commands: ``compare``, ``interpolate``, ``chain`` (three views, contact sheet, GIF /
APNG), ``branch`` and ``tune-steps``. ``cli.py`` only registers them (:func:`add_commands`, :data:`COMMANDS`).

They open a model the way ``sample`` does (``--run`` / ``--checkpoint`` / ``--model``), check that
every output can be written before any work starts, and print one line per file written.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ddpm_studio.config import SAMPLERS, SPACINGS, sampler_default_steps


def _source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="RUN_DIR", help="a run folder (its newest good checkpoint)")
    src.add_argument("--checkpoint", metavar="FILE", help="a .safetensors checkpoint file")
    src.add_argument("--model", metavar="FOLDER", help="a diffusers model folder already on disk")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto", help="default auto")


def _sampler_flags(p: argparse.ArgumentParser, cli, default: str) -> None:
    p.add_argument("--sampler", choices=SAMPLERS, metavar="|".join(SAMPLERS), help=f"default {default}")
    p.add_argument("--sampling-steps", type=cli._positive_int, metavar="K",
                   help="network calls for ddim / dpmpp-* / unipc (default: the sampler's own: ddim 50, "
                        "dpmpp-* 20, unipc 10)")
    p.add_argument("--eta", type=cli._float, default=0.0, metavar="E", help="DDIM eta (default 0)")
    p.add_argument("--spacing", choices=SPACINGS, metavar="|".join(SPACINGS), help="default: the run's")


def add_commands(sub, cli) -> None:
    """Register the lab's subcommands on ``sub`` (argparse subparsers); ``cli`` is ddpm_studio.cli."""
    c = sub.add_parser("compare", help="the same noise through several samplers: one annotated board PNG",
                       description="Start --num images from the same x_T (seed --seed) and run them through each "
                       "sampler of --samplers, one row each, labelled with its settings and seconds per image. "
                       "Each row is what `sample --seed S` makes with that row's settings.")
    _source(c)
    c.add_argument("--samplers", required=True, metavar="LIST",
                   help="comma-separated sampler[:steps[:eta]], e.g. ddim:50,dpmpp-2m:20,ddpm,ddim:50:1; "
                   "sampler:steps:tuned (e.g. unipc:5:tuned) walks the timesteps tune-steps found for this model")
    c.add_argument("--num", type=cli._positive_int, default=8, metavar="N", help="images per row (default 8)")
    c.add_argument("--seed", type=cli._nonneg_int, default=0, metavar="S", help="seed of x_T (default 0)")
    c.add_argument("--out", required=True, metavar="FILE.png", help="the board")
    c.add_argument("--quiet", action="store_true", help="no per-row lines")

    i = sub.add_parser("interpolate", help="walk between two seeds (slerp of x_T) or two images noised to t",
                       description="Without --images: spherical interpolation between the x_T of two seeds, each "
                       "frame sampled with a deterministic sampler (default ddim, eta 0), so the end frames are the "
                       "seeds' own samples. With --images: both images are noised to --t with q(x_t | x_0), "
                       "mixed linearly and denoised from t with the same noise for every frame (Ho et al. 2020, "
                       "§4.4; default sampler ddpm).")
    _source(i)
    i.add_argument("--seeds", type=cli._nonneg_int, nargs=2, metavar=("A", "B"), help="the two seeds")
    i.add_argument("--images", nargs=2, metavar=("A.png", "B.png"),
                   help="two images (cropped and resized to the model's size)")
    i.add_argument("--t", type=cli._nonneg_int, metavar="T",
                   help="with --images: the timestep to noise to (default T/2)")
    i.add_argument("--seed", type=cli._nonneg_int, default=0, metavar="S", help="with --images: the noise (default 0)")
    i.add_argument("--frames", type=cli._positive_int, default=16, metavar="F",
                   help="frames, ends included (default 16)")
    _sampler_flags(i, cli, "ddim")
    i.add_argument("--out", metavar="FILE.png", help="the strip of frames")
    i.add_argument("--gif", metavar="FILE.gif", help="an animated walk (there and back)")
    i.add_argument("--fps", type=cli._positive_float, default=8.0, help="GIF frame rate (default 8)")

    ch = sub.add_parser("chain", help="the reverse chain as x_t, predicted x_0 and predicted noise: sheet, GIF, APNG",
                        description="Run one chain and write its three views (x_t, the predicted x_0 and the "
                        "predicted noise, or v for v-prediction models) side by side: a contact sheet of every "
                        "k-th step with t under each frame, and animations.")
    _source(ch)
    _sampler_flags(ch, cli, "ddpm")
    ch.add_argument("--num", type=cli._positive_int, default=1, metavar="N", help="images in the chain (default 1)")
    ch.add_argument("--seed", type=cli._nonneg_int, default=0, metavar="S")
    ch.add_argument("--sheet", metavar="FILE.png", help="contact sheet")
    ch.add_argument("--every", type=cli._positive_int, metavar="K",
                    help="sheet/animation: every K-th step (default: ~12 columns)")
    ch.add_argument("--gif", metavar="FILE.gif", help="animated GIF of the three views")
    ch.add_argument("--apng", metavar="FILE.png", help="animated PNG (lossless) of the three views")
    ch.add_argument("--overlay-t", action="store_true", help="write t on every animation frame")
    ch.add_argument("--fps", type=cli._positive_float, default=10.0)

    _add_branch(sub, cli)


def _add_branch(sub, cli) -> None:
    b = sub.add_parser("branch", help="rerun a chain from one of its steps: which features are decided when",
                       description="Run one chain; at each --at step, rerun the rest --branches times with new "
                       "noise (stochastic samplers), or, with --renoise-t, re-noise that step's predicted x_0 to t "
                       "with q(x_t | x_0) and denoise again. One strip per branch point.")
    _source(b)
    _sampler_flags(b, cli, "ddpm")
    b.add_argument("--at", required=True, metavar="STEPS", help="comma-separated step indices (0 = the first step)")
    b.add_argument("--branches", type=cli._positive_int, default=6, metavar="K", help="branches per point (default 6)")
    b.add_argument("--renoise-t", type=cli._nonneg_int, metavar="T", help="re-noise x_0-hat to this t instead")
    b.add_argument("--seed", type=cli._nonneg_int, default=0, metavar="S", help="the chain's seed (branches use S+1…)")
    b.add_argument("--out", required=True, metavar="FILE.png")
    _add_tune(sub, cli)


def _add_tune(sub, cli) -> None:
    t = sub.add_parser("tune-steps", help="find the timesteps at which a few-step chain best matches a 50-step one",
                       description="Tune a deterministic sampler's timesteps to one model: --images chains from a "
                       "fixed seed are solved with 50 steps of DPM-Solver++ 2M, and each timestep but the first is "
                       "moved in log-SNR while the few-step chain's images come closer to those (mean squared "
                       "difference, plus that of each pixel's spread over the images). For a run whose training "
                       "images are at hand (or given with --data), the last timestep then goes to 0 if that chain's "
                       "images are closer to them (Frechet distance of 4x4 colour grids). Default: UniPC at 5 "
                       "steps. Prints the timesteps and the `sample` flags that use them.")
    _source(t)
    _sampler_flags(t, cli, "unipc")
    t.add_argument("--images", type=cli._positive_int, default=None, metavar="N",
                   help="chains the error is measured on (default 256)")
    t.add_argument("--data", metavar="DIR", help="the images for the last-step check: a model without a run (a "
                   "diffusers folder), or a run whose image folder moved")
    t.add_argument("--quiet", action="store_true", help="no progress line")


def cmd_tune_steps(args, cli) -> int:
    from ddpm_studio.evaluation.metrics import tuning_images
    from ddpm_studio.sampling import tuning_store
    from ddpm_studio.sampling.tuning import IMAGES, tune_timesteps

    args.sampler = args.sampler or "unipc"
    args.sampling_steps = args.sampling_steps or 5
    loaded = _load(args)
    s = _sampling(args, loaded)

    def status(text: str) -> None:  # one line, rewritten in place
        if not args.quiet:
            print(f"\r{text:<80}", end="", file=sys.stderr, flush=True)

    data, said = tuning_images(loaded, args.data)
    result = tune_timesteps(loaded, s, images=args.images or IMAGES, data=data, data_note=said,
                            progress=lambda chains, error: status(f"chain {chains} tried; error {error:.3e}"),
                            phase=status)
    if not args.quiet:
        print(file=sys.stderr)
    if data is None:
        print(f"last step not checked against the training images: {said}"
              + ("" if args.data else "; give them with --data DIR"))
    else:
        print(f"last step checked against {said} ({len(data):,})")
    print(f"tuned {result.summary()}")
    where = f"--run {args.run}" if args.run else f"--checkpoint {args.checkpoint}" if args.checkpoint \
        else f"--model {args.model}"
    print(f"use them: ddpm-studio sample {where} --sampler {result.sampler} "
          f"--timesteps {','.join(map(str, result.timesteps))} --out DIR")
    try:
        tuning_store.remember(tuning_store.model_key(loaded), s, result)
        print(f"   or: ddpm-studio sample {where} --sampler {result.sampler} --sampling-steps {len(result.timesteps)} "
              "--tuned --out DIR (remembered for this model; the Sampling panel fills them in too)")
    except OSError as e:
        print(f"note: the tuning could not be remembered ({e})", file=sys.stderr)
    return 0


def _load(args):
    from ddpm_studio.artifacts.loading import load_model

    loaded = load_model(args.run or args.checkpoint or args.model, device=args.device)
    for note in loaded.notes:
        print(f"note: {note}", file=sys.stderr)
    return loaded


def _sampling(args, loaded):
    T = loaded.diffusion.T
    steps = args.sampling_steps or sampler_default_steps(args.sampler, T)
    over = {"sampler": args.sampler, "steps": steps, "eta": args.eta}
    if args.spacing:
        over["spacing"] = args.spacing
    s = dataclasses.replace(loaded.config.sampling, **over)
    from .chain import check_sampling

    check_sampling(s, T)
    return s


def _check_out(cli, flag, path, ext):
    if path is None:
        return
    if Path(path).suffix.lower() not in ext:
        raise ValueError(f"{flag} must name a {' or '.join(ext)} file; got {path}")
    cli._check_writable(flag, path, folder=False)


def cmd_compare(args, cli) -> int:
    from ddpm_studio.sampling.export import save_png
    from ddpm_studio.sampling.service import to_uint8

    from . import compare, views

    _check_out(cli, "--out", args.out, (".png",))
    loaded = _load(args)
    from ddpm_studio.sampling import tuning_store

    rows = compare.parse_specs(args.samplers, loaded.config.sampling, loaded.diffusion.T,
                               tunings=lambda: tuning_store.recall_for(loaded))
    done = []
    for row in compare.run_compare(loaded.model, loaded.diffusion, rows, num=args.num, image_shape=loaded.image_shape,
                                   seed=args.seed, device=loaded.device):
        done.append(row)
        if not args.quiet:
            print(f"row {row.index + 1}/{len(rows)}: {row.label}: {row.seconds_per_image:.4f} s/image", file=sys.stderr)
    board = views.board([list(to_uint8(r.images)) for r in done], row_labels=[compare.row_caption(r) for r in done],
                        title=f"seed {args.seed} · {Path(loaded.source).name} (step {loaded.step})")
    save_png(board, args.out)
    print(f"wrote compare board {args.out} ({len(done)} rows of {args.num})")
    return 0


def cmd_interpolate(args, cli) -> int:
    from ddpm_studio.sampling.export import save_png
    from ddpm_studio.sampling.service import to_uint8

    from . import interpolate, views

    if (args.seeds is None) == (args.images is None):
        raise ValueError("give either --seeds A B or --images A.png B.png")
    if args.out is None and args.gif is None:
        raise ValueError("give --out FILE.png and/or --gif FILE.gif")
    if args.frames < 2:
        raise ValueError(f"--frames must be at least 2; got {args.frames}")
    if args.t is not None and args.images is None:
        raise ValueError("--t is for --images (a seed walk starts from pure noise)")
    _check_out(cli, "--out", args.out, (".png",))
    _check_out(cli, "--gif", args.gif, (".gif",))
    if args.sampler is None:  # a seed walk needs a deterministic sampler; the paper decodes images with DDPM
        args.sampler = "ddim" if args.seeds is not None else "ddpm"
    loaded = _load(args)
    s = _sampling(args, loaded)
    shape = loaded.image_shape
    if args.seeds is not None:
        frames = interpolate.seed_walk(loaded.model, loaded.diffusion, s, shape, args.seeds[0], args.seeds[1],
                                       args.frames, device=loaded.device)
        what = f"seeds {args.seeds[0]} → {args.seeds[1]}"
    else:
        a, b = (interpolate.image_to_tensor(interpolate.load_image_for_model(p, shape), shape) for p in args.images)
        t = loaded.diffusion.T // 2 if args.t is None else args.t
        walk = interpolate.noised_pair(loaded.diffusion, s, a, b, t=t, seed=args.seed)
        frames = interpolate.image_walk(loaded.model, loaded.diffusion, s, a, b, t=t, frames=args.frames,
                                        seed=args.seed, device=loaded.device, walk=walk)
        what = f"{Path(args.images[0]).name} → {Path(args.images[1]).name} at t = {walk.t}"
    tiles, caps = [], []
    for f in frames:
        tiles.append(to_uint8(f.image)[0])
        caps.append(f"{f.weight:.2f}")
    if args.out:
        save_png(views.board([tiles], captions=[caps], title=f"{what} · {s.sampler}"), args.out)
        print(f"wrote strip {args.out} ({len(tiles)} frames)")
    if args.gif:
        anim = views.gif_frames([(None, t_) for t_ in tiles + tiles[-2:0:-1]], overlay_t=False)
        n = views.save_animation(anim, args.gif, fps=args.fps, hold_last_sec=0.0)
        print(f"wrote GIF {args.gif} ({n} frames)")
    return 0


def _default_every(n: int) -> int:
    return max(1, -(-n // 12))


def cmd_chain(args, cli) -> int:
    import numpy as np

    from ddpm_studio.sampling.export import save_png

    from . import chain, views

    if not (args.sheet or args.gif or args.apng):
        raise ValueError("give --sheet FILE.png, --gif FILE.gif and/or --apng FILE.png")
    _check_out(cli, "--sheet", args.sheet, (".png",))
    _check_out(cli, "--gif", args.gif, (".gif",))
    _check_out(cli, "--apng", args.apng, (".png", ".apng"))
    args.sampler = args.sampler or "ddpm"
    loaded = _load(args)
    s = _sampling(args, loaded)
    d = loaded.diffusion
    frames = []
    for st in chain.run_chain(loaded.model, d, s, num=args.num, image_shape=loaded.image_shape, seed=args.seed,
                              device=loaded.device):
        frames.append((st.t, [views.grid(v) for v in chain.step_views(d, st)]))
    final = views.grid(_u8(st.x_out))
    frames.append(("result", [final, final, np.full_like(final, 128)]))  # x_0, after the last step
    every = args.every or _default_every(len(frames))
    names = ["x_t", "predicted x̂0", chain.noise_label(d).replace("predicted ", "")]
    if args.sheet:
        sheet = views.contact_sheet(frames, every, view_names=names,
                                    title=f"{s.sampler} · seed {args.seed}")
        save_png(sheet, args.sheet)
        print(f"wrote contact sheet {args.sheet}")
    side = [(t, views.side_by_side(vs)) for t, vs in frames]
    for flag, path in (("--gif", args.gif), ("--apng", args.apng)):
        if path:
            step = max(1, every // 4)
            anim = views.gif_frames(side, overlay_t=args.overlay_t, every=step, min_side=128)
            n = views.save_animation(anim, path, fps=args.fps)
            print(f"wrote {flag[2:].upper()} {path} ({n} frames)")
    return 0


def _u8(x):
    from ddpm_studio.sampling.service import to_uint8

    return to_uint8(x)


def cmd_branch(args, cli) -> int:
    from ddpm_studio.sampling.export import save_png

    from . import branch, chain, views

    _check_out(cli, "--out", args.out, (".png",))
    try:
        at = sorted({int(x) for x in args.at.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--at must be comma-separated step numbers; got {args.at!r}") from None
    if not at:
        raise ValueError("--at needs at least one step")
    args.sampler = args.sampler or "ddpm"
    loaded = _load(args)
    s = _sampling(args, loaded)
    d = loaded.diffusion
    total = len(chain.sampler_timesteps(d, s))
    bad = [k for k in at if not 0 <= k < total]
    if bad:
        raise ValueError(f"--at: this chain has steps 0 to {total - 1}; got {bad[0]}")
    steps = {st.index: st for st in chain.run_chain(loaded.model, d, s, num=1, image_shape=loaded.image_shape,
                                                    seed=args.seed, device=loaded.device, keep=lambda i, n: i in at)}
    rows, labels, caps = [], [], []
    for j, k in enumerate(at):
        st = steps[k]
        if args.renoise_t is not None:
            r = branch.renoise(loaded.model, d, s, st.pred_x0, t=args.renoise_t, count=args.branches,
                               seed=args.seed + 1 + j, device=loaded.device)
            outs, how = r.x0, f"x̂0 re-noised to t={r.t}"
        else:
            outs = branch.rerun_rest(loaded.model, d, s, st, count=args.branches, seed=args.seed + 1 + j,
                                     device=loaded.device)
            how = "rest rerun, new noise"
        xt, x0, _ = chain.step_views(d, st)
        rows.append([xt[0], x0[0]] + list(_u8(outs)))
        labels.append([f"step {k} (t = {st.t})", how])
        caps.append(["x_t", "x̂0"] + [f"#{i + 1}" for i in range(args.branches)])
    save_png(views.board(rows, row_labels=labels, captions=caps, title=f"{s.sampler} · seed {args.seed}"), args.out)
    print(f"wrote branch strips {args.out} ({len(at)} branch point(s) × {args.branches})")
    return 0


COMMANDS = {"compare": cmd_compare, "interpolate": cmd_interpolate, "chain": cmd_chain, "branch": cmd_branch,
            "tune-steps": cmd_tune_steps}
