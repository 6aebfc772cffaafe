"""The Lab panel's decisions and state, without Qt.

The panel (``gui/panels/lab_panel.py``) is a view over a :class:`LabSession`: it forwards clicks and
the workers' results here and renders what the session says — which model a job uses and whether
one may start, the compare rows so far, the chain's recorded frames behind the scrubber, the branch
strips, the interpolation frames and the weight slider, the export file names, which buttons are
enabled, the status lines. Tests drive the session directly (tests/test_lab_session.py).

One job runs at a time (compare, chain, branch or interpolate): :meth:`LabSession.begin`, then
:meth:`item` for each batch the worker emits, then one of :meth:`succeeded` / :meth:`cancelled` /
:meth:`failed`, then :meth:`finish`. Beside it, the exact interpolation frame at the slider's weight
is computed one at a time: while one is computing, only the latest position asked for waits
(:meth:`show_weight`, :meth:`exact_landed`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import SamplingConfig, sampler_default_steps
from ..engine.choices import Choice
from .records import BoardUpdate, BranchRow, ExactFrame, InterpFrame, InterpResult, LabChain, LabFrame, LabModelReady

DEFAULT_SPECS = "ddim:50,dpmpp-2m:20,ddpm"
DEFAULT_T = 1000  # the T the settings assume before a model is loaded
WEIGHT_STEPS = 100  # the weight slider's positions 0 … 100 are the weights 0.00 … 1.00


class Job(Choice):
    COMPARE = "compare"
    CHAIN = "chain"
    BRANCH = "branch"
    INTERPOLATE = "interpolate"


START_MESSAGES = {Job.COMPARE: "Comparing samplers…", Job.CHAIN: "Running the chain…",
                  Job.INTERPOLATE: "Interpolating…"}


@dataclass(frozen=True)
class Buttons:
    """Which of the panel's controls are enabled (``images_mode``: the image-interpolation row is shown)."""

    compare: bool
    chain: bool
    interpolate: bool
    branch: bool
    branch_t: bool
    export_board: bool
    sheet: bool
    animation: bool
    export_strips: bool
    export_strip: bool
    export_walk: bool
    generated: bool
    chain_slider: bool
    weight_slider: bool
    images_mode: bool


@dataclass(frozen=True)
class ExportTarget:
    """A Save dialog's title, file filter, suggested file name and the extensions it accepts (first: default)."""

    title: str
    filter: str
    name: str
    exts: tuple[str, ...]

    def path_for(self, chosen: str) -> str:
        """The chosen path, with the default extension added when it has none of ours."""
        return chosen if Path(chosen).suffix.lower() in self.exts else chosen + self.exts[0]


@dataclass(frozen=True)
class BranchPlan:
    index: int  # the recorded step to branch from
    t: int  # its timestep
    mode: str  # "rest" (new noise) or "renoise" (x̂0 to t)
    count: int
    renoise_t: int
    seed: int
    message: str


@dataclass(frozen=True)
class WeightView:
    """What the interpolation view shows at a slider position, and whether a computation starts."""

    position: int
    weight: float
    image: np.ndarray | None
    caption: str
    compute: int | None = None  # a slider position whose exact frame the panel should compute now


def weight_at(position: int) -> float:
    return int(position) / WEIGHT_STEPS


def position_of(weight: float) -> int:
    return int(round(float(weight) * WEIGHT_STEPS))


class LabSession:
    """The Lab's model, its one running job, and what each mode has produced so far."""

    def __init__(self) -> None:
        self.model_path: str | None = None  # a run folder, checkpoint or diffusers folder
        self.loaded: Any = None  # its LoadedModel, once a job has loaded it
        self.running: Job | None = None
        self.result: Any = None  # what the last job returned (None: refused, cancelled or failed)
        self.status = ""
        self.seeds: dict[Job, int] = {}  # the seed of the last compare, chain and interpolation (names, branches)
        self.board: np.ndarray | None = None  # the compare board on screen
        self.compare_rows: list[list[str]] = []  # each row's label and seconds per image, so far
        self.board_updates = 0
        self.frames: list[LabFrame] = []
        self.chain: LabChain | None = None
        self.branch_rows: list[BranchRow] = []
        self.branch_board: np.ndarray | None = None
        self.interp = InterpResult()
        self.image_sources: list = [None, None]  # per end: a file path, a generated uint8 image, or None (dataset)
        self._reset_weights()
        self.walk_id = 0
        self.walk_loaded: Any = None  # the model that made the strip: its other weights use it, whatever opens since

    # -- the model ----------------------------------------------------------------------------------
    @property
    def T(self) -> int:
        return self.loaded.diffusion.T if self.loaded is not None else DEFAULT_T

    def open(self, path: str) -> str:
        """Use ``path`` from the next job on; the model line. ValueError when it does not exist."""
        if not os.path.exists(path):
            raise ValueError(f"{path} does not exist.")
        self.model_path, self.loaded = str(path), None
        return f"{Path(path).name} (opened when a mode first runs)"

    def model_getter(self) -> Callable[[], Any]:
        """What a job calls on its thread for the model (the loaded one, or a load of the opened path)."""
        cached, path = self.loaded, self.model_path

        def get():
            if cached is not None:
                return cached
            from ..artifacts.loading import load_model

            return load_model(path)

        return get

    def model_loaded(self, loaded: Any) -> bool:
        """A job loaded the model; True the first time (the panel then fits its t boxes to T)."""
        first = self.loaded is None
        self.loaded = loaded
        return first

    def model_text(self) -> str:
        lm = self.loaded
        _, h, w = lm.image_shape
        return (f"{Path(lm.source).name}: step {lm.step:,}, {w}×{h} px, T = {lm.diffusion.T}, "
                f"predicts {lm.diffusion.prediction}")

    # -- settings -----------------------------------------------------------------------------------
    def default_steps(self, sampler: str) -> int:
        """The sampler's own step count for the model's T (before a model: for T = 1000)."""
        return min(sampler_default_steps(sampler, self.T), self.T)

    def fitted_steps(self, sampler: str, steps: int) -> int:
        """The Steps box once a model is known: a count over its T becomes the sampler's default."""
        return steps if steps <= self.T else self.default_steps(sampler)

    def sampling(self, sampler: str, steps: int, eta: float, seed: int, num: int) -> SamplingConfig:
        return SamplingConfig(sampler=sampler, steps=self.T if sampler == "ddpm" else int(steps),
                              eta=float(eta) if sampler == "ddim" else 0.0, seed=int(seed), num_images=int(num))

    # -- the one running job ------------------------------------------------------------------------
    def begin(self, job: Job, seed: int | None = None, message: str | None = None) -> str:
        """Start ``job`` (``seed``: the x_T seed of what it makes): its progress message. ValueError
        (plain words) when it cannot start."""
        if self.running is not None:
            raise ValueError(f"wait for the {self.running} to finish, or cancel it")
        if self.model_path is None and self.loaded is None:
            raise ValueError("Open a run or a checkpoint first (Open Run or Checkpoint…).")
        self.running, self.result = Job(job), None
        if seed is not None:
            self.seeds[Job(job)] = int(seed)
        if job == Job.COMPARE:
            self.board_updates, self.compare_rows = 0, []
        elif job == Job.CHAIN:
            self.frames, self.chain = [], None
        elif job == Job.INTERPOLATE:
            self.interp = InterpResult()
            self.walk_id += 1
            self._reset_weights()
        self.status = message or START_MESSAGES.get(job, "Working…")
        return self.status

    def item(self, it: Any, shown: int = 0) -> int | None:
        """One item a job emitted. For a chain or interpolation frame: the slider position the view
        should move to (it follows the newest frame while it is on the newest one), else None."""
        if isinstance(it, LabModelReady):
            self.model_loaded(it.loaded)
        elif isinstance(it, BoardUpdate):
            self.board, self.compare_rows = it.board, list(it.rows)
            self.board_updates += 1
        elif isinstance(it, LabFrame):
            follow = shown >= len(self.frames) - 1
            self.frames.append(it)
            return len(self.frames) - 1 if follow else None
        elif isinstance(it, InterpFrame):
            frames = self.interp.frames
            follow = not frames or shown == position_of(frames[-1].weight)
            frames.append(it)
            return position_of(it.weight) if follow else None
        return None

    def succeeded(self, result: Any) -> str:
        """The job's result; the status line."""
        self.result = result
        if self.running == Job.COMPARE:
            self.board, self.compare_rows = result.board, list(result.rows)
            self.board_updates += 1
            self.status = f"Compare done: {len(result.rows)} rows."
        elif self.running == Job.CHAIN:
            self.chain = result
            self.status = f"Chain done: {len(self.frames)} steps recorded (every {result.stride})."
        elif self.running == Job.BRANCH:
            self.branch_rows.append(result)
            self.branch_board = result.board  # this strip under the earlier ones, composed by the job
            self.status = f"Branched at {result.label[0]}."
        elif self.running == Job.INTERPOLATE:
            self.interp, self.walk_loaded = result, self.loaded
            self.status = f"Interpolated: {len(result.frames)} frames; move the weight for any other."
        return self.status

    def cancelled(self) -> str:
        self.result, self.status = None, "Cancelled."
        return self.status

    def failed(self, message: str) -> str:
        self.result, self.status = None, f"Failed: {message}"
        return self.status

    def finish(self) -> Any:
        """The job's thread has ended: nothing runs now. Returns what the job's finished signal carries."""
        self.running = None
        return self.result

    def refuse(self, message: str) -> None:
        """A request refused before anything started (the panel shows ``message``)."""
        self.result, self.status = None, message

    # -- compare ------------------------------------------------------------------------------------
    def plan_compare(self, text: str) -> str:
        """The spec list, checked (all but the model's T) before anything runs: one-line ValueError."""
        from .compare import split_specs

        text = str(text).strip()
        split_specs(text)
        return text

    # -- the chain behind the scrubber --------------------------------------------------------------
    def frame_at(self, i: int) -> LabFrame | None:
        return self.frames[i] if 0 <= i < len(self.frames) else None

    def scrub(self, i: int) -> tuple[tuple, str] | None:
        """Slider position ``i`` → (x_t, x̂0, ε̂ views of that step, the step label), None off the chain."""
        f = self.frame_at(i)
        if f is None:
            return None
        return f.views, f"step {f.index + 1} / {f.total} · t = {f.t}"

    def chain_frames(self) -> list[tuple[Any, tuple]]:
        """(t, views) of every recorded step, then the result x_0 (ε̂ mid-grey: no noise is left)."""
        frames = [(f.t, f.views) for f in self.frames]
        if self.chain is not None:
            x0 = self.chain.final
            frames.append(("result", (x0, x0, np.full_like(x0, 128))))
        return frames

    def view_names(self) -> list[str]:
        return ["x_t", "x̂0", self.chain.noise_label.replace("predicted ", "") if self.chain else "ε̂"]

    def sheet_title(self) -> str:
        return f"{self.chain.sampling.sampler} · seed {self.seeds.get(Job.CHAIN, 0)}" if self.chain else ""

    # -- branching ----------------------------------------------------------------------------------
    def plan_branch(self, shown: int, mode: str, count: int, renoise_t: int) -> BranchPlan:
        """Branch at the step on screen; ValueError in plain words when it cannot be done."""
        from .chain import is_stochastic

        frame = self.frame_at(shown)
        if self.chain is None or frame is None:
            raise ValueError("Run a chain first, then scrub to the step to branch from.")
        if mode == "rest" and not is_stochastic(self.chain.sampling):
            raise ValueError(f"{self.chain.sampling.sampler} adds no noise after x_T, so every rerun would be the "
                             "same image: run the chain with DDPM, DDIM with η > 0 or DPM-Solver++ 2M SDE, or "
                             "choose \u201cRe-noise x̂0 to t\u201d.")
        seed = self.seeds.get(Job.CHAIN, 0) + 1 + len(self.branch_rows)  # each branch point its own noise
        return BranchPlan(frame.index, frame.t, mode, int(count), int(renoise_t), seed,
                          f"Branching at t = {frame.t}…")

    # -- interpolation: the two images --------------------------------------------------------------
    def set_image_file(self, which: int, path: str) -> None:
        if path:
            self.image_sources[which] = path

    def use_generated(self) -> None:
        """Images A and B become the first two x_0 of the last chain (generated images, §4.4)."""
        if not self.can_use_generated():
            raise ValueError("Run a chain of 2 or more images first (Chain & Branch).")
        self.image_sources = [self.chain.images[0], self.chain.images[1]]

    def can_use_generated(self) -> bool:
        return self.chain is not None and self.chain.images is not None and len(self.chain.images) >= 2

    def images_text(self, numbers: tuple[int, int]) -> str:
        def name(i, p):
            if isinstance(p, np.ndarray):
                return f"generated #{i + 1}"
            return Path(p).name if p else f"dataset #{numbers[i]}"

        a, b = (name(i, p) for i, p in enumerate(self.image_sources))
        return f"A: {a} · B: {b}"

    def interp_images(self, dataset: Any, numbers: tuple[int, int]) -> tuple:
        """The two ends: a file (decoded in the worker), a generated image, or dataset image number k."""
        out = []
        for i, p in enumerate(self.image_sources):
            if isinstance(p, np.ndarray) or p:
                out.append(p)
                continue
            if dataset is None or len(dataset) == 0:
                raise ValueError("Load a dataset (Dataset tab) or choose the images with Image A… / Image B….")
            k = numbers[i]
            if k >= len(dataset):
                raise ValueError(f"The dataset has {len(dataset)} images (numbers 0 to {len(dataset) - 1}); got {k}.")
            out.append(dataset.images[k])
        return tuple(out)

    def plan_interpolate(self, mode: str, seeds: tuple[int, int], dataset: Any, numbers: tuple[int, int]):
        """The images of an image walk (None for a seed walk); ValueError when the request cannot run."""
        if mode == "images":
            return self.interp_images(dataset, numbers)
        if seeds[0] == seeds[1]:
            raise ValueError("Choose two different seeds to interpolate between.")
        return None

    # -- interpolation: the weight slider -----------------------------------------------------------
    def _reset_weights(self) -> None:
        self.weight_position = 0  # where the slider is
        self.exact: dict[int, np.ndarray] = {}  # slider position -> its exact frame, once computed
        self.weight_busy: int | None = None  # the position being computed
        self.weight_pending: int | None = None  # the latest position asked for while one computed

    def strip_frame_at(self, position: int) -> InterpFrame | None:
        """The strip's frame at this slider position (its weight rounds to it), if there is one."""
        for f in self.interp.frames:
            if position_of(f.weight) == position:
                return f
        return None

    def nearest_frame(self, weight: float) -> InterpFrame | None:
        frames = self.interp.frames
        return min(frames, key=lambda f: abs(f.weight - weight)) if frames else None

    def can_compute_weights(self) -> bool:
        return (self.interp.strip is not None and self.interp.recipe is not None and self.walk_loaded is not None
                and self.running != Job.INTERPOLATE)

    def walk_model_getter(self) -> Callable[[], Any]:
        """The model of the strip on screen, for its frames at other weights."""
        loaded = self.walk_loaded
        return lambda: loaded

    def show_weight(self, position: int) -> WeightView:
        """The slider moved to ``position``: a strip frame there is shown as it is; otherwise the exact
        frame if it was computed, else the nearest strip frame at once and (when nothing else is
        computing) the exact one asked for; while one computes, only the latest position waits."""
        position = max(0, min(WEIGHT_STEPS, int(position)))
        self.weight_position = position
        w = weight_at(position)
        strip = self.strip_frame_at(position)
        if strip is not None:
            return WeightView(position, strip.weight, strip.image, f"weight {strip.weight:.2f}")
        if position in self.exact:
            return WeightView(position, w, self.exact[position], f"weight {w:.2f}")
        near = self.nearest_frame(w)
        if near is None:
            return WeightView(position, w, None, f"weight {w:.2f}")
        if not self.can_compute_weights():
            return WeightView(position, w, near.image, f"weight {w:.2f} · showing {near.weight:.2f} until the "
                                                       "strip is done")
        compute = None
        if self.weight_busy is None:
            self.weight_busy = compute = position
        else:
            self.weight_pending = position
        return WeightView(position, w, near.image, f"weight {w:.2f} · computing (showing {near.weight:.2f})",
                          compute)

    def exact_landed(self, frame: ExactFrame) -> tuple[WeightView | None, int | None]:
        """A computed frame arrived: (what to show, if the slider is still there; the next position to
        compute, if one waits)."""
        if frame.walk_id != self.walk_id:
            return None, None  # an older walk's
        self.exact[frame.position] = frame.image
        show = None
        if frame.position == self.weight_position:
            show = WeightView(frame.position, frame.weight, frame.image, f"weight {frame.weight:.2f}")
        return show, self._next_weight()

    def exact_ended(self, walk_id: int) -> int | None:
        """A weight computation ended without a frame (cancelled or failed): the next position, if one waits."""
        if walk_id != self.walk_id:
            return None
        return self._next_weight()

    def _next_weight(self) -> int | None:
        self.weight_busy = None
        pending, self.weight_pending = self.weight_pending, None
        if pending is None or pending in self.exact or self.strip_frame_at(pending) is not None:
            return None
        self.weight_busy = pending
        return pending

    def walk_frames(self) -> list[tuple[None, np.ndarray]]:
        return [(None, f.image) for f in self.interp.frames]

    # -- exports ------------------------------------------------------------------------------------
    def export_target(self, what: str) -> ExportTarget:
        """The Save dialog for ``what``: board, sheet, animation, strips, strip or walk."""
        sampler = self.chain.sampling.sampler if self.chain is not None else "chain"
        stem = f"{sampler}_seed{self.seeds.get(Job.CHAIN, 0)}"
        walk = self._walk_stem()
        png, anim = ("PNG (*.png)", (".png",)), ("GIF (*.gif);;Animated PNG (*.png)", (".gif", ".png", ".apng"))
        table = {
            "board": ("Export the compare board", png, f"compare_seed{self.seeds.get(Job.COMPARE, 0)}.png"),
            "sheet": ("Export a contact sheet", png, f"chain_{stem}_sheet.png"),
            "animation": ("Export the chain as an animation", anim, f"chain_{stem}.gif"),
            "strips": ("Export the branch strips", png, f"branches_{stem}.png"),
            "strip": ("Export the interpolation strip", png, f"{walk}.png"),
            "walk": ("Export the walk as an animation", anim, f"{walk}.gif"),
        }
        title, (filt, exts), name = table[what]
        return ExportTarget(title, filt, name, exts)

    def _walk_stem(self) -> str:
        r = self.interp.recipe
        if r is None:
            return "interpolation"
        if r.mode == "seeds":
            return f"interpolation_seeds_{r.seeds[0]}_{r.seeds[1]}"
        return f"interpolation_images_t{r.walk.t if r.walk is not None else 0}"

    # -- the controls -------------------------------------------------------------------------------
    def buttons(self, branch_mode: str, interp_mode: str) -> Buttons:
        idle = self.running is None
        chain = self.chain is not None
        strip = self.interp.strip is not None
        return Buttons(compare=idle, chain=idle, interpolate=idle, branch=idle and chain,
                       branch_t=branch_mode == "renoise", export_board=self.board is not None,
                       sheet=chain and idle, animation=chain and idle, export_strips=bool(self.branch_rows),
                       export_strip=strip, export_walk=strip, generated=self.can_use_generated(),
                       chain_slider=bool(self.frames),
                       weight_slider=bool(self.interp.frames), images_mode=interp_mode == "images")


def with_t_fitted(value: int, T: int, first: bool) -> int:
    """A t box's value once a model of ``T`` steps is known (the first model: at most T // 2)."""
    value = min(int(value), T - 1)
    return min(value, T // 2) if first else value

