"""The Lab panel's job functions (run on worker threads, see :mod:`.workers`).

Each ``make_*`` returns ``job(state)`` calling the Qt-free lab services (:mod:`ddpm_studio.lab`);
tensors become ``uint8`` arrays and boards are composed (Pillow) here, never on the UI thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SamplingConfig
from .jobs import model_sampling
from ..errors import Cancelled
from ..lab.records import (BoardUpdate, BranchRow, ExactFrame, InterpFrame, InterpResult, LabChain, LabFrame,
                           LabModelReady)
from .workers import TaskState

__all__ = ["BoardUpdate", "BranchRow", "ExactFrame", "InterpFrame", "InterpResult", "LabChain", "LabFrame",
           "LabModelReady"]  # the records, made here (lab/records.py)

CHAIN_BUDGET = 200 * 1024 * 1024  # bytes of chain tensors kept for branching


def _model(get_model: Callable[[], Any], state: TaskState):
    loaded = get_model()
    state.emit(LabModelReady(loaded), flush=True)
    if state.should_stop():
        raise Cancelled()
    return loaded


def _for_model(base: SamplingConfig, loaded) -> SamplingConfig:
    """The panel's settings for this model: its own bounds (``jobs.model_sampling``), and a step
    count the panel chose before it knew the model's T (e.g. DDIM's default 50 for T = 20) lowered
    to the sampler's default for that T."""
    import dataclasses

    from ..config import sampler_default_steps

    s = model_sampling(base, loaded.config.sampling)
    T = loaded.diffusion.T
    if s.sampler == "ddpm":
        return dataclasses.replace(s, steps=T)
    if s.steps > T:
        return dataclasses.replace(s, steps=min(T, sampler_default_steps(s.sampler, T)))
    return s


def _u8(x) -> np.ndarray:
    from ..sampling.service import to_uint8

    return to_uint8(x)


def make_compare(get_model: Callable[[], Any], specs: str, base: SamplingConfig, num: int, seed: int):
    """Rows of the compare board, emitted as :class:`BoardUpdate` as each finishes."""

    def job(state: TaskState):
        from ..lab import compare, views

        loaded = _model(get_model, state)
        sampling = model_sampling(base, loaded.config.sampling)
        from ..sampling.tuning_store import recall_for

        rows = compare.parse_specs(specs, sampling, loaded.diffusion.T, tunings=lambda: recall_for(loaded))
        tiles, labels = [], []
        for row in compare.run_compare(loaded.model, loaded.diffusion, rows, num=num, image_shape=loaded.image_shape,
                                       seed=seed, device=loaded.device, should_stop=state.should_stop,
                                       progress=state.progress):
            tiles.append(list(_u8(row.images)))
            labels.append(compare.row_caption(row))
            board = views.board(tiles, row_labels=labels, title=f"seed {seed}")
            state.emit(BoardUpdate(board, list(labels)), flush=True)
        if state.should_stop() or len(tiles) < len(rows):
            raise Cancelled()
        return BoardUpdate(views.board(tiles, row_labels=labels, title=f"seed {seed}"), labels)

    return job


def make_chain(get_model: Callable[[], Any], base: SamplingConfig, num: int, seed: int, budget: int = CHAIN_BUDGET):
    """One chain, every step's three views emitted as :class:`LabFrame`; returns :class:`LabChain`."""

    def job(state: TaskState):
        from ..lab import chain, views

        loaded = _model(get_model, state)
        sampling = _for_model(base, loaded)
        d = loaded.diffusion
        total = len(chain.sampler_timesteps(d, sampling))
        per_step = 5 * num * math.prod(loaded.image_shape) * 4  # x_in, x_out, x̂0 and two older x̂0, float32
        stride = max(1, math.ceil(total * per_step / budget))
        steps, last = {}, None
        for st in chain.run_chain(loaded.model, d, sampling, num=num, image_shape=loaded.image_shape, seed=seed,
                                  device=loaded.device, should_stop=state.should_stop,
                                  keep=lambda i, n: i % stride == 0 or i == n - 1):
            steps[st.index] = st
            last = st
            state.emit(LabFrame(st.index, st.t, st.total, tuple(views.grid(v) for v in chain.step_views(d, st))))
            state.progress(st.index + 1, st.total, f"t = {st.t}")
        if state.should_stop() or last is None or not last.is_last:
            raise Cancelled()
        images = _u8(last.x_out)
        return LabChain(steps, views.grid(images), chain.noise_label(d), sampling, stride, images)

    return job


def make_branch(get_model: Callable[[], Any], lab_chain: LabChain, index: int, *, mode: str, count: int, t: int,
                seed: int, previous: list[BranchRow] | None = None):
    """Branch ``lab_chain`` at its recorded step ``index``: mode "rest" (new noise) or "renoise" (x̂0 to t).
    The returned row's ``board`` holds the ``previous`` strips and this one."""

    def job(state: TaskState):
        from ..lab import branch, chain, views

        loaded = _model(get_model, state)
        step = lab_chain.steps.get(index)
        if step is None:
            raise ValueError(f"step {index} was not recorded; pick one of the recorded steps")
        s, d = lab_chain.sampling, loaded.diffusion
        if mode == "rest":
            out = branch.rerun_rest(loaded.model, d, s, step, count=count, seed=seed, device=loaded.device,
                                    should_stop=state.should_stop)
            how = "rest of the chain, new noise"
        else:
            r = branch.renoise(loaded.model, d, s, step.pred_x0, t=t, count=count, seed=seed, device=loaded.device,
                               should_stop=state.should_stop)
            out, how = r.x0, f"x̂0 re-noised to t = {r.t}"
        if out is None or state.should_stop():
            raise Cancelled()
        xt, x0, _ = chain.step_views(d, step)
        n = step.x_out.shape[0]
        u = _u8(out)
        tiles = [views.grid(xt), views.grid(x0)] + [views.grid(u[i * n:(i + 1) * n]) for i in range(count)]
        row = BranchRow(tiles, ["x_t", "x̂0"] + [f"#{i + 1}" for i in range(count)],
                        [f"step {step.index}, t = {step.t}", how])
        rows = list(previous or []) + [row]
        if len({r.tiles[0].shape for r in rows}) > 1:
            rows = [row]  # a chain with another image count: start a new board
        row.board = views.board([r.tiles for r in rows], row_labels=[r.label for r in rows],
                                captions=[r.captions for r in rows])
        return row

    return job


def make_interpolate(get_model: Callable[[], Any], base: SamplingConfig, *, mode: str, seeds=(0, 1),
                     images: tuple | None = None, t: int = 0, frames: int = 8, seed: int = 0):
    """A seed walk (mode "seeds") or the §4.4 image walk (mode "images": each of ``images`` a file
    path, decoded here, or a uint8 array, resized here to the model's size); frames emitted as they finish."""

    def job(state: TaskState):
        from ..lab import interpolate, views

        loaded = _model(get_model, state)
        sampling = _for_model(base, loaded)
        d, shape = loaded.diffusion, loaded.image_shape
        if mode == "seeds":
            recipe = interpolate.WalkRecipe("seeds", sampling, tuple(shape), seeds=(seeds[0], seeds[1]))
            walk = interpolate.seed_walk(loaded.model, d, sampling, shape, seeds[0], seeds[1], frames,
                                         device=loaded.device, should_stop=state.should_stop)
            title = f"seeds {seeds[0]} → {seeds[1]} · {sampling.sampler}"
        else:
            if images is None:
                raise ValueError("choose two images first")
            arrays = [interpolate.load_image_for_model(im, shape) if isinstance(im, (str, Path))
                      else interpolate.fit_array(im, shape) for im in images]
            a, b = (interpolate.image_to_tensor(im, shape) for im in arrays)
            pair = interpolate.noised_pair(d, sampling, a, b, t=t, seed=seed)
            recipe = interpolate.WalkRecipe("images", sampling, tuple(shape), walk=pair, seed=seed)
            walk = interpolate.image_walk(loaded.model, d, sampling, a, b, t=t, frames=frames, seed=seed,
                                          device=loaded.device, should_stop=state.should_stop, walk=pair)
            title = f"two images noised to t = {pair.t} · {sampling.sampler}"
        result = InterpResult(title=title, recipe=recipe)
        for f in walk:
            fr = InterpFrame(f.index, f.weight, _u8(f.image)[0])
            result.frames.append(fr)
            state.emit(fr, flush=True)
            state.progress(f.index + 1, frames, f"frame {f.index + 1} of {frames}")
        if state.should_stop() or len(result.frames) < frames:
            raise Cancelled()
        result.strip = views.board([[f.image for f in result.frames]],
                                   captions=[[f"{f.weight:.2f}" for f in result.frames]],
                                   title=title)
        return result

    return job


def make_weight_frame(get_model: Callable[[], Any], recipe, position: int, weight: float, walk_id: int):
    """The frame of an interpolation (its ``lab.interpolate.WalkRecipe``) at one weight, as :class:`ExactFrame`."""

    def job(state: TaskState):
        from ..lab import interpolate

        loaded = get_model()
        out = interpolate.frame_at(loaded.model, loaded.diffusion, recipe, weight, device=loaded.device,
                                   should_stop=state.should_stop)
        if out is None or state.should_stop():
            raise Cancelled()
        return ExactFrame(position, weight, _u8(out)[0], walk_id)

    return job


def make_contact_sheet(frames: list[tuple[int, tuple]], every: int, names: list[str], path: str, title: str):
    def job(state: TaskState):
        from ..lab import views
        from ..sampling.export import save_png

        save_png(views.contact_sheet(frames, every, view_names=names, title=title), path)
        return [Path(path)]

    return job


def make_save_animation(frames: list[tuple[int | None, Any]], path: str, *, overlay_t: bool, every: int = 1,
                        fps: float = 10, bounce: bool = False):
    """(t, image) frames as a GIF or APNG (by the file's extension), optionally "t = …" on each; an
    image given as a tuple of views is put side by side first."""

    def job(state: TaskState):
        from ..lab import views

        seq = [(t, views.side_by_side(im) if isinstance(im, tuple) else im) for t, im in frames]
        seq = seq + (seq[-2:0:-1] if bounce else [])
        anim = views.gif_frames(seq, overlay_t=overlay_t, every=every)
        views.save_animation(anim, path, fps=fps, hold_last_sec=0.0 if bounce else 1.0)
        return [Path(path)]

    return job


def make_save_png(image: np.ndarray, path: str):
    def job(state: TaskState):
        from ..sampling.export import save_png

        save_png(image, path)
        return [Path(path)]

    return job


def make_board(rows: list[list[np.ndarray]], labels: list[list[str]], captions: list[list[str]], title: str):
    """Compose a board off the UI thread (the branch strips)."""

    def job(state: TaskState):
        from ..lab import views

        return views.board(rows, row_labels=labels, captions=captions, title=title)

    return job
