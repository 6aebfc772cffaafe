"""Command line: ``ddpm-studio COMMAND`` (no command opens the window), with COMMAND one of
``train|sample|info|export|compare|interpolate|chain|branch|eval|nearest|timelapse|doctor``.

Errors are one line on stderr with no traceback: exit status 2 for bad usage, 1 for input that
was refused (a missing folder, a damaged checkpoint, an invalid setting).

Length (over 500 lines, on purpose): every subcommand with its usage text, messages and exit statuses
in one place, as ``--help`` shows them; the flags of the settings themselves come from the config schema.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ddpm_studio import __version__
from ddpm_studio.config import (DEVICES, PRESETS, SAMPLER_INFO, DataConfig, DiffusionConfig, ModelConfig, RunConfig,
                                SamplingConfig, Setting, TrainConfig, describe_sampling, sampler_default_steps,
                                default_preset, settings_of)

PROG = "ddpm-studio"


def _of_total(steps: int | None) -> str:
    """' of N' for a run's total steps, nothing for a run trained by the clock (--minutes only)."""
    return "" if steps is None else f" of {steps:,}"

GIF_MIN_SIDE = 256  # the chain GIF is enlarged (whole pixels) to at least this width


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    return _parse_int(text, 1)


def _nonneg_int(text: str) -> int:
    return _parse_int(text, 0)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text}")
    return v


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if math.isnan(v) or math.isinf(v):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text}")
    return v


def _parse_int(text: str, lo: float | None, hi: float | None = None) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number; got {text!r}") from None
    if hi is not None and lo is not None and not lo <= v <= hi:
        raise argparse.ArgumentTypeError(f"expected a whole number from {int(lo)} to {int(hi)}; got {v}")
    if lo is not None and lo >= 0 and v < min(lo, 1):
        raise argparse.ArgumentTypeError(f"expected a whole number >= {min(int(lo), 1)}; got {v}")
    return v


def _value_parser(setting: Setting) -> Callable[[str], Any]:
    """Turn a flag's text into the field's value; the range itself is validate()'s (exit status 1)."""
    lo, hi = setting.knob.lo, setting.knob.hi
    # a side no network accepts is bad usage (exit 2), as argparse's own checks; other ranges are validate()'s
    whole_range = setting.key == "data.image_size"

    def parse(text: str) -> Any:
        if setting.nullable and text.strip().lower() in ("none", "auto", "off"):
            return None
        if setting.kind == "int":
            return _parse_int(text, lo, hi if whole_range else None)
        if setting.kind == "float":
            return _positive_float(text) if lo is not None and lo > 0 else _float(text)
        if setting.kind.startswith("tuple["):
            if text.startswith("@"):
                text = _numbers_file(text[1:])
            parts = [p for p in text.replace(" ", ",").replace("\n", ",").split(",") if p]
            if text.strip().lower() == "none":
                return ()
            one = int if setting.kind == "tuple[int, ...]" else float
            try:
                return tuple(one(p) for p in parts)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 1,2,2; got "
                                                 f"{text!r}") from None
        return text

    parse.__name__ = setting.kind  # argparse names the type in its "invalid ... value" message
    return parse


def _numbers_file(path: str) -> str:
    """The numbers in ``path`` (a JSON list, or numbers separated by commas, spaces or lines) as text."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror or exc}") from None
    if text.lstrip().startswith("["):
        try:
            return ",".join(str(float(v)) for v in json.loads(text))
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"{path} is not a JSON list of numbers") from None
    return text


# What the CLI says about a flag besides the field's own help line.
_EXTRA_HELP = {
    "sampling.sampler": "; ".join(f"{name}: {info['hint']}" for name, info in SAMPLER_INFO.items()),
    "sampling.steps": "default: with --sampler, that sampler's own default ("
                      + ", ".join(f"{name} {info['default_steps']}" for name, info in SAMPLER_INFO.items()
                                  if info["default_steps"]) + "); else the run's",
    "sampling.num_images": "default 16",
}


def add_schema_flags(parser: argparse.ArgumentParser, *sections: type) -> list[tuple[Setting, str]]:
    """One flag per field of ``sections`` that has one; returns (setting, argparse dest) pairs.

    Every flag defaults to None ("not given": the preset's, the config file's or the run's value stays).
    Booleans are ``--flip/--no-flip``; ``none`` clears a field that may be empty.
    """
    groups: dict[str, Any] = {}
    out = []
    for section in sections:
        for setting in settings_of(section):
            if setting.flag is None:
                continue
            target = parser
            if setting.knob.exclusive:
                if setting.knob.exclusive not in groups:
                    groups[setting.knob.exclusive] = parser.add_mutually_exclusive_group()
                target = groups[setting.knob.exclusive]
            words = setting.knob.help + (f" ({_EXTRA_HELP[setting.key]})" if setting.key in _EXTRA_HELP else "")
            kw: dict[str, Any] = dict(default=None, help=words.replace("%", "%%"))
            if setting.kind == "bool":
                kw["action"] = argparse.BooleanOptionalAction
            elif setting.choices:
                kw["choices"] = setting.choices
                kw["type"] = type(setting.choices[0])
                kw["metavar"] = "|".join(map(str, setting.choices))
            else:
                kw["type"] = _value_parser(setting)
                kw["metavar"] = setting.knob.metavar
            action = target.add_argument(setting.flag, **kw)
            out.append((setting, action.dest))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Train a denoising diffusion probabilistic model (Ho et al. 2020) "
                     "on your own images and sample from it. With no command, opens the window.")
    parser.add_argument("--version", "-V", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    _add_train(sub)
    _add_sample(sub)
    _add_export(sub)
    _add_info(sub)
    from ddpm_studio.lab import cli_commands as lab_commands  # compare, interpolate, chain, branch (issue 16)

    lab_commands.add_commands(sub, sys.modules[__name__])
    from ddpm_studio.evaluation.cli_commands import add_parsers  # eval, nearest, timelapse, doctor (issue 17)

    add_parsers(sub, _positive_int, _positive_float)
    return parser


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train a model (a new run, or --resume one)",
                       description="Train a model on an image folder (or the built-in set). Flags left out "
                       "take the preset's values; with --resume they keep the run's own values. Under "
                       "torchrun (--nproc_per_node K) training uses DistributedDataParallel and "
                       "--batch-size is the global batch, split evenly across the K processes.")
    t.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to create (or to resume)")
    t.add_argument("--config", metavar="FILE", help="start from a full config.json (flags still override it)")
    t.add_argument("--preset", choices=tuple(PRESETS),
                   help="model shape and training defaults (default: tiny, or tiny-32 from --image-size 32 up)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its newest good checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(schema_flags=add_schema_flags(t, ModelConfig, DiffusionConfig, DataConfig, TrainConfig))


def _add_sample(sub) -> None:
    s = sub.add_parser("sample", help="generate images from a run or a checkpoint",
                       description="Generate images with the EMA weights of a run's newest good checkpoint "
                       "(or of one checkpoint file). Writes --num PNG files at the model's resolution into "
                       "--out, and optionally a grid and an animated GIF of the reverse chain. Images are "
                       "made in batches of --batch-size; batch i starts from the noise of seed S+i. Sampling "
                       "flags left out take the run's own values.")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="RUN_DIR", help="a run folder (its newest good checkpoint)")
    src.add_argument("--checkpoint", metavar="FILE", help="a .safetensors checkpoint file")
    src.add_argument("--model", metavar="FOLDER",
                     help="a Hugging Face diffusers model folder (DDPMPipeline/DDIMPipeline, or a UNet2DModel "
                     "folder), already on disk: nothing is ever downloaded")
    s.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files")
    s.add_argument("--batch-size", type=_positive_int, default=64, metavar="B", help="images per batch (default 64)")
    s.add_argument("--device", choices=DEVICES, default="auto", help="default auto")
    s.add_argument("--grid", metavar="FILE.png", help="also write all images as one grid PNG")
    s.add_argument("--upscale", type=_positive_int, default=1, metavar="N",
                   help="enlarge the PNG files and the grid N times with crisp nearest-neighbour pixels "
                   "(default 1: the model's resolution)")
    s.add_argument("--gif", metavar="FILE.gif",
                   help="also write an animated GIF of the reverse chain of the first batch (at most 64 "
                   "images, as a grid enlarged to >= 256 px wide). It shows every k-th step with "
                   "k = ceil(steps / --gif-frames), plus the last step, so it has at most "
                   "--gif-frames + 1 frames; the final image is held for one second")
    s.add_argument("--gif-frames", type=_positive_int, default=60, metavar="F", help="chain frames in the GIF "
                                                                                     "(default 60)")
    s.add_argument("--gif-fps", type=_positive_float, default=20.0, metavar="FPS", help="GIF frame rate (default 20)")
    s.add_argument("--tuned", action="store_true",
                   help="visit the timesteps that tune-steps found for this model, sampler, step count and x_0 "
                   "clipping (remembered on this computer); refused when there are none")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(schema_flags=add_schema_flags(s, SamplingConfig))


def _add_export(sub) -> None:
    e = sub.add_parser("export", help="write a run or a checkpoint as a diffusers model folder",
                       description="Write the EMA weights of a run's newest good checkpoint (or of one checkpoint "
                       "file) as a Hugging Face diffusers DDPMPipeline folder: model_index.json, unet/ and "
                       "scheduler/. diffusers.DDPMPipeline.from_pretrained(FOLDER) loads it.")
    esrc = e.add_mutually_exclusive_group(required=True)
    esrc.add_argument("--run", metavar="RUN_DIR", help="a run folder (its newest good checkpoint)")
    esrc.add_argument("--checkpoint", metavar="FILE", help="a .safetensors checkpoint file")
    e.add_argument("--format", choices=("diffusers",), default="diffusers", help="the only format: diffusers")
    e.add_argument("--out", required=True, metavar="FOLDER", help="folder to create (must be empty or new)")
    e.add_argument("--overwrite", action="store_true", help="replace the files of an existing export in --out")


def _add_info(sub) -> None:
    i = sub.add_parser("info", help="show a run's or a checkpoint's config, step and size",
                       description="Print the config, the step count and the parameter count of a run "
                       "folder (its newest good checkpoint) or of a checkpoint file.")
    i.add_argument("path", metavar="RUN_DIR|FILE")
    i.add_argument("--json", action="store_true", help="print the full config as JSON too")


# -- train --------------------------------------------------------------------------------------


def _train_config(args: argparse.Namespace) -> RunConfig:
    out = Path(args.out)
    if args.resume:
        from ddpm_studio.artifacts.runs import read_config

        cfg = read_config(out)
    elif args.config:
        try:
            cfg = RunConfig.load(args.config)
        except FileNotFoundError:
            raise ValueError(f"config file not found: {args.config}") from None
        if args.preset:
            raise ValueError("give either --config or --preset, not both")
    else:
        size = next((getattr(args, dest) for setting, dest in args.schema_flags if setting.key == "data.image_size"),
                    None)
        cfg = RunConfig.from_preset(args.preset or default_preset(size or DataConfig().image_size))
    if args.resume and args.preset and args.preset != cfg.model.preset:
        raise ValueError(f"--preset {args.preset} differs from the run's preset {cfg.model.preset}; "
                         "a resumed run keeps its model")
    sections: dict[str, dict[str, Any]] = {"model": {}, "data": {}, "diffusion": {}, "train": {}}
    for setting, dest in args.schema_flags:
        value = getattr(args, dest)
        if value is None or value == getattr(getattr(cfg, setting.section), setting.name):
            continue
        if args.resume and setting.section in ("model", "diffusion"):
            raise ValueError(f"{setting.flag}: a resumed run keeps its {setting.section} settings "
                             f"({setting.key} is {getattr(getattr(cfg, setting.section), setting.name)!r})")
        sections[setting.section][setting.name] = value
    folder = sections["data"].get("folder")
    if folder is not None:
        sections["data"]["folder"] = _data_path(folder)
    if sections["model"]:
        sections["model"]["preset"] = "custom"
    if args.minutes is not None and args.steps is None and not args.resume:
        sections["train"]["steps"] = None  # the clock ends the run
    if args.steps is not None and not args.resume:
        sections["train"]["minutes"] = None
    for section, values in sections.items():
        if values:
            setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **values))
    cfg.sync()
    cfg.validate()
    return cfg


def _data_path(folder: str) -> str:
    """--data resolved: a folder of images, or one image file; anything else is refused."""
    from ddpm_studio.data.decode import IMAGE_EXTENSIONS

    data = Path(folder)
    if data.is_file() and data.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"--data: {folder} is a file, not an image; give a folder of images (or one image file)")
    if not data.exists():
        raise ValueError(f"--data: folder not found: {folder}")
    return str(data.resolve())


class _TrainReporter:
    """Turns trainer events into a tqdm bar (terminal) or occasional plain lines (logs).

    The bar runs over the steps, or over the clock for a run that only ``--minutes`` ends, and
    says the time left in words. A "saved" line is held back until training goes on, so the last
    checkpoint is named once, by the closing message.
    """

    BAR_FORMAT = "{percentage:3.0f}%|{bar}| {desc}"

    def __init__(self, quiet: bool, minutes: float | None = None) -> None:
        self.quiet = quiet
        self.limit_sec = minutes * 60.0 if minutes else None
        self.bar = None
        self.by_clock = False
        self.tty = sys.stderr.isatty()
        self.last_line = 0.0
        self.last_step = 0
        self.pending_save: str | None = None

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def _flush_save(self) -> None:
        if self.pending_save is not None:
            self.write(f"saved {self.pending_save}")
            self.pending_save = None

    def __call__(self, event: object) -> None:
        from ddpm_studio.training.events import (CheckpointSaved, PreviewReady, StepMetrics,
                                                 TrainStarted)

        if isinstance(event, TrainStarted):
            self._started(event)
        elif isinstance(event, StepMetrics):
            self._metrics(event)
        elif isinstance(event, CheckpointSaved):
            if not self.quiet:
                self._flush_save()
                self.pending_save = event.path
        elif isinstance(event, PreviewReady):
            pass  # written to RUN_DIR/samples by the trainer

    def _started(self, event) -> None:
        from ddpm_studio.data.report import describe_skipped

        what = "Resuming" if event.resumed else "Training"
        for note in event.notes:
            self.write(f"note: {note}")
        for line in describe_skipped(event.skipped, where=str(Path(event.run_dir) / "run.json")):
            self.write(line)
        of = _of_total(event.total_steps)
        limit = f", for {self.limit_sec / 60:g} min" if self.limit_sec else ""
        self.write(f"{what} {event.run_dir}: {event.num_parameters:,} parameters, {event.num_images:,} images, "
                   f"on {event.device} ({event.precision}), step {event.start_step:,}{of}{limit}")
        self.last_step = event.start_step
        if not self.quiet and self.tty:
            from tqdm import tqdm

            # with --minutes alone the clock decides: the bar runs over the time instead of the steps
            self.by_clock = self.limit_sec is not None and event.total_steps is None
            total = self.limit_sec if self.by_clock else event.total_steps
            self.bar = tqdm(total=total, initial=0 if self.by_clock else event.start_step, dynamic_ncols=True,
                            file=sys.stderr, bar_format=self.BAR_FORMAT, desc=f"step {event.start_step:,}")

    def _metrics(self, event) -> None:
        from ddpm_studio.durations import format_time_left

        self._flush_save()
        of = "" if event.total_steps is None else f"/{event.total_steps:,}"
        left = format_time_left(event.eta_sec)
        text = (f"step {event.step:,}{of} · loss {event.loss_smooth:.4f} · {event.images_per_sec:.0f} img/s"
                + (f" · {left}" if left else ""))
        if self.bar is not None:
            if self.by_clock:
                self.bar.update(min(event.elapsed_sec, self.bar.total) - self.bar.n)
            else:
                self.bar.update(event.step - self.last_step)
            self.bar.set_description_str(text, refresh=True)
        elif not self.quiet and (time.monotonic() - self.last_line > 10 or event.step == event.total_steps):
            self.last_line = time.monotonic()
            self.write(text)
        self.last_step = event.step

    def close(self, final_checkpoint: str | None = None) -> None:
        """End the bar; name a held-back save unless it is ``final_checkpoint`` (the closing message names that)."""
        if self.bar is not None:
            if self.by_clock and final_checkpoint is not None:
                self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()
            self.bar = None
        if self.pending_save is not None and final_checkpoint is not None \
                and Path(self.pending_save).resolve() == Path(final_checkpoint).resolve():
            self.pending_save = None
        self._flush_save()


def cmd_train(args: argparse.Namespace) -> int:
    from ddpm_studio.training.trainer import Trainer, TrainControl

    cfg = _train_config(args)
    rank = int(os.environ.get("RANK", "0") or 0)
    control = TrainControl()
    reporter = _TrainReporter(quiet=args.quiet or rank != 0, minutes=cfg.train.minutes)
    interrupts = []

    def on_sigint(signum, frame):  # first Ctrl+C: stop after this step and save; second: quit now
        interrupts.append(signum)
        if len(interrupts) > 1:
            raise KeyboardInterrupt
        control.stop()
        if rank == 0:
            reporter.write("stopping after this step and saving a checkpoint (Ctrl+C again to quit at once)")

    previous = signal.signal(signal.SIGINT, on_sigint) if _in_main_thread() else None
    finished = None
    try:
        from ddpm_studio.evaluation.cli_commands import train_listener

        listener = train_listener(args, cfg, reporter) if rank == 0 else reporter
        finished = Trainer(cfg, args.out, resume=args.resume).run(control, listener)
    finally:
        reporter.close(finished.checkpoint if finished is not None else None)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if rank == 0:
        stream = sys.stderr if finished.reason.failed else sys.stdout
        print(finished.message, file=stream)
    if finished.reason.failed:
        return 1
    return 130 if interrupts else 0


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# -- sample -------------------------------------------------------------------------------------


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from ddpm_studio.artifacts.loading import load_model
    from ddpm_studio.sampling.export import make_grid, save_gif, save_png, upscale_nearest

    for flag, value, ext in (("--grid", args.grid, ".png"), ("--gif", args.gif, ".gif")):
        if value and Path(value).suffix.lower() != ext:
            raise ValueError(f"{flag} must name a {ext} file; got {value}")
    # Every output must be writable before the work starts (not found out after the PNGs are written).
    _check_writable("--out", args.out, folder=True)
    for flag, value in (("--grid", args.grid), ("--gif", args.gif)):
        if value:
            _check_writable(flag, value, folder=False)
    loaded = load_model(args.run or args.checkpoint or args.model, device=args.device)
    for note in loaded.notes:
        print(f"note: {note}", file=sys.stderr)
    sampling = _sampling_from_flags(args, loaded)
    if args.tuned:
        sampling = _remembered_tuning(loaded, sampling, args.quiet)
    T = loaded.diffusion.T
    total_steps = T if sampling.sampler == "ddpm" else sampling.steps
    if not args.quiet:
        print(f"sampling {sampling.num_images} image(s): {describe_sampling(sampling, T)}", file=sys.stderr)
    out = Path(args.out)
    stride = max(1, math.ceil(total_steps / args.gif_frames))
    images_all, frames, written = _sample_batches(args, loaded, sampling, out, total_steps, stride)
    _write_sampling_record(out, loaded, sampling, len(written))
    h, w = images_all[0].shape[1] * args.upscale, images_all[0].shape[2] * args.upscale
    print(f"wrote {len(written)} image(s) of {w}x{h} px to {out} (settings in {out / SAMPLING_RECORD})")
    if args.grid:
        grid = upscale_nearest(make_grid(np.concatenate(images_all)), args.upscale)
        save_png(grid, args.grid)
        print(f"wrote grid {args.grid} ({grid.shape[1]}x{grid.shape[0]} px)")
    if args.gif:
        factor = max(1, math.ceil(GIF_MIN_SIDE / frames[0].shape[1]))
        count = save_gif((upscale_nearest(f, factor) for f in frames), args.gif, fps=args.gif_fps)
        print(f"wrote GIF {args.gif} ({count} frames, every {stride} step(s) of {total_steps})")
    return 0


def _sampling_from_flags(args: argparse.Namespace, loaded) -> SamplingConfig:
    """The run's sampling settings with the flags given on top (a chosen sampler brings its step count)."""
    overrides = {setting.name: getattr(args, dest) for setting, dest in args.schema_flags
                 if getattr(args, dest) is not None}
    T = loaded.diffusion.T
    if args.sampler is not None and args.sampling_steps is None:
        overrides["steps"] = sampler_default_steps(args.sampler, T)
    if overrides.get("timesteps") and args.sampling_steps is None:
        overrides["steps"] = len(overrides["timesteps"])  # one step per timestep given
    overrides.setdefault("num_images", SamplingConfig.num_images)
    sampling = dataclasses.replace(loaded.config.sampling, **overrides)
    sampling.validate()
    if sampling.sampler != "ddpm" and sampling.steps > T:
        raise ValueError(f"--sampling-steps ({sampling.steps}) cannot exceed the model's T ({T})")
    return sampling


def _remembered_tunings_lines(path: Path) -> list[str]:
    """``info``'s lines for the tunings remembered for the weights ``sample`` would use from ``path``."""
    from ddpm_studio.artifacts.loading import load_model
    from ddpm_studio.sampling import tuning_store

    try:
        entries = tuning_store.recall_for(load_model(path, device="cpu"))
    except (ValueError, OSError):
        return []
    return [f"tuned:       {e['match']['sampler']}, {len(e['timesteps'])} steps: "
            f"{','.join(map(str, e['timesteps']))} (tuned {e.get('tuned_at', '?')}; sample --tuned uses it)"
            for e in entries]


def _remembered_tuning(loaded, sampling: SamplingConfig, quiet: bool) -> SamplingConfig:
    """``sampling`` with the timesteps tune-steps remembered for this model and these settings."""
    from ddpm_studio.sampling import tuning_store

    if sampling.timesteps:
        raise ValueError("--tuned and --timesteps both say which timesteps to visit; give one")
    found = tuning_store.find(tuning_store.recall_for(loaded), sampling)
    if found is None:
        raise ValueError(f"no tuned timesteps remembered for this model with {sampling.sampler} at "
                         f"{sampling.steps} steps (and this x_0 clipping); run tune-steps with the same flags first")
    if not quiet:
        print(f"note: timesteps tuned on {found['tuned_at']}: {', '.join(map(str, found['timesteps']))}",
              file=sys.stderr)
    return dataclasses.replace(sampling, timesteps=tuple(found["timesteps"]))


def _sample_batches(args: argparse.Namespace, loaded, sampling: SamplingConfig, out: Path, total_steps: int,
                    stride: int) -> tuple[list, list, list[Path]]:
    """Generate and save the images batch by batch: (images per batch, GIF frames, files written)."""
    from ddpm_studio.sampling.export import make_grid, save_pngs, upscale_nearest
    from ddpm_studio.sampling.service import generate, to_uint8

    n_all = sampling.num_images
    batches = [min(args.batch_size, n_all - i) for i in range(0, n_all, args.batch_size)]
    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(batches) * total_steps, unit="step", dynamic_ncols=True, file=sys.stderr,
                   desc=f"sampling {n_all} image(s)")
    written: list[Path] = []
    images_all, frames = [], []
    try:
        for b, n in enumerate(batches):
            last = None
            for last in generate(loaded, sampling, num_images=n, seed=sampling.seed + b):
                if bar is not None:
                    bar.update(1)
                if args.gif and b == 0 and (last.index % stride == 0 or last.index == last.total - 1):
                    frames.append(make_grid(to_uint8(last.x_t[:64])))
            images = to_uint8(last.x_t)
            images_all.append(images)
            big = upscale_nearest(images, args.upscale)  # (n, H*k, W*k, C)
            written += save_pngs(big, out, prefix="sample", start=sum(batches[:b]))
    finally:
        if bar is not None:
            bar.close()
    return images_all, frames, written


def _check_writable(flag: str, path: str, *, folder: bool) -> None:
    """Raise ValueError unless ``path`` (a folder or a file) can be created or overwritten.

    Tries it: a temporary file is created and removed in the folder that will hold the output (or
    in the nearest existing folder above it), so a read-only disk is found even when the
    permission bits (or running as root) say otherwise.
    """
    import tempfile

    p = Path(path).expanduser()
    if p.exists():
        if folder and not p.is_dir():
            raise ValueError(f"{flag}: {p} is a file, not a folder")
        if not folder and p.is_dir():
            raise ValueError(f"{flag}: {p} is a folder; give a file name")
    probe = p if folder else p.parent
    while not probe.exists():  # the folders we would create: try the nearest one that exists
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"{flag}: cannot create {p}: {probe} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".ddpm-studio-write-test-"):
            pass
        if not folder and p.exists():
            with open(p, "ab"):
                pass
    except OSError as e:
        raise ValueError(f"{flag}: cannot write {p} ({e.strerror or e}); nothing was generated") from None


SAMPLING_RECORD = "sampling.json"  # written beside the PNGs: what made them


def _write_sampling_record(out: Path, loaded, sampling, count: int) -> None:
    import dataclasses
    import json

    from ddpm_studio.config import atomic_write_text

    record = {"source": loaded.source, "model_step": loaded.step, "images": count,
              "sampling": dataclasses.asdict(sampling), "description": describe_sampling(sampling, loaded.diffusion.T)}
    atomic_write_text(out / SAMPLING_RECORD, json.dumps(record, indent=2) + "\n")


# -- info ---------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from ddpm_studio.artifacts.loading import export_diffusers

    out = export_diffusers(args.run or args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"wrote a diffusers DDPMPipeline folder: {out}")
    return 0


def _inspect_checkpoints(path: Path) -> tuple[Any, list[str]]:
    """(metadata of the checkpoint sampling and --resume would use, or None; lines saying so).

    Runs the verification they run (both checksums, sizes, shapes, the state file), newest first.
    """
    from ddpm_studio.artifacts import checkpoints as ckpts

    found = ckpts.list_checkpoints(path)
    lines: list[str] = []
    for_sampling = None
    for p in reversed(found):
        try:
            got = ckpts.verify_checkpoint(p, with_state=False)
        except ckpts.CheckpointError as e:
            lines.append(f"damaged:     {e}")
            continue
        if for_sampling is None:
            for_sampling = (p, got)
        try:
            ckpts.verify_checkpoint(p, with_state=True)
        except ckpts.CheckpointError as e:
            lines.append(f"damaged:     {e} (sample can use {p.name}; --resume cannot)")
            continue
        step, cfg, meta = got
        health = "" if ckpts.is_healthy(meta) else "; saved while the loss was rising"
        where = "sample and --resume use" if for_sampling[0] == p else "--resume uses"
        lines.append(f"checkpoint:  {p.name} (step {step:,}{_of_total(cfg.train.steps)}, verified{health}); "
                     f"{where} it; {len(found)} on disk")
        if for_sampling[0] != p:
            lines.append(f"checkpoint:  sample uses {for_sampling[0].name} (step {for_sampling[1][0]:,})")
        return got, lines
    if for_sampling is not None:
        step, cfg, _ = for_sampling[1]
        lines.append(f"checkpoint:  sample uses {for_sampling[0].name} (step {step:,}); no checkpoint can be resumed "
                     f"from")
        return for_sampling[1], lines
    lines.append("checkpoint:  none usable" + (f" ({len(found)} on disk, all damaged)" if found else " yet"))
    return None, lines


def cmd_info(args: argparse.Namespace) -> int:
    from ddpm_studio import footprint
    from ddpm_studio.artifacts import checkpoints as ckpts
    from ddpm_studio.artifacts import runs

    path = Path(args.path)
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    lines = []
    status = 0
    if path.is_dir():
        if not runs.is_run_dir(path):
            raise ValueError(f"{path} is not a run folder (no config.json or checkpoints/)")
        lines.append(f"run:         {path}")
        got, found_lines = _inspect_checkpoints(path)
        lines += found_lines
        if got is not None:
            step, cfg, _ = got
        else:
            cfg, step = runs.read_config(path), 0
            status = 1 if ckpts.list_checkpoints(path) else 0
        info = runs.read_run_info(path)
        ds = info.get("dataset") or {}
        if ds:
            lines.append(f"dataset:     {ds.get('source')} ({ds.get('num_images')} images, fingerprint "
                         f"{ds.get('fingerprint')})")
        metrics = runs.read_metrics(path)
        if metrics:
            lines.append(f"last loss:   {metrics[-1].get('loss_smooth', float('nan')):.4f} (smoothed, step "
                         f"{metrics[-1].get('step')})")
    else:
        has_state = ckpts.state_path_for(path).exists() if path.name.endswith(".safetensors") else False
        step, cfg, _ = ckpts.verify_checkpoint(path, with_state=has_state)
        lines.append(f"checkpoint:  {path} (step {step:,}{_of_total(cfg.train.steps)}, verified)")
    m, d = cfg.model, cfg.diffusion
    n_params = footprint.parameter_count(m)
    p = m.patch_size
    patched = f" on {p}x{p} patches ({m.image_size // p} px inside)" if p > 1 else ""
    lines.append(f"model:       preset {m.preset}, {m.image_size} px{patched}, {m.in_channels} channel(s), "
                 f"base {m.base_channels}, mult {tuple(m.channel_mult)}, {m.num_res_blocks} res block(s), "
                 f"attention at {tuple(m.attention_resolutions)} px, {n_params:,} parameters")
    sched = (f"explicit betas ({d.betas[0]:.3g} to {d.betas[-1]:.3g}; closest named schedule {d.schedule})"
             if d.betas is not None else f"{d.schedule} schedule")
    lines.append(f"diffusion:   {sched}, T={d.timesteps}, predicts {d.prediction}, loss weighting {d.loss_weighting}")
    tc = cfg.train
    cool = f", cool-down over the last {tc.lr_cooldown:.0%}" if tc.lr_cooldown else ""
    lines.append(f"training:    batch {tc.batch_size}, lr {tc.lr:g}{cool}, warm-up {tc.warmup_steps}, "
                 f"EMA {tc.ema_decay}, "
                 f"seed {tc.seed}, " + ("no step limit (trained by the clock)" if tc.steps is None
                                        else f"steps {tc.steps:,}"))
    lines.append(f"memory:      {footprint.estimate(m, batch_size=tc.batch_size, training=True).describe()}")
    lines.append(f"sampling:    {describe_sampling(cfg.sampling, d.timesteps)} (sample's defaults); "
                 f"previews: {tc.preview_sampler}, {tc.preview_sampling_steps} steps")
    if status == 0:
        lines += _remembered_tunings_lines(path)
    print("\n".join(lines))
    if args.json:
        print(cfg.to_json())
    return status


# -- entry --------------------------------------------------------------------------------------


def _launch_gui(argv: list[str]) -> int:
    try:
        from ddpm_studio.gui.app import main as gui_main
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("ddpm_studio.gui"):
            print(f"{PROG}: the window is not available in this build; use a command "
                  f"({PROG} --help)", file=sys.stderr)
            return 1
        raise
    return int(gui_main(list(argv)) or 0)  # gui.app.main parses its own options (no program name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version", "-V")):
        return _launch_gui(argv)  # no command: the window, with its own options (--smoke, --no-dataset)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from ddpm_studio.evaluation.cli_commands import COMMANDS as EVALUATION_COMMANDS

    command = {"train": cmd_train, "sample": cmd_sample, "info": cmd_info, "export": cmd_export,
               **EVALUATION_COMMANDS}.get(args.command)
    if command is None:  # the lab's commands (issue 16)
        from ddpm_studio.lab.cli_commands import COMMANDS as LAB_COMMANDS

        command = lambda a: LAB_COMMANDS[args.command](a, sys.modules[__name__])  # noqa: E731
    try:
        return command(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # CheckpointError and DatasetError are ValueErrors
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 1
