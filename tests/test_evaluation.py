"""Quality readout, memorisation check, time-lapse and dataset doctor (issue 17), without the GUI."""

from __future__ import annotations

import numpy as np
import pytest
from evaluation_support import blobs, squares, trained_run, write_pngs
from PIL import Image
from training_support import one_thread  # noqa: F401 - fixture

from ddpm_studio.evaluation import doctor, features, memorization, metrics, timelapse


# -- estimators -----------------------------------------------------------------------------------
def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.5

    def k(a, b):  # KID's kernel (x.y / d + 1)^3, here d = 3 features
        return (a @ b / 3 + 1) ** 3

    xx = np.mean([k(x[i], x[j]) for i in range(7) for j in range(7) if i != j])
    yy = np.mean([k(y[i], y[j]) for i in range(5) for j in range(5) if i != j])
    xy = np.mean([k(a, b) for a in x for b in y])
    value, lo, hi = metrics.kid(x, y, bootstrap=50)
    assert value == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert lo < hi


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20000, 2)) * [1.0, 2.0]
    b = rng.normal(size=(20000, 2)) * [3.0, 1.0] + [1.0, 0.0]
    # diagonal covariances: |mu|^2 + sum (s_a - s_b)^2 = 1 + (1-3)^2 + (2-1)^2
    assert metrics.frechet_distance(a, b) == pytest.approx(6.0, rel=0.03)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_prdc_is_one_for_a_set_against_itself_and_zero_far_away():
    rng = np.random.default_rng(2)
    r = rng.normal(size=(200, 4))
    got = metrics.prdc(r, r)
    assert got["precision"] == 1.0 and got["recall"] == 1.0 and got["coverage"] == 1.0
    far = metrics.prdc(r, r + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_features_work_on_any_channel_count_and_size_and_are_fixed():
    for c, s in ((1, 8), (3, 16), (3, 200)):
        imgs = np.random.default_rng(c).integers(0, 256, (4, s, s, c), dtype=np.uint8)
        f = features.conv_features(imgs)
        assert f.shape == (4, 224) and np.isfinite(f).all()
        features._NETS.clear()  # a new net from the same seed gives the same features
        assert np.array_equal(f, features.conv_features(imgs))
    with pytest.raises(ValueError, match="uint8"):
        features.conv_features(np.zeros((2, 8, 8, 3), np.float32))


def test_kid_of_two_disjoint_halves_of_one_real_set_is_within_its_interval_of_zero():
    real = squares(512, seed=3)
    a, b = features.standardize(features.conv_features(real[:256]), features.conv_features(real[256:]))
    value, lo, hi = metrics.kid(a, b)
    assert lo <= 0.0 <= hi
    assert abs(value) < hi - lo
    # and a different distribution is outside it
    other = features.standardize(features.conv_features(real[:256]), features.conv_features(255 - real[256:]))
    v2, lo2, _ = metrics.kid(*other)
    assert lo2 > 0 and v2 > hi


def test_score_images_reports_the_floor_beside_the_model_and_refuses_bad_input():
    real = squares(300, seed=4)
    r = metrics.score_images(squares(64, seed=5), real)
    assert r.num_samples == 64 and r.num_floor == 64 and r.num_reference == 236
    assert r.floor_kid_lo <= 0 <= r.floor_kid_hi
    assert r.kid_lo <= 0.0 <= r.kid_hi  # real images scored as samples sit at the floor
    table = metrics.format_table(r)
    assert "comparable only at the same N" in table and "floor (real vs real)" in table
    with pytest.raises(ValueError, match="at least 10 training images"):
        metrics.score_images(squares(8), squares(5))
    with pytest.raises(ValueError, match="training images are"):
        metrics.score_images(squares(8, size=16), real)


@pytest.mark.usefixtures("one_thread")
def test_the_metric_ranks_a_trained_model_above_10_steps_and_above_noise():
    from ddpm_studio.artifacts.loading import load_model
    from ddpm_studio.artifacts.checkpoints import checkpoint_paths

    run = trained_run()
    real = metrics.run_real_images(run).images
    early = metrics.evaluate(load_model(checkpoint_paths(run, 10)[0], device="cpu"), real, 128)
    late = metrics.evaluate(load_model(checkpoint_paths(run, 200)[0], device="cpu"), real, 128)
    noise = metrics.score_images(np.random.default_rng(0).integers(0, 256, (128, 8, 8, 3), dtype=np.uint8), real)
    assert late.step == 200 and early.step == 10
    assert late.kid_hi < early.kid_lo  # intervals apart, not just the point estimates
    assert early.kid < noise.kid
    assert late.fd < early.fd < noise.fd
    assert late.precision > early.precision
    assert "dpmpp-2m" in late.sampling


@pytest.mark.usefixtures("one_thread")
def test_evaluate_checkpoints_goes_through_the_run_oldest_first():
    run = trained_run()
    real = metrics.run_real_images(run).images
    seen = []
    out = list(metrics.evaluate_checkpoints(run, real, 16, device="cpu", progress=lambda d, t, m: seen.append((d, t))))
    assert [r.step for r in out] == list(range(10, 201, 10))
    assert seen[-1][0] == seen[-1][1]
    assert out[-1].kid < out[0].kid


# -- memorisation ---------------------------------------------------------------------------------
def test_memorisation_finds_an_injected_exact_copy_and_flags_nothing_on_a_set_without():
    train = blobs(300, seed=6)
    fresh = blobs(40, seed=7)
    clean = memorization.nearest_training_images(fresh, train)
    assert clean.near_copies == []
    assert clean.summary().startswith("0 of 40 samples are near-copies")
    injected = fresh.copy()
    victim = int(np.argmax([m.pixel_distances[0] for m in clean.matches]))  # a sample far from every image
    injected[victim] = train[123]
    rep = memorization.nearest_training_images(injected, train)
    assert victim in [m.index for m in rep.near_copies]
    m = rep.matches[victim]
    assert m.pixel_neighbours[0] == 123 and m.pixel_distances[0] == 0.0 and m.pixel_ratio == 0.0
    assert m.feature_neighbour == 123
    assert f"{len(rep.near_copies)} of 40 samples" in rep.summary()


def test_memorisation_flags_nothing_on_noise_and_ignores_twins_inside_the_training_set():
    rng = np.random.default_rng(8)
    train = rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)
    train[100:] = train[:100]  # every training image twice: the typical distance is between distinct ones
    samples = rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    rep = memorization.nearest_training_images(samples, train)
    assert rep.near_copies == []
    assert rep.typical_pixel > 0.2
    assert all(0.5 < m.pixel_ratio < 2.0 for m in rep.matches)


# -- time-lapse -----------------------------------------------------------------------------------
def test_timelapse_writes_a_gif_and_a_contact_sheet_with_the_steps(tmp_path):
    run = trained_run()
    got = timelapse.write_timelapse(run, tmp_path / "t.gif", tmp_path / "s.png")
    assert got["steps"] == [50, 100, 150, 200]
    with Image.open(tmp_path / "t.gif") as g:
        assert g.n_frames == 4
    with Image.open(tmp_path / "s.png") as s:
        assert s.width > 2 * timelapse.MIN_FRAME_SIDE and s.height > timelapse.MIN_FRAME_SIDE
    # the caption strip under each frame holds dark text pixels
    frame = timelapse.frames(run)[0][1]
    strip = frame[-timelapse.CAPTION_PX:]
    assert (strip < 100).any() and (strip == 255).mean() > 0.5
    with pytest.raises(ValueError, match="no preview grids"):
        timelapse.write_timelapse(tmp_path, tmp_path / "x.gif")


# -- doctor ---------------------------------------------------------------------------------------
def test_doctor_finds_injected_duplicates_and_fixes_them(tmp_path):
    imgs = blobs(60, seed=9)
    files = write_pngs(imgs, tmp_path / "d")
    (tmp_path / "d" / "z_copy_of_3.png").write_bytes(files[3].read_bytes())
    # a near duplicate: the same picture saved as a JPEG
    Image.fromarray(imgs[7]).resize((32, 32), Image.Resampling.NEAREST).save(tmp_path / "d" / "z_resaved_7.jpg",
                                                                               quality=95)
    rep = doctor.diagnose(tmp_path / "d", image_size=16)
    exact = next(f for f in rep.findings if f.kind == "exact_duplicates")
    assert exact.groups == [[str(files[3]), str(tmp_path / "d" / "z_copy_of_3.png")]]
    assert exact.exclude == [str(tmp_path / "d" / "z_copy_of_3.png")]
    near = next(f for f in rep.findings if f.kind == "near_duplicates")
    assert any(str(files[7]) in g and str(tmp_path / "d" / "z_resaved_7.jpg") in g for g in near.groups)
    kept = rep.kept_files()
    assert len(kept) == 60 and str(files[3]) in kept
    assert "small_set" in rep.kinds()  # 60 images: says what to expect


def test_doctor_is_quiet_on_a_clean_set_and_reports_sizes_modes_mirror_large(tmp_path):
    rng = np.random.default_rng(10)
    clean = tmp_path / "clean"
    write_pngs(rng.integers(0, 256, (250, 16, 16, 3), dtype=np.uint8), clean)
    rep = doctor.diagnose(clean, image_size=16)
    assert rep.findings == [], [f.title for f in rep.findings]

    odd = tmp_path / "odd"
    odd.mkdir()
    for i in range(40):  # an "L" facing right, at varying places: its mirror faces left
        a = np.zeros((24, 24), np.uint8)
        x, y = 3 + i % 6, 3 + (i // 6) % 6
        a[y:y + 14, x:x + 3] = 255
        a[y + 11:y + 14, x:x + 10] = 255
        Image.fromarray(a).save(odd / f"L_{i:02d}.png")
    Image.new("RGB", (600, 300), (10, 200, 10)).save(odd / "wide_big.png")
    rep = doctor.diagnose(odd, image_size=16, flip=True)
    kinds = rep.kinds()
    assert {"mirror", "mixed_sizes", "mixed_modes", "large_images", "small_set"} <= kinds
    mirror = next(f for f in rep.findings if f.kind == "mirror")
    assert mirror.severity == "warning" and "Turn off random horizontal flip" in mirror.advice
    assert str(odd / "wide_big.png") in next(f for f in rep.findings if f.kind == "large_images").files
    with pytest.raises(ValueError, match="does not exist"):
        doctor.diagnose(tmp_path / "nope")


def test_bootstrap_resample_means_leave_out_pairs_of_one_image_with_itself():
    import torch

    rng = np.random.default_rng(12)
    x = rng.normal(size=(6, 3))
    k = torch.from_numpy(metrics.polynomial_kernel(x, x))
    idx = np.array([0, 0, 2, 3, 3, 3])  # one resample: image 0 twice, 3 three times
    counts = torch.from_numpy(np.bincount(idx, minlength=6).astype(np.float64))[None]
    pairs = [(a, b) for a in range(6) for b in range(6) if idx[a] != idx[b]]
    expect = np.mean([k[idx[a], idx[b]].item() for a, b in pairs])
    assert metrics._within_means(k, counts).item() == pytest.approx(expect, rel=1e-12)


def test_training_features_are_computed_once_per_set():
    imgs = squares(features.CACHE_MIN_IMAGES, seed=13)
    features._CACHE.clear()
    a = features.conv_features(imgs)
    assert len(features._CACHE) == 1
    b = features.conv_features(imgs.copy())  # same pixels, another array: the cached features
    assert b is a and not b.flags.writeable
    c = features.conv_features(255 - imgs)
    assert not np.array_equal(a, c) and len(features._CACHE) == 2


def test_the_evaluation_package_imports_no_qt():
    import subprocess
    import sys

    code = ("import sys; import ddpm_studio.evaluation.cli_commands, ddpm_studio.evaluation.doctor, "
            "ddpm_studio.evaluation.metrics, ddpm_studio.evaluation.memorization, ddpm_studio.evaluation.timelapse, "
            "ddpm_studio.evaluation.during_training; "
            "print(sorted(m for m in sys.modules if m.startswith(('PySide6', 'pyqtgraph'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
