"""The Lab panel's decisions without Qt (lab/session.py): starting jobs, results landing, the
scrubber, branch plans, the weight slider's coalesced computations, export names, the buttons."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from ddpm_studio.config import SamplingConfig
from ddpm_studio.lab.records import (BoardUpdate, BranchRow, ExactFrame, InterpFrame, InterpResult, LabChain,
                                     LabFrame)
from ddpm_studio.lab.session import Job, LabSession, position_of, weight_at


def image(v: int) -> np.ndarray:
    return np.full((4, 4, 3), v, np.uint8)


class FakeImageSet:
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)


def fake_loaded(T=20):
    return SimpleNamespace(diffusion=SimpleNamespace(T=T, prediction="v"), image_shape=(3, 8, 8), step=1234,
                           source="/runs/shapes")


def session_with_model(tmp_path, T=20) -> LabSession:
    s = LabSession()
    s.open(str(tmp_path))
    s.model_loaded(fake_loaded(T))
    return s


def chain_of(sampler="ddpm", eta=0.0, n=2) -> LabChain:
    sampling = dataclasses.replace(SamplingConfig(), sampler=sampler, steps=20, eta=eta)
    images = np.stack([image(10 * i) for i in range(n)])
    return LabChain({}, image(200), "predicted v̂", sampling, 1, images)


def frame(i, total=5) -> LabFrame:
    return LabFrame(i, total - 1 - i, total, (image(i), image(i + 1), image(i + 2)))


# -- the model ---------------------------------------------------------------------------------------
def test_nothing_starts_without_a_model_and_the_loaded_one_is_reused(tmp_path):
    s = LabSession()
    with pytest.raises(ValueError, match="Open a run or a checkpoint first"):
        s.begin(Job.CHAIN)
    assert s.running is None
    with pytest.raises(ValueError, match="does not exist"):
        s.open(str(tmp_path / "missing"))
    assert s.open(str(tmp_path)) == f"{tmp_path.name} (opened when a mode first runs)"
    assert s.T == 1000 and s.default_steps("ddim") == 50 and s.sampling("ddpm", 7, 0.5, 1, 2).steps == 1000
    loaded = fake_loaded(T=20)
    assert s.model_loaded(loaded) is True and s.model_loaded(loaded) is False
    assert s.model_getter()() is loaded  # not loaded again
    assert s.model_text() == "shapes: step 1,234, 8×8 px, T = 20, predicts v"
    # a step count chosen before the model was known fits its T; η only for DDIM
    assert s.fitted_steps("ddim", 50) == 20 and s.fitted_steps("ddim", 7) == 7 and s.default_steps("dpmpp-2m") == 20
    sc = s.sampling("dpmpp-2m", 9, 0.5, 3, 4)
    assert (sc.sampler, sc.steps, sc.eta, sc.seed, sc.num_images) == ("dpmpp-2m", 9, 0.0, 3, 4)
    assert s.sampling("ddpm", 9, 0.0, 3, 4).steps == 20


# -- jobs: start, rows landing, finished / cancelled / failed ----------------------------------------
def test_compare_rows_land_then_finish(tmp_path):
    s = session_with_model(tmp_path)
    with pytest.raises(ValueError, match="'euler' is not sampler"):
        s.plan_compare("ddim:5,euler")
    with pytest.raises(ValueError, match="at least one sampler"):
        s.plan_compare("  ")
    with pytest.raises(ValueError, match="steps must be a whole number"):
        s.plan_compare("ddim:x")
    assert s.plan_compare(" ddim:50,ddpm ") == "ddim:50,ddpm"  # T-dependent checks wait for the model's T
    assert s.begin(Job.COMPARE, seed=4) == "Comparing samplers…" and s.running == Job.COMPARE
    with pytest.raises(ValueError, match="wait for the compare to finish"):
        s.begin(Job.CHAIN)
    b = s.buttons("rest", "seeds")
    assert not (b.compare or b.chain or b.interpolate or b.export_board)
    s.item(BoardUpdate(image(1), [["DDIM · 5 steps · η 0", "0.01 s / image"]]))
    s.item(BoardUpdate(image(2), [["a", "b"], ["c", "d"]]))
    assert s.board_updates == 2 and len(s.compare_rows) == 2 and s.board[0, 0, 0] == 2
    assert s.buttons("rest", "seeds").export_board
    final = BoardUpdate(image(3), [["a", "b"], ["c", "d"]])
    assert s.succeeded(final) == "Compare done: 2 rows."
    assert s.running == Job.COMPARE  # until the thread has ended
    assert s.finish() is final and s.running is None and s.board_updates == 3
    assert s.buttons("rest", "seeds").compare
    assert s.export_target("board").name == "compare_seed4.png"


def test_a_cancelled_chain_keeps_its_frames_but_no_chain(tmp_path):
    s = session_with_model(tmp_path)
    s.begin(Job.CHAIN, seed=7)
    for i in range(3):
        s.item(frame(i), shown=i - 1)
    assert s.cancelled() == "Cancelled." and s.finish() is None
    assert s.chain is None and len(s.frames) == 3
    b = s.buttons("rest", "seeds")
    assert b.chain_slider and b.chain and not b.sheet and not b.branch
    s.begin(Job.CHAIN, seed=7)  # a new chain starts empty
    assert s.frames == [] and s.failed("Out of memory.") == "Failed: Out of memory." and s.finish() is None


def test_the_scrubber_follows_the_newest_frame_only_while_it_is_on_it(tmp_path):
    s = session_with_model(tmp_path)
    s.begin(Job.CHAIN, seed=2)
    assert s.item(frame(0), shown=0) == 0
    assert s.item(frame(1), shown=0) == 1
    assert s.item(frame(2), shown=0) is None  # the user scrubbed back: stay there
    assert s.item(frame(3), shown=1) is None and s.item(frame(4), shown=3) == 4
    views, label = s.scrub(2)
    assert label == "step 3 / 5 · t = 2" and views[1][0, 0, 0] == 3
    assert s.scrub(5) is None and s.scrub(-1) is None
    chain = chain_of()
    assert s.succeeded(chain) == "Chain done: 5 steps recorded (every 1)."
    s.finish()
    frames = s.chain_frames()
    assert len(frames) == 6 and frames[-1][0] == "result" and frames[-1][1][2][0, 0, 0] == 128
    assert s.view_names() == ["x_t", "x̂0", "v̂"] and s.sheet_title() == "ddpm · seed 2"
    assert s.export_target("sheet").name == "chain_ddpm_seed2_sheet.png"
    b = s.buttons("renoise", "seeds")
    assert b.sheet and b.animation and b.branch and b.branch_t and b.generated and not b.export_strips


# -- branching -------------------------------------------------------------------------------------------
def test_branch_plans(tmp_path):
    s = session_with_model(tmp_path)
    with pytest.raises(ValueError, match="Run a chain first"):
        s.plan_branch(0, "rest", 3, 10)
    s.begin(Job.CHAIN, seed=5)
    for i in range(5):
        s.item(frame(i), shown=i - 1)
    s.succeeded(chain_of("ddim", eta=0.0))
    s.finish()
    with pytest.raises(ValueError, match="ddim adds no noise after x_T"):
        s.plan_branch(2, "rest", 3, 10)
    plan = s.plan_branch(2, "renoise", 3, 10)
    assert (plan.index, plan.t, plan.count, plan.renoise_t, plan.seed) == (2, 2, 3, 10, 6)
    assert plan.message == "Branching at t = 2…"
    s.begin(Job.BRANCH, message=plan.message)
    row = BranchRow([image(1)], ["x_t"], ["step 2, t = 2", "x̂0 re-noised to t = 10"], board=image(9))
    assert s.succeeded(row) == "Branched at step 2, t = 2." and s.finish() is row
    assert s.branch_board is row.board and s.buttons("rest", "seeds").export_strips
    assert s.plan_branch(4, "renoise", 3, 10).seed == 7  # each branch point its own noise
    s.chain.sampling = dataclasses.replace(s.chain.sampling, eta=1.0)
    assert s.plan_branch(1, "rest", 2, 0).mode == "rest"


# -- interpolation ------------------------------------------------------------------------------------------
def strip_session(tmp_path) -> LabSession:
    s = session_with_model(tmp_path)
    s.begin(Job.INTERPOLATE, seed=0)
    weights = [0, 1 / 3, 2 / 3, 1]
    for i, w in enumerate(weights):
        shown = 0 if i == 0 else position_of(weights[i - 1])
        assert s.item(InterpFrame(i, w, image(10 * i)), shown=shown) == position_of(w)  # followed
    recipe = SimpleNamespace(mode="seeds", seeds=(3, 8), walk=None)
    s.succeeded(InterpResult(list(s.interp.frames), "seeds 3 → 8", image(99), recipe))
    s.finish()
    return s


def test_weight_positions_and_strip_frames(tmp_path):
    assert weight_at(37) == 0.37 and position_of(1 / 3) == 33 and position_of(1.0) == 100
    s = strip_session(tmp_path)
    v = s.show_weight(33)  # a strip frame's position: that frame, nothing to compute
    assert v.caption == "weight 0.33" and v.image[0, 0, 0] == 10 and v.compute is None
    v = s.show_weight(100)
    assert v.weight == 1 and v.image[0, 0, 0] == 30 and v.compute is None
    assert s.export_target("strip").name == "interpolation_seeds_3_8.png"
    made_it = s.loaded
    s.open(str(tmp_path))  # another model opened: the strip's other weights still come from the one that made it
    assert s.loaded is None and s.walk_model_getter()() is made_it and s.show_weight(40).compute == 40
    t = s.export_target("walk")
    assert t.name == "interpolation_seeds_3_8.gif" and t.path_for("/x/walk") == "/x/walk.gif"
    assert t.path_for("/x/walk.png") == "/x/walk.png" and t.path_for("/x/walk.apng") == "/x/walk.apng"


def test_a_weight_between_frames_is_computed_one_at_a_time_the_latest_waiting(tmp_path):
    s = strip_session(tmp_path)
    v = s.show_weight(40)  # nearest frame (1/3) at once, 0.40 computed
    assert v.compute == 40 and v.image[0, 0, 0] == 10 and v.caption == "weight 0.40 · computing (showing 0.33)"
    assert s.show_weight(45).compute is None and s.show_weight(55).compute is None  # one computes: these wait
    assert s.show_weight(60).image[0, 0, 0] == 20 and s.weight_pending == 60  # only the latest waits
    show, nxt = s.exact_landed(ExactFrame(40, 0.4, image(41), s.walk_id))
    assert show is None and nxt == 60  # the slider has moved on: not shown; 60 next, never 45 or 55
    show, nxt = s.exact_landed(ExactFrame(60, 0.6, image(61), s.walk_id))
    assert show.caption == "weight 0.60" and show.image[0, 0, 0] == 61 and nxt is None
    v = s.show_weight(40)  # computed before: at once
    assert v.caption == "weight 0.40" and v.image[0, 0, 0] == 41 and v.compute is None and s.weight_busy is None
    # a computation that ends without a frame lets the waiting one start
    assert s.show_weight(70).compute == 70 and s.show_weight(80).compute is None
    assert s.exact_ended(s.walk_id) == 80 and s.weight_busy == 80


def test_a_new_walk_drops_the_old_walks_frames_and_waits_for_its_strip(tmp_path):
    s = strip_session(tmp_path)
    assert s.show_weight(40).compute == 40
    old = s.walk_id
    s.begin(Job.INTERPOLATE, seed=0)
    assert s.interp.frames == [] and s.exact == {} and s.weight_busy is None
    assert s.exact_landed(ExactFrame(40, 0.4, image(41), old)) == (None, None) and s.exact == {}
    assert s.exact_ended(old) is None
    s.item(InterpFrame(0, 0.0, image(0)))
    s.item(InterpFrame(1, 0.5, image(5)), shown=0)
    v = s.show_weight(30)  # while the strip runs: the nearest frame, nothing computed yet
    assert v.compute is None and v.image[0, 0, 0] == 5 and "until the strip is done" in v.caption
    b = s.buttons("rest", "images")
    assert b.weight_slider and not b.export_strip and b.images_mode and not b.interpolate


def test_interpolation_images_and_seeds(tmp_path):
    s = session_with_model(tmp_path)
    with pytest.raises(ValueError, match="two different seeds"):
        s.plan_interpolate("seeds", (4, 4), None, (0, 1))
    assert s.plan_interpolate("seeds", (4, 5), None, (0, 1)) is None
    with pytest.raises(ValueError, match="Load a dataset"):
        s.plan_interpolate("images", (0, 1), None, (0, 1))
    dataset = FakeImageSet(np.stack([image(i) for i in range(4)]))
    with pytest.raises(ValueError, match="has 4 images \\(numbers 0 to 3\\); got 9"):
        s.plan_interpolate("images", (0, 1), dataset, (0, 9))
    a, b = s.plan_interpolate("images", (0, 1), dataset, (1, 3))
    assert a[0, 0, 0] == 1 and b[0, 0, 0] == 3
    s.set_image_file(1, "/pics/cat.png")
    s.set_image_file(0, "")  # a cancelled dialog changes nothing
    assert s.images_text((2, 3)) == "A: dataset #2 · B: cat.png"
    assert s.plan_interpolate("images", (0, 1), dataset, (2, 3))[1] == "/pics/cat.png"
    with pytest.raises(ValueError, match="Run a chain of 2 or more images"):
        s.use_generated()
    s.chain = chain_of(n=2)
    s.use_generated()
    assert s.images_text((0, 0)) == "A: generated #1 · B: generated #2"
