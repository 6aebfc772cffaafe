"""The lab's Qt-free services: compare rows, branches, interpolation, the three views, boards."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from lab_support import tiny_model
from training_support import one_thread, tiny_config  # noqa: F401

from ddpm_studio.config import SamplingConfig
from ddpm_studio.lab import branch, chain, compare, interpolate, views
from ddpm_studio.artifacts.loaded import LoadedModel
from ddpm_studio.sampling.service import generate

pytestmark = pytest.mark.usefixtures("one_thread")


def loaded_tiny(prediction="epsilon"):
    model, diffusion, shape = tiny_model(prediction)
    return LoadedModel(model, diffusion, tiny_config(), 0, "test"), shape


def own_sample(loaded, sampling, seed, num=1):
    last = None
    for last in generate(loaded, sampling, num_images=num, seed=seed):
        pass
    return last.x_t


def S(sampler, steps=10, eta=0.0):
    return dataclasses.replace(SamplingConfig(), sampler=sampler, steps=steps, eta=eta)


# -- interpolation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp-2m"])
def test_seed_walk_end_points_are_the_seeds_own_samples(sampler):
    loaded, shape = loaded_tiny()
    s = S(sampler, 8)
    frames = list(interpolate.seed_walk(loaded.model, loaded.diffusion, s, shape, 11, 42, 5))
    assert [f.weight for f in frames] == [0, 0.25, 0.5, 0.75, 1.0]
    assert torch.equal(frames[0].image, own_sample(loaded, s, 11))
    assert torch.equal(frames[-1].image, own_sample(loaded, s, 42))
    assert not torch.equal(frames[2].image, frames[0].image) and not torch.equal(frames[2].image, frames[-1].image)


def test_slerp_keeps_the_norm_of_equal_norm_vectors_and_its_ends():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    b = b / b.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * a.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.equal(interpolate.slerp(a, b, 0), a) and torch.equal(interpolate.slerp(a, b, 1), b)
    mid = interpolate.slerp(a, b, 0.5)
    assert torch.allclose(mid.flatten(1).norm(dim=1), a.flatten(1).norm(dim=1), rtol=1e-5)
    # the angle is split in half: equal angles to both ends
    def cos(u, v):
        return (u.flatten(1) * v.flatten(1)).sum(1) / (u.flatten(1).norm(dim=1) * v.flatten(1).norm(dim=1))

    assert torch.allclose(cos(mid, a), cos(mid, b), atol=1e-5)


def test_seed_walk_refuses_a_stochastic_sampler():
    loaded, shape = loaded_tiny()
    with pytest.raises(ValueError, match="deterministic sampler"):
        next(interpolate.seed_walk(loaded.model, loaded.diffusion, S("ddim", 8, 0.5), shape, 1, 2, 3))
    with pytest.raises(ValueError, match="at least 2"):
        interpolate.weights(1)


def test_image_walk_noises_both_images_with_q_and_fixes_the_noise():
    loaded, shape = loaded_tiny()
    d = loaded.diffusion
    rng = np.random.default_rng(0)
    a = interpolate.image_to_tensor(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), shape)
    b = interpolate.image_to_tensor(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), shape)
    s = S("ddpm")
    walk = interpolate.noised_pair(d, s, a, b, t=12, seed=5)
    assert walk.t == 12 and walk.start_index == d.T - 1 - 12
    g = torch.Generator().manual_seed(5)
    ea, eb = torch.randn(a.shape, generator=g), torch.randn(b.shape, generator=g)
    ab = d.schedule.alphas_cumprod[12]
    assert torch.allclose(walk.x_t_a, float(np.sqrt(ab)) * a + float(np.sqrt(1 - ab)) * ea, atol=1e-6)
    assert torch.allclose(walk.x_t_b, float(np.sqrt(ab)) * b + float(np.sqrt(1 - ab)) * eb, atol=1e-6)
    frames = list(interpolate.image_walk(loaded.model, d, s, a, b, t=12, frames=3, seed=5))
    again = list(interpolate.image_walk(loaded.model, d, s, a, b, t=12, frames=3, seed=5))
    assert all(torch.equal(f.image, g_.image) for f, g_ in zip(frames, again))
    # λ = 0 decodes x_t of image a alone (with the walk's fixed reverse noise)
    first = interpolate._decode(loaded.model, d, s, walk.x_t_a, start_index=walk.start_index, seed=6, device=None,
                                should_stop=None)
    assert torch.equal(frames[0].image, first)
    with pytest.raises(ValueError, match="must be 8x8 px with 3 channel"):
        interpolate.image_to_tensor(np.zeros((16, 16, 3), np.uint8), shape)



def test_seed_frame_at_a_strips_weight_is_that_strips_frame_and_its_ends_are_the_seeds():
    loaded, shape = loaded_tiny()
    m, d, s = loaded.model, loaded.diffusion, S("ddim", 6)
    strip = list(interpolate.seed_walk(m, d, s, shape, 11, 42, 4))
    for f in strip:  # weights 0, 1/3, 2/3, 1: bit for bit
        assert torch.equal(interpolate.seed_frame(m, d, s, shape, 11, 42, f.weight), f.image)
    assert torch.equal(interpolate.seed_frame(m, d, s, shape, 11, 42, 0.0), own_sample(loaded, s, 11))
    assert torch.equal(interpolate.seed_frame(m, d, s, shape, 11, 42, 1.0), own_sample(loaded, s, 42))
    between = interpolate.seed_frame(m, d, s, shape, 11, 42, 0.37)
    assert not torch.equal(between, strip[1].image) and not torch.equal(between, strip[2].image)
    recipe = interpolate.WalkRecipe("seeds", s, shape, seeds=(11, 42))
    assert torch.equal(interpolate.frame_at(m, d, recipe, 0.37), between)
    with pytest.raises(ValueError, match="weight must be from 0 to 1; got 1.5"):
        interpolate.seed_frame(m, d, s, shape, 11, 42, 1.5)
    with pytest.raises(ValueError, match="deterministic sampler"):
        interpolate.seed_frame(m, d, S("ddpm"), shape, 11, 42, 0.5)


def test_image_frame_at_any_weight_mixes_the_noised_pair_and_decodes_with_the_walks_noise():
    loaded, shape = loaded_tiny()
    m, d, s = loaded.model, loaded.diffusion, S("ddpm")
    rng = np.random.default_rng(1)
    a, b = (interpolate.image_to_tensor(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), shape) for _ in range(2))
    walk = interpolate.noised_pair(d, s, a, b, t=9, seed=3)
    strip = list(interpolate.image_walk(m, d, s, a, b, t=9, frames=5, seed=3, walk=walk))
    for f in strip:  # 0, 0.25, 0.5, 0.75, 1: the strip's own frames
        assert torch.equal(interpolate.image_frame(m, d, s, walk, f.weight, seed=3), f.image)

    def decode(x):  # from t with the walk's fixed reverse noise (seed + 1)
        return interpolate._decode(m, d, s, x, start_index=walk.start_index, seed=4, device=None, should_stop=None)

    assert torch.equal(interpolate.image_frame(m, d, s, walk, 0.0, seed=3), decode(walk.x_t_a))
    assert torch.equal(interpolate.image_frame(m, d, s, walk, 1.0, seed=3), decode(walk.x_t_b))
    w = 0.6
    between = interpolate.image_frame(m, d, s, walk, w, seed=3)
    assert torch.equal(between, decode((1 - w) * walk.x_t_a + w * walk.x_t_b))  # §4.4's linear mix at t
    assert not torch.equal(between, strip[2].image) and not torch.equal(between, strip[3].image)
    recipe = interpolate.WalkRecipe("images", s, shape, walk=walk, seed=3)
    assert torch.equal(interpolate.frame_at(m, d, recipe, w), between)


# -- branch --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp-2m-sde", "dpmpp-3m"])
def test_branch_with_the_chains_own_noise_reproduces_it(sampler):
    loaded, shape = loaded_tiny()
    s = S(sampler, 8)
    steps = list(chain.run_chain(loaded.model, loaded.diffusion, s, num=2, image_shape=shape, seed=4))
    final = steps[-1].x_out
    assert torch.equal(final, own_sample(loaded, s, 4, num=2))  # the lab's chain is `sample`'s chain
    for k in (0, len(steps) // 2, len(steps) - 2, len(steps) - 1):  # ... the last step too
        again = branch.rerun_rest(loaded.model, loaded.diffusion, s, steps[k], count=1, same_noise=True)
        assert torch.equal(again, final), k
    if chain.is_stochastic(s):
        new = branch.rerun_rest(loaded.model, loaded.diffusion, s, steps[2], count=3, seed=9)
        assert new.shape == (6, *shape)
        assert not torch.equal(new[:2], new[2:4]) and not torch.equal(new[:2], final)
    else:
        with pytest.raises(ValueError, match="adds no noise after x_T"):
            branch.rerun_rest(loaded.model, loaded.diffusion, s, steps[2], count=3)


def test_renoise_uses_q_of_x_t_given_x_0():
    loaded, shape = loaded_tiny()
    d = loaded.diffusion
    s = S("ddim", 5)
    steps = list(chain.run_chain(loaded.model, d, s, num=1, image_shape=shape, seed=0))
    ts = chain.sampler_timesteps(d, s)
    assert ts == [19, 15, 11, 7, 3]
    r = branch.renoise(loaded.model, d, s, steps[1].pred_x0, t=12, count=4, seed=3)
    assert r.t == 11 and r.start_index == 2  # moved to the nearest visited timestep
    eps = torch.randn((4, *shape), generator=torch.Generator().manual_seed(3))
    ab = d.schedule.alphas_cumprod[11]
    x0 = steps[1].pred_x0.repeat(4, 1, 1, 1)
    assert torch.allclose(r.x_t, float(np.sqrt(ab)) * x0 + float(np.sqrt(1 - ab)) * eps, atol=1e-6)
    # the four re-noisings differ, and each denoises by the remaining steps 11, 7, 3
    assert r.x0.shape == (4, *shape) and not torch.equal(r.x0[0], r.x0[1])
    direct = d.sample(loaded.model, r.x_t.shape, s, noise=r.x_t, start_index=2)
    assert torch.equal(direct, r.x0)
    with pytest.raises(ValueError, match="from 0 to T-1=19"):
        branch.renoise(loaded.model, d, s, steps[1].pred_x0, t=20, count=1)


# -- three views ----------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_predicted_noise_is_the_networks_own_output(prediction):
    loaded, shape = loaded_tiny(prediction)
    d = loaded.diffusion
    s = S("ddpm")
    steps = list(chain.run_chain(loaded.model, d, s, num=1, image_shape=shape, seed=2, keep=lambda i, n: i % 4 == 1))
    assert [st.index for st in steps] == [1, 5, 9, 13, 17] and all(st.t == 19 - st.index for st in steps)
    for st in steps:
        unclipped = (st.pred_x0.abs() < 1).all()
        if not unclipped:
            continue
        out = loaded.model(st.x_in, torch.full((1,), st.t))
        assert torch.allclose(chain.predicted_noise(d, st.x_in, st.pred_x0, st.t), out, atol=1e-4)
    assert steps[0].x_in.shape == (1, *shape)
    again = list(chain.run_chain(loaded.model, d, s, num=1, image_shape=shape, seed=2))
    assert torch.equal(steps[1].x_in, again[4].x_out)
    xt, x0, eps = chain.step_views(d, steps[0])
    assert xt.shape == x0.shape == eps.shape == (1, 8, 8, 3) and xt.dtype == np.uint8


# -- compare -------------------------------------------------------------------------------------------
def test_compare_rows_are_what_sample_makes_with_each_setting():
    loaded, shape = loaded_tiny()
    rows = compare.parse_specs("ddim:5, dpmpp-2m:4,ddpm, ddim:5:1", SamplingConfig(), 20)
    assert [(r.sampler, r.steps, r.eta) for r in rows] == [("ddim", 5, 0), ("dpmpp-2m", 4, 0), ("ddpm", 20, 0),
                                                         ("ddim", 5, 1.0)]
    done = list(compare.run_compare(loaded.model, loaded.diffusion, rows, num=3, image_shape=shape, seed=7))
    assert [r.label for r in done] == ["DDIM · 5 steps · η 0", "DPM-Solver++ 2M · 4 steps", "DDPM · 20 steps",
                                       "DDIM · 5 steps · η 1"]
    for r in done:
        assert torch.equal(r.images, own_sample(loaded, r.sampling, 7, num=3)), r.label
        assert r.seconds_per_image > 0
    assert [r.steps for r in done] == [5, 4, 20, 5]


def test_a_tuned_compare_row_walks_the_remembered_timesteps_and_says_so():
    loaded, shape = loaded_tiny()
    from ddpm_studio.sampling.tuning_store import MATCH

    entry = {"match": {f: getattr(SamplingConfig(sampler="unipc", steps=3), f) for f in MATCH},
             "timesteps": [19, 8, 0]}
    asked = []
    rows = compare.parse_specs("unipc:3:tuned,unipc:3", SamplingConfig(), 20,
                               tunings=lambda: asked.append(1) or [entry])
    assert rows[0].timesteps == (19, 8, 0) and rows[1].timesteps is None and asked == [1]
    done = list(compare.run_compare(loaded.model, loaded.diffusion, rows, num=2, image_shape=shape, seed=3))
    assert [r.label for r in done] == ["UniPC · 3 steps · tuned", "UniPC · 3 steps"]
    assert torch.equal(done[0].images, own_sample(loaded, rows[0], 3, num=2))
    assert not torch.equal(done[0].images, done[1].images)
    with pytest.raises(ValueError, match="no Tune remembered for this model with unipc at 4 steps"):
        compare.parse_specs("unipc:4:tuned", SamplingConfig(), 20, tunings=lambda: [entry])
    for bad in ("ddpm:20:tuned", "unipc::tuned"):
        with pytest.raises(ValueError, match="tuned timesteps are for"):
            compare.parse_specs(bad, SamplingConfig(), 20)


@pytest.mark.parametrize("text,message", [("", "at least one sampler"), ("euler", "not sampler"),
                                          ("ddim:x", "whole number"), ("ddpm:5", "always takes all T"),
                                          ("dpmpp-2m:5:0.3", "only DDIM takes"), ("ddim:50", "only T=20"),
                                          ("ddim:5:2", "eta")])
def test_bad_compare_specs_are_refused_in_one_line(text, message):
    with pytest.raises(ValueError, match=message) as e:
        compare.parse_specs(text, SamplingConfig(), 20)
    assert "\n" not in str(e.value)


# -- boards and animations ---------------------------------------------------------------------------
def test_board_contact_sheet_and_animations(tmp_path):
    from PIL import Image

    tiles = [np.full((8, 8, 3), v, np.uint8) for v in (0, 120, 255)]
    b = views.board([tiles, tiles[:2]], row_labels=[["DDIM · 5 steps", "0.1 s / image"], ["DDPM"]],
                    captions=[["a", "b", "c"], []], title="compare")
    assert b.dtype == np.uint8 and b.ndim == 3 and b.shape[2] == 3
    assert b.shape[1] > 3 * 64 and b.shape[0] > 2 * 64  # tiles enlarged to >= 64 px
    assert (b == 255).all(axis=2).sum() >= 64 * 64  # the white tile is there, whole
    frames = [(t, [tiles[i % 3], tiles[(i + 1) % 3], tiles[(i + 2) % 3]]) for i, t in enumerate(range(19, -1, -1))]
    sheet = views.contact_sheet(frames, 5, view_names=["x_t", "x̂0", "ε̂"])
    assert sheet.shape[1] > 5 * 64  # columns: steps 0, 5, 10, 15 and the last
    anim = views.gif_frames([(t, f[0]) for t, f in frames], overlay_t=True, every=2)
    assert len(anim) == 11 and anim[0].shape[:2] == (256, 256)
    assert anim[0][:200].max() == 0 and anim[0][-12:].max() == 255  # black tile, white "t = 19" at the bottom
    assert views.save_animation(anim, tmp_path / "c.png", fps=10) == 11
    with Image.open(tmp_path / "c.png") as im:
        assert im.format == "PNG" and im.n_frames == 11 and im.is_animated
    assert views.save_animation(anim, tmp_path / "c.gif") >= 3
    with pytest.raises(ValueError, match=".gif or an .apng"):
        views.save_animation(anim, tmp_path / "c.webp")


def test_labels_fall_back_to_plain_spellings_without_a_unicode_font():
    assert views.plain("x̂0 · η 0.5 · ε̂", (None, False)) == "x0-hat · eta 0.5 · eps-hat"
    assert views.plain("x̂0 · η", (None, True)) == "x̂0 · η"
