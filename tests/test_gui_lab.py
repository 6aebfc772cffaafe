"""The Lab tab driven as a user would: click, wait for the worker's signal, read the canvas."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("PySide6")

from PIL import Image
from PySide6.QtCore import Qt
from training_support import tiny_config, tiny_images

from ddpm_studio.config import SamplingConfig
from ddpm_studio.gui.workers import running_tasks


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import torch

    from ddpm_studio.training.trainer import Trainer

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("gui_lab") / "run"
    assert Trainer(tiny_config(steps=2), out, images=tiny_images()).run().reason == "completed"
    return out


@pytest.fixture
def lab(window, run_dir):
    window.tabs.setCurrentWidget(window.lab_panel)
    lp = window.lab_panel
    assert lp.open_model(str(run_dir))
    return lp


def click(qtbot, signal, button, timeout=60_000):
    with qtbot.waitSignal(signal, timeout=timeout) as blocker:
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    return blocker.args[0]


def choose(combo, data):
    combo.setCurrentIndex(combo.findData(data))


def own_samples(run_dir, sampler, steps, seed, num, eta=0.0):
    from ddpm_studio.artifacts.loading import load_model
    from ddpm_studio.sampling.service import sample_images

    s = dataclasses.replace(SamplingConfig(), sampler=sampler, steps=steps, eta=eta, num_images=num, seed=seed)
    return sample_images(load_model(run_dir, device="cpu"), s)


def seed_walk_3_to_8(qtbot, lab):
    """A DDIM-5 seed walk from seed 3 to seed 8 in 4 frames (weights 0, 1/3, 2/3, 1)."""
    lab.modes.setCurrentIndex(2)
    choose(lab.interp_mode, "seeds")
    choose(lab.sampler_combo, "ddim")
    lab.steps_spin.setValue(5)
    lab.seed_a.setValue(3)
    lab.seed_b.setValue(8)
    lab.frames_spin.setValue(4)
    return click(qtbot, lab.interpolate_finished, lab.interp_button)


def test_compare_board_fills_in_live_and_exports(qtbot, lab, run_dir, tmp_path):
    lab.modes.setCurrentIndex(0)
    lab.specs_edit.setText("ddim:5,dpmpp-2m:4,ddpm")
    lab.num_spin.setValue(3)
    lab.seed_spin.setValue(4)
    result = click(qtbot, lab.compare_finished, lab.compare_button)
    assert result is not None and len(result.rows) == 3
    assert lab.session.board_updates == 4  # one per row as it finished, then the final board
    assert result.rows[0][0] == "DDIM · 5 steps · η 0" and result.rows[0][1].endswith("s / image")
    shown = lab.board_view.image_array()
    assert np.array_equal(shown, result.board)
    # the DDIM row holds what `sample` makes from the same seed: look for its first image, enlarged 8x
    ref = own_samples(run_dir, "ddim", 5, 4, 3)[0].repeat(8, 0).repeat(8, 1)
    assert any(np.array_equal(shown[y:y + 64, x:x + 64], ref) for y in range(80) for x in range(shown.shape[1] - 64))
    with qtbot.waitSignal(lab.export_finished, timeout=20_000) as b:
        assert lab.export_board(str(tmp_path / "board.png"))
    assert np.array_equal(np.asarray(Image.open(b.args[0][0]).convert("RGB")), result.board)


def test_bad_compare_list_is_shown_and_nothing_runs(qtbot, lab, window):
    lab.specs_edit.setText("ddim:5,euler")
    result = click(qtbot, lab.compare_finished, lab.compare_button)
    assert result is None
    assert window.errors and "'euler' is not sampler" in window.errors[-1][0]
    qtbot.waitUntil(lambda: running_tasks() == [], timeout=10_000)


def test_a_tuned_compare_row_needs_a_tune_then_walks_it(qtbot, lab, window, run_dir):
    from ddpm_studio.cli import main

    lab.modes.setCurrentIndex(0)
    lab.specs_edit.setText("unipc:3:tuned,unipc:3")
    lab.num_spin.setValue(2)
    assert click(qtbot, lab.compare_finished, lab.compare_button) is None
    assert window.errors and "no Tune remembered for this model with unipc at 3 steps" in window.errors[-1][0]
    assert main(["tune-steps", "--run", str(run_dir), "--sampling-steps", "3", "--images", "8", "--quiet"]) == 0
    result = click(qtbot, lab.compare_finished, lab.compare_button)
    assert result is not None and [r[0] for r in result.rows] == ["UniPC · 3 steps · tuned", "UniPC · 3 steps"]


def test_three_views_scrub_contact_sheet_animation_and_branch(qtbot, lab, tmp_path):
    lab.modes.setCurrentIndex(1)
    choose(lab.sampler_combo, "ddpm")
    lab.num_spin.setValue(1)
    chain = click(qtbot, lab.chain_finished, lab.chain_button)
    assert chain is not None and len(lab.session.frames) == 20 and sorted(chain.steps) == list(range(20))
    assert [f.t for f in lab.session.frames] == list(range(19, -1, -1))
    for i in (0, 7, 15):  # the scrubber drives all three views
        lab.chain_slider.setValue(i)
        xt, x0, eps = lab.three.current()
        f = lab.session.frames[i]
        assert np.array_equal(xt, f.views[0]) and np.array_equal(x0, f.views[1]) and np.array_equal(eps, f.views[2])
        assert f"t = {f.t}" in lab.chain_label.text()
    assert not np.array_equal(lab.session.frames[0].views[0], lab.session.frames[0].views[2])
    assert lab.three.noise.caption.text() == "predicted v̂"  # the tiny preset predicts v

    lab.every_spin.setValue(5)
    with qtbot.waitSignal(lab.export_finished, timeout=20_000) as b:
        assert lab.export_sheet(str(tmp_path / "sheet.png"))
    with Image.open(b.args[0][0]) as im:
        assert im.size[0] > 5 * 64
    with qtbot.waitSignal(lab.export_finished, timeout=20_000) as b:
        assert lab.export_chain_animation(str(tmp_path / "chain.png"))
    with Image.open(b.args[0][0]) as im:
        assert im.is_animated and im.n_frames == 5  # steps 0, 5, 10, 15 and the last
    with qtbot.waitSignal(lab.export_finished, timeout=20_000) as b:
        assert lab.export_chain_animation(str(tmp_path / "chain.gif"))
    assert b.args[0][0].exists()

    # branch at step 7 with new noise: 6 different endings beside x_t and x̂0
    lab.chain_slider.setValue(7)
    choose(lab.branch_mode, "rest")
    lab.branch_count.setValue(3)
    row = click(qtbot, lab.branch_finished, lab.branch_button)
    assert row is not None and len(row.tiles) == 5 and row.label[0] == "step 7, t = 12"
    assert not np.array_equal(row.tiles[2], row.tiles[3])
    # re-noise x̂0 of step 15 to t = 10: a second strip
    lab.chain_slider.setValue(15)
    choose(lab.branch_mode, "renoise")
    lab.branch_t.setValue(10)
    row2 = click(qtbot, lab.branch_finished, lab.branch_button)
    assert row2.label == ["step 15, t = 4", "x̂0 re-noised to t = 10"]
    assert np.array_equal(lab.branch_view.image_array(), row2.board)
    assert row2.board.shape[0] > row.board.shape[0]  # two strips
    with qtbot.waitSignal(lab.export_finished, timeout=20_000) as b:
        assert lab.export_strips(str(tmp_path / "strips.png"))
    assert np.array_equal(np.asarray(Image.open(b.args[0][0]).convert("RGB")), row2.board)


def test_branching_a_deterministic_chain_with_new_noise_is_refused(qtbot, lab, window):
    choose(lab.sampler_combo, "ddim")
    lab.steps_spin.setValue(4)
    click(qtbot, lab.chain_finished, lab.chain_button)
    choose(lab.branch_mode, "rest")
    assert not lab.branch_here()
    assert "adds no noise after x_T" in window.errors[-1][0]
    assert running_tasks() == []


def test_seed_interpolation_ends_are_the_seeds_samples(qtbot, lab, run_dir, tmp_path):
    result = seed_walk_3_to_8(qtbot, lab)
    assert result is not None and [f.weight for f in result.frames] == [0, 1 / 3, 2 / 3, 1]
    assert np.array_equal(result.frames[0].image, own_samples(run_dir, "ddim", 5, 3, 1)[0])
    assert np.array_equal(result.frames[-1].image, own_samples(run_dir, "ddim", 5, 8, 1)[0])
    lab.weight_slider.setValue(33)  # the weight slider at a strip frame's weight (1/3) shows that frame
    assert np.array_equal(lab.interp_view.view.image_array(), result.frames[1].image)
    assert lab.interp_view.caption.text() == "weight 0.33"
    with qtbot.waitSignal(lab.export_finished, timeout=20_000) as b:
        assert lab.export_interp_gif(str(tmp_path / "walk.gif"))
    with Image.open(b.args[0][0]) as im:
        assert im.n_frames >= 2


def test_image_interpolation_from_the_dataset(qtbot, lab, window):
    window.state.set_images(tiny_images(n=4, size=16))  # resized to the model's 8 px in the worker
    lab.modes.setCurrentIndex(2)
    choose(lab.interp_mode, "images")
    choose(lab.sampler_combo, "ddpm")
    lab.interp_t.setValue(10)
    lab.data_a.setValue(0)
    lab.data_b.setValue(3)
    lab.frames_spin.setValue(3)
    result = click(qtbot, lab.interpolate_finished, lab.interp_button)
    assert result is not None and len(result.frames) == 3 and "t = 10" in result.title
    assert np.array_equal(lab.strip_view.image_array(), result.strip)
    lab.data_b.setValue(9)
    assert not lab.run_interpolate()
    assert "has 4 images" in window.errors[-1][0]


def test_cancel_a_chain_after_the_first_frame(qtbot, lab):
    lab.modes.setCurrentIndex(1)
    choose(lab.sampler_combo, "ddpm")
    lab.num_spin.setValue(16)
    with qtbot.waitSignal(lab.chain_finished, timeout=60_000) as b:
        lab.run_chain()
        qtbot.waitUntil(lambda: len(lab.session.frames) >= 1, timeout=30_000)
        lab.cancel()
    assert b.args[0] is None and lab.session.chain is None and len(lab.session.frames) < 20
    qtbot.waitUntil(lambda: running_tasks() == [], timeout=10_000)
    assert lab.chain_button.isEnabled()


def test_default_steps_fit_a_small_model(qtbot, lab):
    """DDIM's default 50 steps, chosen before the model (T = 20) was known: the chain takes 20."""
    assert lab.sampler_combo.currentData() == "ddim" and lab.steps_spin.value() == 50
    lab.num_spin.setValue(1)
    chain = click(qtbot, lab.chain_finished, lab.chain_button)
    assert chain is not None and chain.sampling.steps == 20 and len(lab.session.frames) == 20
    assert lab.steps_spin.maximum() == 20 and lab.steps_spin.value() == 20


def test_image_interpolation_between_two_generated_images(qtbot, lab):
    lab.modes.setCurrentIndex(1)
    choose(lab.sampler_combo, "ddim")
    lab.steps_spin.setValue(4)
    lab.num_spin.setValue(2)
    chain = click(qtbot, lab.chain_finished, lab.chain_button)
    assert chain.images.shape == (2, 8, 8, 3)
    lab.modes.setCurrentIndex(2)
    choose(lab.interp_mode, "images")
    assert lab.generated_button.isEnabled()
    qtbot.mouseClick(lab.generated_button, Qt.MouseButton.LeftButton)
    assert "generated #1" in lab.images_label.text()
    lab.interp_t.setValue(3)  # the nearest DDIM timestep of the 4 is used
    lab.frames_spin.setValue(3)
    result = click(qtbot, lab.interpolate_finished, lab.interp_button)
    assert result is not None and len(result.frames) == 3 and "t = 4" in result.title


def test_the_weight_slider_computes_the_frame_at_any_weight(qtbot, lab, run_dir):
    from ddpm_studio.artifacts.loading import load_model
    from ddpm_studio.lab import interpolate
    from ddpm_studio.sampling.service import to_uint8

    result = seed_walk_3_to_8(qtbot, lab)
    assert lab.weight_slider.maximum() == 100 and lab.weight_slider.value() == 100  # it followed the last frame
    with qtbot.waitSignal(lab.weight_finished, timeout=60_000) as b:
        lab.weight_slider.setValue(40)  # between the strip's 1/3 and 2/3
        # at once: the nearest strip frame, while the exact one computes on a worker
        assert np.array_equal(lab.interp_view.view.image_array(), result.frames[1].image)
        assert lab.interp_view.caption.text().startswith("weight 0.40 · computing")
    frame = b.args[0]
    assert frame is not None and frame.weight == 0.4 and lab.interp_view.caption.text() == "weight 0.40"
    shown = lab.interp_view.view.image_array()
    assert np.array_equal(shown, frame.image)
    assert not np.array_equal(shown, result.frames[1].image) and not np.array_equal(shown, result.frames[2].image)
    loaded = load_model(run_dir, device="cpu")
    own = interpolate.seed_frame(loaded.model, loaded.diffusion, result.recipe.sampling, loaded.image_shape, 3, 8, 0.4)
    assert np.array_equal(shown, to_uint8(own)[0])  # the service's frame at that weight

    # coalesced: while 45 computes, 55 then 60 are asked for; only the latest (60) is computed next
    landed = []
    lab.weight_finished.connect(landed.append)
    for pos in (45, 55, 60):
        lab.weight_slider.setValue(pos)
    qtbot.waitUntil(lambda: len(landed) == 2 and lab.weight_task is None, timeout=60_000)
    assert [f.position for f in landed] == [45, 60] and lab.interp_view.caption.text() == "weight 0.60"
    assert sorted(lab.session.exact) == [40, 45, 60]
    lab.weight_slider.setValue(45)  # computed before: shown at once, nothing starts
    assert lab.weight_task is None and np.array_equal(lab.interp_view.view.image_array(), landed[0].image)
